"""The populations migration (issue 17): a ledger of schema 2 (SQLite user_version 2, PostgreSQL migration 4)
with budgets per dataset keeps every charge and cap, and can spend nothing twice.

The old ledger is built as main wrote it: the population tables and columns dropped, then the rows the
old `set_cap` and `commit_release` wrote (per-dataset global caps, group allocations and spend), inserted
as they were. Datasets: demo (ε) and demo-zcdp (ρ) from 03-04, late (ε) from 03-11, odd (ε) from 03-06.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dpflows.budget import Epsilon, Rho
from dpflows.errors import BudgetExceeded
from dpflows.ledger import AuditEntry, DatasetGrid, Ledger, ReleaseRequest
from dpflows.ledger.sqlite import SqliteLedger

E = 1_000_000_000  # nanos per unit

DATASETS = [("demo", "2024-03-04", "epsilon"), ("demo-zcdp", "2024-03-04", "rho"),
            ("late", "2024-03-11", "epsilon"), ("odd", "2024-03-06", "epsilon")]
GLOBAL_CAPS = {"demo": E, "demo-zcdp": E // 20, "late": E // 2, "odd": E}  # ε 1, ρ 0.05, ε 0.5, ε 1
#: (client, dataset, window, nanos, the group_spend row it went to)
CHARGES = [("planner", "demo", 0, E // 2, "G"), ("analyst", "demo", 0, E // 4, ""),
           ("planner", "demo-zcdp", 0, E // 100, "")]


def _old_rows(run: Callable[[str, tuple[Any, ...]], None], ids: dict[str, int]) -> None:
    """What main's ledger held after its set_cap and commit_release calls (schema 2)."""
    for i, (name, first_day, measure) in enumerate(DATASETS):
        run("INSERT INTO datasets (dataset, first_day, window_days, measure, registered_at) VALUES (?, ?, 7, ?, ?)",
            (name, first_day, measure, f"2024-01-0{i + 1}T00:00:00"))
        run("INSERT INTO caps (client_id, dataset, win, cap_nanos, updated_at) VALUES (0, ?, -1, ?, 'then')",
            (name, GLOBAL_CAPS[name]))
    for client, nanos in (("planner", 2 * E), ("analyst", E)):
        for name, _, _ in DATASETS:
            run("INSERT INTO caps (client_id, dataset, win, cap_nanos, updated_at) VALUES (?, ?, -1, ?, 'then')",
                (ids[client], name, nanos))
    run("INSERT INTO group_caps (group_name, dataset, win, cap_nanos, updated_at) VALUES ('G', 'demo', -1, ?, 'then')",
        (6 * E // 10,))
    for client, dataset, win, nanos, holder in CHARGES:
        answer = uuid.uuid4().hex
        run("INSERT INTO charges (client_id, dataset, win, nanos, answer_id, at) VALUES (?, ?, ?, ?, ?, 'then')",
            (ids[client], dataset, win, nanos, answer))
        for cid in (ids[client], 0):
            run("INSERT INTO spend (dataset, win, client_id, nanos) VALUES (?, ?, ?, ?) ON CONFLICT (dataset, win, "
                "client_id) DO UPDATE SET nanos = spend.nanos + excluded.nanos", (dataset, win, cid, nanos))
        run("INSERT INTO group_spend (dataset, win, group_name, nanos) VALUES (?, ?, ?, ?) ON CONFLICT (dataset, win, "
            "group_name) DO UPDATE SET nanos = group_spend.nanos + excluded.nanos", (dataset, win, holder, nanos))


def _clients(ledger: Ledger) -> dict[str, int]:
    ids = {name: ledger.create_client(name, role).id for name, role in (("planner", "planner"),
                                                                         ("analyst", "analyst"))}
    ledger.set_group(ids["planner"], "G")
    return ids


_DROP = ["DROP TABLE populations", "DROP TABLE population_caps", "DROP TABLE population_group_caps",
         "DROP TABLE population_spend", "ALTER TABLE datasets DROP COLUMN population",
         "ALTER TABLE datasets DROP COLUMN window_offset"]


def _spend(ledger: Ledger, client_id: int, dataset: str, loss: Epsilon | Rho, charge: Rho | None = None,
           grid: DatasetGrid | None = None) -> None:
    answer_id = uuid.uuid4().hex
    ledger.commit_release(ReleaseRequest(
        client_id=client_id, dataset=dataset, query_key=uuid.uuid4().hex, windows=(0,), loss=loss,
        answer_id=answer_id, payload={"values": [1]}, grid=grid, population_loss=charge,
        audit=AuditEntry(action="query.flows", outcome="released", client_id=client_id, dataset=dataset, loss=loss,
                         answer_id=answer_id)))


def _check_migrated(ledger: Ledger, ids: dict[str, int]) -> None:
    # where each dataset went: demo, demo-zcdp and late share the default population (late one window on),
    # in rho (demo-zcdp cannot convert into epsilon); odd is off its grid and keeps a population of its own
    assert [ledger.population_of(d) for d, _, _ in DATASETS] == [("default", 0), ("default", 0), ("default", 1),
                                                                  ("odd", 0)]
    default = ledger.population("default")
    assert (default.measure, default.first_day, default.window_days) == ("rho", "2024-03-04", 7)
    assert ledger.population("odd").measure == "epsilon"
    assert ledger.dataset_grid("demo").population == "default"
    # its global cap is the sum of its datasets' (ε 1 -> ρ 0.5, ρ 0.05, ε 0.5 -> ρ 0.125; late only from window 1)
    assert ledger.population_caps("default") == [(None, Rho.parse("0.675")), (0, Rho.parse("0.55"))]
    assert ledger.population_caps("odd") == [(None, Epsilon.parse("1"))]
    assert [(a.group, a.window, a.cap) for a in ledger.list_allocations(population="default")] == [
        ("G", None, Rho.parse("0.180000001")), ("G", 0, Rho.parse("0.180000001"))]  # 0.6²/2, rounded up
    # every charge is there, each converted on its own: 0.5²/2 + 0.25²/2 + 0.01
    assert ledger.population_spent("default", 0) == Rho.parse("0.16625")
    for client, dataset, win, nanos, _ in CHARGES:
        assert ledger.total_charged(dataset, win, ids[client]).nanos == nanos
    # the datasets' own caps still bind as they did: the planner's group had 0.1 of its 0.6 left on demo
    [budget] = ledger.window_budgets("demo", ids["planner"], [0])
    assert budget.legacy is not None and budget.legacy.group_cap == PrivacyLossOf(6 * E // 10)
    with pytest.raises(BudgetExceeded, match=r"allocation of 0\.1 of your group 'G'"):
        _spend(ledger, ids["planner"], "demo", Epsilon.parse("0.2"), Rho.parse("0.02"))
    _spend(ledger, ids["planner"], "demo", Epsilon.parse("0.1"), Rho.parse("0.005"))
    with pytest.raises(BudgetExceeded, match="global budget of dataset 'demo'"):  # its own pool: 0.4 - 0.25
        _spend(ledger, ids["analyst"], "demo", Epsilon.parse("0.2"), Rho.parse("0.02"))
    # a dataset ingested afterwards shares the population's budget: what the old caps left, no more
    ledger.set_cap("new", Epsilon.parse("5"), client_id=ids["analyst"], window=None,
                   grid=DatasetGrid("new", "2024-03-04", 7, "epsilon", "default", "rho"))
    _spend(ledger, ids["analyst"], "new", Epsilon.parse("0.1"), Rho.parse("0.005"))
    [budget] = ledger.window_budgets("new", ids["analyst"], [0])
    assert budget.legacy is None and budget.global_spent == Rho.parse("0.17625")
    with pytest.raises(BudgetExceeded, match="without a group allocation"):  # the pool: 0.55 - 0.180000001
        _spend(ledger, ids["analyst"], "new", Epsilon.parse("1"), Rho.parse("0.33"))


def PrivacyLossOf(nanos: int) -> Any:
    from dpflows.budget import PrivacyLoss

    return PrivacyLoss(nanos)


def test_sqlite_ledger_of_schema_2_migrates_to_populations(tmp_path: Path) -> None:
    path = tmp_path / "v2.db"
    ledger = SqliteLedger(path)
    ids = _clients(ledger)
    ledger.close()
    conn = sqlite3.connect(path, isolation_level=None)
    for statement in _DROP:
        conn.execute(statement)
    _old_rows(lambda sql, params: conn.execute(sql, params), ids)
    conn.execute("PRAGMA user_version = 2")
    conn.close()
    ledger = SqliteLedger(path)
    assert ledger.migration_steps_applied == 1
    _check_migrated(ledger, ids)
    ledger.close()
    assert SqliteLedger(path).migration_steps_applied == 0


@pytest.mark.postgres
def test_postgres_ledger_of_migration_4_migrates_to_populations(postgres_ledger_factory, postgres_url: str) -> None:
    import psycopg

    ledger = postgres_ledger_factory()
    ids = _clients(ledger)
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        for statement in _DROP:
            conn.execute(statement)
        conn.execute("DELETE FROM dpflows_schema WHERE version >= 5")
        _old_rows(lambda sql, params: conn.execute(sql.replace("?", "%s"), params), ids)
    assert ledger.migrate() == 1
    assert ledger.migrate() == 0
    _check_migrated(ledger, ids)
