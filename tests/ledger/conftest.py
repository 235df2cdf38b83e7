"""The ledger contract: every implementation runs the same suite through the `any_ledger` fixture.

Add an implementation by adding a param here. PostgreSQL runs on a throwaway server started once per
session from the installed binaries (tests/pg_server.py), with a fresh database per test.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from dpflows.ledger import Ledger
from dpflows.ledger.memory import MemoryLedger
from dpflows.ledger.sqlite import SqliteLedger


def _make_ledger(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> Ledger:
    if kind == "memory":
        return MemoryLedger()
    if kind == "sqlite":
        return SqliteLedger(tmp_path / "ledger.db")
    if kind == "postgres":
        factory = request.getfixturevalue("postgres_ledger_factory")
        return factory()
    raise AssertionError(kind)


LEDGER_KINDS = ["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.fixture(params=LEDGER_KINDS)
def any_ledger(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Ledger]:
    ledger = _make_ledger(request.param, tmp_path, request)
    yield ledger
    ledger.close()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def durable_ledger_factory(request: pytest.FixtureRequest, tmp_path: Path):
    """Opens new handles on one durable ledger, as separate workers or hosts would."""
    if request.param == "sqlite":
        return lambda: SqliteLedger(tmp_path / "shared.db")
    return request.getfixturevalue("postgres_ledger_factory")


@pytest.fixture
def postgres_ledger_factory(postgres_url: str) -> Iterator[Callable[..., Ledger]]:
    """Opens new PostgresLedger handles on one fresh database; all are closed after the test."""
    from dpflows.ledger.postgres import PostgresLedger

    opened: list[PostgresLedger] = []

    def factory(**kwargs: Any) -> Ledger:
        ledger = PostgresLedger(postgres_url, **kwargs)
        opened.append(ledger)
        return ledger

    yield factory
    for ledger in opened:
        ledger.close()
