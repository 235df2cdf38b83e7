"""The ledger in approximate DP (issue 15): every cap holds an ε and a δ, composed by exact integer
addition (δ in atto-units, 1e-18), checked in the release's one transaction, on every ledger: a client's
cap on its dataset, and its population's global cap, group allocations, pool and horizon cap; and a
ledger of the current schema (populations, before δ) migrates with its caps, spending and audit chain intact."""

from __future__ import annotations

import dataclasses
import sqlite3
import threading
import uuid
from pathlib import Path

import pytest

from dpflows.budget import DELTA_UNITS, ApproxDP, Epsilon, PrivacyLoss
from dpflows.errors import BudgetExceeded, InvalidInput
from dpflows.ledger import AuditEntry, DatasetGrid, Ledger, ReleaseRequest
from dpflows.ledger.sqlite import SqliteLedger

DS = "cells"
#: approximate DP in a population of its own, whose budget is then in (ε, δ)
GRID = DatasetGrid(DS, "2024-03-04", 7, "epsilon_delta", population="cells")
DATA = Path(__file__).parent / "data"


def loss(epsilon: str, delta: str = "0") -> ApproxDP:
    return ApproxDP.parse_pair(epsilon, delta)


def release(client_id: int, charge: PrivacyLoss, windows: tuple[int, ...] = (0,), key: str | None = None,
            grid: DatasetGrid = GRID) -> ReleaseRequest:
    answer_id = uuid.uuid4().hex
    return ReleaseRequest(
        client_id=client_id, dataset=grid.dataset, query_key=key or uuid.uuid4().hex, windows=windows, loss=charge,
        answer_id=answer_id, payload={"values": [1]}, grid=grid,
        audit=AuditEntry(action="query.flows", outcome="released", client_id=client_id, dataset=grid.dataset, loss=charge,
                         answer_id=answer_id),
    )


@pytest.fixture
def funded(any_ledger: Ledger) -> tuple[Ledger, int]:
    client = any_ledger.create_client("planner", "planner")
    any_ledger.set_cap(DS, loss("10", "1e-6"), client_id=client.id, window=None, grid=GRID)
    any_ledger.set_cap(DS, loss("100", "1e-5"), client_id=None, window=None, grid=GRID)
    return any_ledger, client.id


def test_delta_cap_is_exactly_reachable_and_one_atto_more_is_refused(funded: tuple[Ledger, int]) -> None:
    ledger, cid = funded
    for _ in range(10):
        ledger.commit_release(release(cid, loss("0.1", "1e-7")))
    assert ledger.total_charged(DS, 0, cid) == PrivacyLoss(Epsilon.parse("1").nanos, 10**12)
    [budget] = ledger.window_budgets(DS, cid, [0])
    assert budget.remaining == PrivacyLoss(Epsilon.parse("9").nanos, 0)
    with pytest.raises(BudgetExceeded, match=r"delta=1e-18 exceeds your remaining delta budget of 0\.0") as info:
        ledger.commit_release(release(cid, ApproxDP(1, 1)))
    assert info.value.field == "delta" and info.value.details == {"window": 0, "delta_remaining": 0.0}
    assert ledger.total_charged(DS, 0, cid).delta_attos == 10**12  # nothing charged
    ledger.commit_release(release(cid, loss("0.1")))  # a dense answer (δ = 0) still fits


def test_a_delta_of_1e_16_is_charged_in_atto_units_not_rounded_to_a_nano(funded: tuple[Ledger, int]) -> None:
    ledger, cid = funded
    for _ in range(3):
        ledger.commit_release(release(cid, loss("0.001", "1e-16")))
    assert ledger.total_charged(DS, 0).delta_attos == 300
    assert ledger.window_budgets(DS, cid, [0])[0].client_spent == PrivacyLoss(3_000_000, 300)


