"""A query costs the ledger one transaction and at most one read (issue 13), a reuse one read and no transaction
(issue 16: its audit row joins a group commit): counted on a real SQLite ledger."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from dpflows.aggregates import AggregateStore
from dpflows.budget import Epsilon
from dpflows.ledger.sqlite import SqliteLedger
from dpflows.queries import make_spec
from dpflows.service import QueryRequest, Service

WEEK = (dt.date(2024, 3, 4), dt.date(2024, 3, 11))


class CountingLedger(SqliteLedger):
    """The real SQLite ledger, counting the transactions it opens (read and write)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.opened: list[str] = []

    @contextmanager
    def _transaction(self, *, write: bool) -> Iterator:  # type: ignore[override]
        self.opened.append("write" if write else "read")
        with super()._transaction(write=write) as cur:
            yield cur


def test_fresh_reused_and_derived_answers_cost_one_transaction_and_one_read(data_root: Path, tmp_path: Path) -> None:
    ledger = CountingLedger(tmp_path / "l.db")
    ledger.configure_audit_queue(window_s=600, max_rows=100)  # nothing written behind the test's back
    service = Service(AggregateStore(data_root), ledger)
    planner, _ = service.create_client("p", "planner")
    service.set_cap("small", Epsilon.parse("1"), client_id=planner.id, window=None)
    service.set_cap("small", Epsilon.parse("3"), client_id=None, window=None)
    spec = make_spec("flows", dataset="small", zoning="districts", start=WEEK[0], end=WEEK[1], hours=[7, 10])
    request = QueryRequest(spec, epsilon=Epsilon.parse("0.25"))
    first = service.answer(request, planner)  # warms the per-process caches (grid check)
    spec2 = make_spec("flows", dataset="small", zoning="districts", start=WEEK[0], end=WEEK[1],
                      hours=[8, 10])
    ledger.opened.clear()
    service.answer(QueryRequest(spec2, epsilon=Epsilon.parse("0.25")), planner)  # fresh: lookup, then the charge
    assert ledger.opened == ["read", "write"], ledger.opened
    # Reused, by the process that released it: one read (the answer's id and the budgets); the audit row is
    # queued for the group commit, and the values are read only when something reads them.
    ledger.opened.clear()
    again = service.answer(request, planner)
    assert ledger.opened == ["read"], ledger.opened
    assert again.reused and again.values == first.values and ledger.opened == ["read", "read"]
    # Reused by a process that never read it: the stored answer, then the budgets.
    other = Service(AggregateStore(data_root), ledger)
    other.answer(request, planner)  # its caches warm, as above: a reuse itself
    ledger.opened.clear()
    assert other.answer(request, planner).reused and ledger.opened == ["read"], ledger.opened
    fresh_process = Service(AggregateStore(data_root), ledger)
    fresh_process.context.grids.update(other.context.grids)
    fresh_process.context.reports_paid.update(other.context.reports_paid)
    fresh_process.context.noise_stocked.update(other.context.noise_stocked)
    ledger.opened.clear()
    assert fresh_process.answer(request, planner).reused and ledger.opened == ["read", "read"], ledger.opened
    # The queued audit rows: one transaction for all of them.
    ledger.opened.clear()
    assert ledger.flush_audit() == 4 and ledger.opened == ["write"]
    coarse = make_spec("flows", dataset="small", zoning="sectors", start=WEEK[0], end=WEEK[1],
                       hours=[7, 10])
    ledger.opened.clear()
    # at ε 0.02 a fresh answer (bound ~750) is noisier than the sum of 16 released values (~223): derived
    derived = service.answer(QueryRequest(coarse, epsilon=Epsilon.parse("0.02"), derive=True), planner)
    assert derived.derived_from is not None
    # lookup, candidate shapes (issue 18: ranked in SQL, no payload), the chosen payload, the budgets
    assert ledger.opened == ["read", "read", "read", "read"], ledger.opened
    outcomes = [e.outcome for e in ledger.read_audit(limit=100) if e.action == "query.flows"]
    assert outcomes == ["released", "released", "reused", "reused", "reused", "reused", "derived"]
