"""What only the PostgreSQL ledger has to show: a migration safe to run from many hosts at once,
append-only tables enforced by the server, client-safe errors when the server is gone, and
races between identical queries that charge once and all return the one stored answer."""

from __future__ import annotations

import itertools
import threading
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from dpflows.budget import Epsilon
from dpflows.cli import main
from dpflows.errors import Unavailable
from dpflows.ledger import AuditEntry, Ledger, ReleaseReceipt, ReleaseRequest
from dpflows.ledger.base import GENESIS_HASH
from tests.pg_server import PgServer, in_ci

pytestmark = pytest.mark.postgres

try:
    import psycopg
except ImportError:
    if in_ci():
        raise  # CI must run these: a missing driver is an error there, never a skip
    pytest.skip("psycopg is not installed; pip install -e '.[postgres]'", allow_module_level=True)
from dpflows.ledger.postgres import SCHEMA_VERSION, PostgresLedger, _to_pyformat  # noqa: E402

DS = "city"
PASSWORD = "s3cret-Pa55word"


def eps(text: str) -> Epsilon:
    return Epsilon.parse(text)


def release(client_id: int, epsilon: str, windows: tuple[int, ...], key: str) -> ReleaseRequest:
    answer_id = uuid.uuid4().hex
    return ReleaseRequest(
        client_id=client_id, dataset=DS, query_key=key, windows=windows, loss=eps(epsilon),
        answer_id=answer_id, payload={"values": [answer_id]},
        audit=AuditEntry(action="query.flows", outcome="released", client_id=client_id, dataset=DS,
                         loss=eps(epsilon), answer_id=answer_id),
    )