def test_the_global_delta_cap_binds_across_clients_without_a_figure(any_ledger: Ledger) -> None:
    a = any_ledger.create_client("a", "planner")
    b = any_ledger.create_client("b", "planner")
    for c in (a, b):
        any_ledger.set_cap(DS, loss("10", "1e-6"), client_id=c.id, window=None, grid=GRID)
    any_ledger.set_cap(DS, loss("10", "1.5e-6"), client_id=None, window=None, grid=GRID)
    any_ledger.commit_release(release(a.id, loss("0.1", "1e-6")))
    with pytest.raises(BudgetExceeded, match="global delta budget") as info:
        any_ledger.commit_release(release(b.id, loss("0.1", "6e-7")))
    assert info.value.details == {"window": 0} and "5e-07" not in info.value.message
    any_ledger.commit_release(release(b.id, loss("0.1", "5e-7")))
    assert any_ledger.total_charged(DS, 0) == PrivacyLoss(200_000_000, 1_500_000_000_000)


def test_group_allocations_hold_a_delta_too(any_ledger: Ledger) -> None:
    a = any_ledger.create_client("a", "planner")
    c = any_ledger.create_client("c", "planner")
    any_ledger.set_group(a.id, "A")
    for client in (a, c):
        any_ledger.set_cap(DS, loss("10", "1e-6"), client_id=client.id, window=None, grid=GRID)
    any_ledger.set_cap(DS, loss("10", "1e-6"), client_id=None, window=None, grid=GRID)
    any_ledger.set_cap(DS, loss("1", "4e-7"), client_id=None, window=None, group="A", grid=GRID)
    with pytest.raises(InvalidInput, match="allocations"):  # 4e-7 + 7e-7 of δ above the global 1e-6
        any_ledger.set_cap(DS, loss("1", "7e-7"), client_id=None, window=None, group="B", grid=GRID)
    [budget] = any_ledger.window_budgets(DS, a.id, [0])
    assert budget.group_cap == PrivacyLoss(10**9, 4 * 10**11) and budget.remaining.delta_attos == 4 * 10**11
    with pytest.raises(BudgetExceeded, match="delta allocation of 4e-07 of your group 'A'"):
        any_ledger.commit_release(release(a.id, loss("0.1", "5e-7")))
    # the client alone spends from the pool: 1e-6 less A's allocation of 4e-7 (the global cap would allow 7e-7)
    with pytest.raises(BudgetExceeded, match="without a group allocation"):
        any_ledger.commit_release(release(c.id, loss("0.1", "7e-7")))
    any_ledger.commit_release(release(c.id, loss("0.1", "6e-7")))
    any_ledger.commit_release(release(a.id, loss("0.1", "4e-7")))
    assert any_ledger.total_charged(DS, 0).delta_attos == 10**12


def test_caps_are_set_in_the_datasets_and_the_populations_measure(any_ledger: Ledger) -> None:
    client = any_ledger.create_client("p", "planner")
    any_ledger.set_cap(DS, loss("1", "1e-6"), client_id=client.id, window=None, grid=GRID)
    with pytest.raises(InvalidInput, match="epsilon_delta"):  # a pure ε cap is never read as an (ε, δ) one
        any_ledger.set_cap(DS, Epsilon.parse("1"), client_id=client.id, window=None)
    with pytest.raises(InvalidInput, match="epsilon_delta"):  # nor is the population's global cap
        any_ledger.set_cap(DS, Epsilon.parse("1"), client_id=None, window=None)
    pure = DatasetGrid("pure", "2024-03-04", 7, "epsilon")  # the default population, in ε
    any_ledger.set_cap("pure", Epsilon.parse("1"), client_id=client.id, window=None, grid=pure)
    with pytest.raises(InvalidInput, match="in epsilon"):
        any_ledger.set_cap("pure", loss("1", "1e-6"), client_id=client.id, window=None)


