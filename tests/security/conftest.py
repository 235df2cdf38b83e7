"""Fixtures for the hostile-client tests of issue 18: a seeded ledger and Debian's nginx binary."""

from __future__ import annotations

from pathlib import Path

import pytest

from dpflows.aggregates import AggregateStore
from dpflows.ledger.sqlite import SqliteLedger
from dpflows.service import Service
from tests.api.conftest import Keys, seed_clients
from tests.pg_server import in_ci
from tests.servers import find_nginx


@pytest.fixture(scope="session")
def nginx_binary() -> str:
    binary = find_nginx()
    if binary is None:
        reason = "nginx not found on PATH or at /usr/sbin/nginx; install it (scripts/bootstrap.sh --test-deps does, as root)"
        if in_ci():
            pytest.fail(f"CI must run the nginx deployment tests: {reason}", pytrace=False)
        pytest.skip(reason)
    return binary


def seeded_ledger(data_root: Path, ledger_path: Path) -> Keys:
    """A SQLite ledger with an admin, a planner and an analyst (tests/api/conftest.py), closed again."""
    setup = Service(AggregateStore(data_root), SqliteLedger(ledger_path))
    keys = seed_clients(setup)
    setup.ledger.close()
    return keys