def run_in_threads(n: int, work: Callable[[int], Any]) -> list[Any]:
    """Run work(i) in n threads released together by a barrier; re-raise the first error."""
    barrier = threading.Barrier(n)
    results: list[Any] = [None] * n
    errors: list[BaseException] = []

    def target(i: int) -> None:
        try:
            barrier.wait(timeout=30)
            results[i] = work(i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=target, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    if errors:
        raise errors[0]
    return results


def count(url: str, sql: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(sql).fetchone()
    return int(row[0])


# -- migration ------------------------------------------------------------------------------


def test_migration_is_idempotent(postgres_url: str) -> None:
    first = PostgresLedger(postgres_url)
    assert first.migration_steps_applied == SCHEMA_VERSION
    first.create_client("kept", "planner")
    assert first.migrate() == 0
    second = PostgresLedger(postgres_url)
    assert second.migration_steps_applied == 0
    assert [c.name for c in second.list_clients()] == ["kept"]  # nothing was recreated
    assert count(postgres_url, "SELECT COUNT(*) FROM dpflows_schema") == SCHEMA_VERSION
    first.close()
    second.close()


def test_hosts_starting_at_once_migrate_exactly_once(postgres_url: str) -> None:
    ledgers: list[PostgresLedger] = run_in_threads(8, lambda _i: PostgresLedger(postgres_url))
    try:
        assert sorted(led.migration_steps_applied for led in ledgers) == [0] * 7 + [SCHEMA_VERSION]
        assert count(postgres_url, "SELECT COUNT(*) FROM dpflows_schema") == SCHEMA_VERSION
        client = ledgers[3].create_client("after-race", "planner")
        assert ledgers[5].get_client(client.id) == client
    finally:
        for led in ledgers:
            led.close()


def test_cli_migrate_prints_no_url(postgres_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["migrate", "--ledger-url", postgres_url]) == 0
    assert main(["migrate", "--ledger-url", postgres_url]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [
        f"dpflows: postgresql ledger schema is up to date ({SCHEMA_VERSION} migration step(s) applied now)",
        "dpflows: postgresql ledger schema is up to date (0 migration step(s) applied now)",
    ]


def test_open_ledger_routes_postgres_urls(postgres_url: str) -> None:
    from dpflows.ledger import open_ledger

    for url in (postgres_url, postgres_url.replace("postgresql://", "postgres://", 1)):
        ledger = open_ledger(url)
        try:
            assert isinstance(ledger, PostgresLedger)
            assert ledger.list_clients() == []
        finally:
            ledger.close()


@pytest.mark.parametrize("table", ["audit", "charges"])
@pytest.mark.parametrize("statement", ["UPDATE {t} SET at = 'x'", "DELETE FROM {t}", "TRUNCATE {t}"])
def test_audit_and_charges_are_append_only(postgres_ledger_factory, postgres_url: str, table: str,
                                           statement: str) -> None:
    ledger = postgres_ledger_factory()
    cid = ledger.create_client("a", "planner").id
    ledger.set_cap(DS, eps("1"), client_id=cid, window=None)
    ledger.set_cap(DS, eps("1"), client_id=None, window=None)
    ledger.commit_release(release(cid, "0.1", (0,), "k"))
    with psycopg.connect(postgres_url) as conn, pytest.raises(psycopg.errors.RestrictViolation, match="append-only"):
        conn.execute(statement.format(t=table))
    assert count(postgres_url, f"SELECT COUNT(*) FROM {table}") == 1  # noqa: S608 - table is a test parameter


def test_placeholders_are_translated_and_percent_signs_kept() -> None:
    assert _to_pyformat("SELECT 1 WHERE a LIKE '5%' AND b = ? AND c IN (?, ?)") == (
        "SELECT 1 WHERE a LIKE '5%%' AND b = %s AND c IN (%s, %s)"
    )


# -- unavailable servers --------------------------------------------------------------------


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # nothing listens once the socket is closed


def test_unreachable_server_is_unavailable_without_the_password() -> None:
    url = f"postgresql://dpflows:{PASSWORD}@127.0.0.1:{_closed_port()}/ledger"
    with pytest.raises(Unavailable) as info:
        PostgresLedger(url, connect_timeout_s=2)
    for text in (info.value.message, str(info.value), repr(info.value.to_dict())):
        assert PASSWORD not in text
        assert "127.0.0.1" not in text  # the client learns nothing about the deployment
    assert "retry later" in info.value.message


def test_cli_migrate_against_a_dead_server_fails_without_the_password(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"postgresql://dpflows:{PASSWORD}@127.0.0.1:{_closed_port()}/ledger"
    assert main(["migrate", "--ledger-url", url]) == 2
    captured = capsys.readouterr()
    assert "unavailable" in captured.err or "cannot be reached" in captured.err
    assert PASSWORD not in captured.err + captured.out


def test_server_stopping_under_an_open_ledger_is_unavailable_and_releases_nothing(pg_server: PgServer) -> None:
    server = PgServer(pg_server.bindir).start()  # a server of its own, to stop mid-test
    try:
        ledger = PostgresLedger(server.create_database(), pool_timeout_s=2, connect_timeout_s=2)
        cid = ledger.create_client("a", "planner").id
        ledger.set_cap(DS, eps("1"), client_id=cid, window=None)
        ledger.set_cap(DS, eps("1"), client_id=None, window=None)
        server.stop()
        with pytest.raises(Unavailable) as info:
            ledger.commit_release(release(cid, "0.1", (0,), "k"))
        assert "nothing was charged or released" in info.value.message
        assert PASSWORD not in info.value.message
        with pytest.raises(Unavailable):
            ledger.window_budgets(DS, cid, [0])
        ledger.close()
    finally:
        server.stop()


def test_a_spend_row_held_too_long_fails_cleanly_after_lock_timeout(postgres_ledger_factory, postgres_url: str) -> None:
    ledger = postgres_ledger_factory(lock_timeout_s=0.3)
    [cid] = _fund(ledger, 1)
    ledger.commit_release(release(cid, "0.1", (0,), "first"))  # the spend rows exist now
    with psycopg.connect(postgres_url) as stalled:  # another host, stuck inside its transaction
        stalled.execute("SELECT nanos FROM spend WHERE dataset = %s AND win = 0 AND client_id = 0 FOR UPDATE", (DS,))
        with pytest.raises(Unavailable, match="nothing was charged or released"):
            ledger.commit_release(release(cid, "0.1", (0,), "second"))
        stalled.rollback()
    assert ledger.find_answer(DS, "second") is None
    assert ledger.total_charged(DS, 0) == eps("0.1")
    assert not ledger.commit_release(release(cid, "0.1", (0,), "second")).reused  # the retry goes through


# -- races ----------------------------------------------------------------------------------


def _fund(ledger: Ledger, n_clients: int) -> list[int]:
    ids = []
    for i in range(n_clients):
        cid = ledger.create_client(f"c{i}", "planner").id
        ledger.set_cap(DS, eps("1"), client_id=cid, window=None)
        ids.append(cid)
    ledger.set_cap(DS, eps("10"), client_id=None, window=None)
    return ids


@pytest.mark.parametrize("same_client", [True, False], ids=["one-client", "eight-clients"])
def test_identical_query_racing_from_8_threads_is_charged_once(postgres_ledger_factory, postgres_url: str,
                                                                same_client: bool) -> None:
    setup = postgres_ledger_factory()
    clients = _fund(setup, 1 if same_client else 8)
    handles = [postgres_ledger_factory() for _ in range(8)]

    def ask(i: int) -> ReleaseReceipt:
        return handles[i].commit_release(release(clients[i % len(clients)], "0.3", (0, 1, 2), "same-query"))

    receipts: list[ReleaseReceipt] = run_in_threads(8, ask)
    assert len({r.answer.answer_id for r in receipts}) == 1
    assert len({str(r.answer.payload) for r in receipts}) == 1
    assert sorted(r.reused for r in receipts) == [False] + [True] * 7
    assert sum(r.charged.nanos for r in receipts) == eps("0.3").nanos
    for w in (0, 1, 2):
        assert setup.total_charged(DS, w) == eps("0.3")
    assert count(postgres_url, "SELECT COUNT(*) FROM charges") == 3
    assert count(postgres_url, "SELECT COUNT(*) FROM answers") == 1
    outcomes = sorted(e.outcome for e in setup.read_audit(limit=100))
    assert outcomes == ["released"] + ["reused"] * 7


def test_same_query_key_on_disjoint_windows_still_stores_one_answer(postgres_ledger_factory, postgres_url: str) -> None:
    """No spend row in common, so only the unique key separates them: the loser retries and reuses."""
    setup = postgres_ledger_factory()
    [cid] = _fund(setup, 1)
    handles = [postgres_ledger_factory() for _ in range(8)]
    receipts: list[ReleaseReceipt] = run_in_threads(
        8, lambda i: handles[i].commit_release(release(cid, "0.2", (i,), "buggy-key"))
    )
    assert len({r.answer.answer_id for r in receipts}) == 1
    assert sorted(r.reused for r in receipts) == [False] + [True] * 7
    assert count(postgres_url, "SELECT COUNT(*) FROM answers") == 1
    assert count(postgres_url, "SELECT COUNT(*) FROM charges") == 1


def test_audit_chain_has_one_tail_under_concurrent_appends(postgres_ledger_factory) -> None:
    setup = postgres_ledger_factory()
    clients = _fund(setup, 8)
    handles = [postgres_ledger_factory() for _ in range(8)]

    def work(i: int) -> None:
        for j in range(10):
            if j % 2:
                handles[i].append_audit(AuditEntry(action="admin.noop", outcome="ok", client_id=clients[i]))
            else:
                handles[i].commit_release(release(clients[i], "0.01", (j,), f"q-{i}-{j}"))

    run_in_threads(8, work)
    rows = list(setup.iter_audit())  # type: ignore[attr-defined]
    assert len(rows) == 80
    assert rows[0].prev_hash == GENESIS_HASH
    for prev, row in itertools.pairwise(rows):
        assert row.prev_hash == prev.row_hash
        assert row.id > prev.id
    for row in rows:
        assert row.row_hash == row.chain_hash(row.prev_hash, row.at)