def test_a_pure_dataset_charges_its_population_in_epsilon_and_delta(any_ledger: Ledger) -> None:
    """A pure-DP dataset of the same people shares the (ε, δ) population's budget, its ε charged as (ε, 0)."""
    client = any_ledger.create_client("p", "planner")
    pure = DatasetGrid("pure", "2024-03-04", 7, "epsilon", population="cells")
    any_ledger.set_cap(DS, loss("5", "1e-6"), client_id=client.id, window=None, grid=GRID)
    any_ledger.set_cap(DS, loss("1", "1e-6"), client_id=None, window=None)
    any_ledger.set_cap("pure", Epsilon.parse("5"), client_id=client.id, window=None, grid=pure)
    any_ledger.commit_release(release(client.id, loss("0.6", "1e-7")))
    pure_charge = dataclasses.replace(release(client.id, Epsilon.parse("0.4"), grid=pure),
                                      population_loss=ApproxDP(400_000_000, 0))
    any_ledger.commit_release(pure_charge)
    assert any_ledger.population_spent("cells", 0) == PrivacyLoss(10**9, 10**11)
    with pytest.raises(BudgetExceeded, match="global budget"):  # the population's ε is spent, by both
        any_ledger.commit_release(dataclasses.replace(release(client.id, Epsilon.parse("0.1"), grid=pure),
                                                      population_loss=ApproxDP(100_000_000, 0)))


def test_the_horizon_cap_bounds_delta_over_windows(any_ledger: Ledger) -> None:
    client = any_ledger.create_client("p", "planner")
    any_ledger.set_cap(DS, loss("10", "1e-6"), client_id=client.id, window=None, grid=GRID)
    any_ledger.set_cap(DS, loss("10", "1e-6"), client_id=None, window=None)
    any_ledger.set_horizon_cap("cells", 3, loss("10", "2.5e-7"))
    for w in (0, 1):
        any_ledger.commit_release(release(client.id, loss("0.1", "1e-7"), windows=(w,)))
    with pytest.raises(BudgetExceeded, match="horizon cap"):  # 3e-7 of δ over windows 0-2
        any_ledger.commit_release(release(client.id, loss("0.1", "1e-7"), windows=(2,)))
    any_ledger.commit_release(release(client.id, loss("0.1", "5e-8"), windows=(2,)))
    any_ledger.commit_release(release(client.id, loss("0.1", "1e-7"), windows=(3,)))  # window 0 left the run


def test_a_reused_answer_charges_no_delta(funded: tuple[Ledger, int]) -> None:
    ledger, cid = funded
    first = ledger.commit_release(release(cid, loss("0.5", "1e-9"), key="same"))
    second = ledger.commit_release(release(cid, loss("0.5", "1e-9"), key="same"))
    assert (first.charged.delta_attos, second.reused, second.charged) == (10**9, True, PrivacyLoss.zero())
    assert ledger.total_charged(DS, 0, cid).delta_attos == 10**9


