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
from tests.pg_server import PgServer, PgServerError, find_bindir, in_ci


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


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """One PostgreSQL server for the session (see tests/pg_server.py); stopped at the end, always."""
    bindir = find_bindir()
    if bindir is None:
        reason = ("PostgreSQL server binaries (initdb, postgres) not found in $DPFLOWS_PG_BINDIR, "
                  "/usr/lib/postgresql/*/bin or on PATH; install them (scripts/bootstrap.sh does, as root)")
        if in_ci():
            pytest.fail(f"CI must run the PostgreSQL tests: {reason}", pytrace=False)
        pytest.skip(reason)
    try:
        import psycopg  # noqa: F401
        import psycopg_pool  # noqa: F401
    except ImportError as exc:
        reason = f"psycopg is not installed ({exc}); pip install -e '.[postgres]'"
        if in_ci():
            pytest.fail(f"CI must run the PostgreSQL tests: {reason}", pytrace=False)
        pytest.skip(reason)
    server = PgServer(bindir)
    try:
        server.start()
    except PgServerError as exc:
        pytest.fail(f"the PostgreSQL test server did not start: {exc}", pytrace=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def postgres_url(pg_server: PgServer) -> Iterator[str]:
    """A fresh, empty database for one test, dropped afterwards."""
    url = pg_server.create_database()
    yield url
    pg_server.drop_database(url)


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