def test_concurrent_spenders_never_exceed_the_delta_cap(durable_ledger_factory) -> None:
    """8 threads, each on its own connection, ask for 10x the δ cap across two windows: exactly 20 charges
    of 5e-8 fit 1e-6, and the ε (far from its cap) is charged for exactly those."""
    setup = durable_ledger_factory()
    client = setup.create_client("racer", "planner")
    setup.set_cap(DS, loss("100", "1e-6"), client_id=client.id, window=None, grid=GRID)
    setup.set_cap(DS, loss("100", "1e-6"), client_id=None, window=None, grid=GRID)
    granted: list[PrivacyLoss] = []
    lock = threading.Lock()

    def spend() -> None:
        ledger = durable_ledger_factory()
        try:
            for _ in range(25):
                try:
                    receipt = ledger.commit_release(release(client.id, loss("0.01", "5e-8"), windows=(0, 1)))
                except BudgetExceeded:
                    continue
                with lock:
                    granted.append(receipt.charged)
        finally:
            ledger.close()

    threads = [threading.Thread(target=spend) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(granted) == 20
    for w in (0, 1):
        assert setup.total_charged(DS, w) == PrivacyLoss(200_000_000, DELTA_UNITS // 10**6)
        [budget] = setup.window_budgets(DS, client.id, [w])
        assert budget.global_spent == budget.client_spent == PrivacyLoss(200_000_000, DELTA_UNITS // 10**6)
    setup.close()


# -- migration from the current schema (populations, before δ) -------------------------------------


def _check_migrated(ledger: Ledger) -> None:
    """The ledger of `data/ledger_v3.sql` after the migration: client caps, the population's global cap,
    allocation, horizon cap and spend, and the audit chain as they were, with δ 0 everywhere; charges in
    both measures work."""
    alice, bob = ledger.client_by_name("alice"), ledger.client_by_name("bob")
    [a] = ledger.window_budgets("city", alice.id, [0])
    assert (a.client_cap, a.client_spent, a.global_cap, a.global_spent) == (
        PrivacyLoss(10**9), PrivacyLoss(250_000_000), PrivacyLoss(3 * 10**9), PrivacyLoss(500_000_000))
    [b] = ledger.window_budgets("city", bob.id, [1])
    assert (b.group, b.group_cap, b.group_spent) == ("team", PrivacyLoss(10**9), PrivacyLoss(250_000_000))
    assert ledger.total_charged("city", 1) == PrivacyLoss(500_000_000)
    population = ledger.population("default")
    assert population is not None and population.horizon_cap == PrivacyLoss(100 * 10**9)
    rows = ledger.read_audit()
    assert [r.row_hash == r.chain_hash(r.prev_hash, r.at) for r in rows] == [True, True]
    old_grid = DatasetGrid("city", "2024-03-04", 7, "epsilon")
    ledger.commit_release(release(alice.id, Epsilon.parse("0.25"), grid=old_grid))
    ledger.set_cap(DS, loss("1", "1e-6"), client_id=alice.id, window=None, grid=GRID)
    ledger.set_cap(DS, loss("1", "1e-6"), client_id=None, window=None)
    ledger.commit_release(release(alice.id, loss("0.5", "1e-6")))
    with pytest.raises(BudgetExceeded, match="delta"):
        ledger.commit_release(release(alice.id, ApproxDP(1, 1)))


def test_sqlite_ledger_of_the_current_schema_migrates(tmp_path: Path) -> None:
    path = tmp_path / "v3.db"
    conn = sqlite3.connect(path)
    conn.executescript((DATA / "ledger_v3.sql").read_text())
    conn.close()
    ledger = SqliteLedger(path)
    assert ledger.migration_steps_applied == 1
    _check_migrated(ledger)
    ledger.close()
    assert SqliteLedger(path).migration_steps_applied == 0


@pytest.mark.postgres
def test_postgres_ledger_of_the_current_schema_migrates(postgres_ledger_factory, postgres_url: str) -> None:
    """Schema version 5 (main before issue 15: populations) with the same rows as the SQLite file, then step 6."""
    import psycopg

    from dpflows.ledger._sql_rules import DELTA_COLUMNS

    ledger = postgres_ledger_factory()
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        for table, column in DELTA_COLUMNS:
            conn.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
        conn.execute("DELETE FROM dpflows_schema WHERE version >= 6")
        _fill(conn)
    assert ledger.migrate() == 1
    assert ledger.migrate() == 0
    _check_migrated(ledger)


def _fill(conn) -> None:
    """The rows of data/ledger_v3.sql, inserted with the statements of the schema before δ."""
    lines = (DATA / "ledger_v3.sql").read_text().splitlines()
    for line in sorted(lines, key=lambda text: not text.startswith('INSERT INTO "clients"')):  # clients first
        if line.startswith("INSERT INTO") and "sqlite_sequence" not in line:
            table = line.split('"')[1]
            values = line.split(" VALUES", 1)[1].rstrip(";")
            overriding = " OVERRIDING SYSTEM VALUE" if table in ("clients", "api_keys", "charges", "audit") else ""
            conn.execute(f'INSERT INTO {table}{overriding} VALUES{values}'.replace("%", "%%"))
    for table in ("clients", "api_keys", "charges", "audit"):
        conn.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT MAX(id) FROM {table}))")  # noqa: S608
