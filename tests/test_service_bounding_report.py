"""The bounding report in the service: charged once against the global cap of every window,
by the reserved system principal, before anything of its ingestion is served."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import pytest

from dpflows.aggregates import AggregateStore
from dpflows.budget import Epsilon, Rho
from dpflows.errors import BudgetExceeded, InvalidInput, NotFound
from dpflows.ingest.pipeline import IngestOptions, ingest_events
from dpflows.ledger.sqlite import SqliteLedger
from dpflows.mechanisms import pure_dp_as_rho
from dpflows.queries import make_spec
from dpflows.service import REPORT_ACTION, SYSTEM_CLIENT, QueryRequest, Service

REPORT_EPS = Epsilon.parse("0.1")
WINDOWS = [0, 1]
FIRST_DAY, END_DAY = dt.date(2024, 3, 4), dt.date(2024, 3, 18)  # the report_root city: 14 days


def service_over(root: Path, ledger_path: Path) -> Service:
    return Service(AggregateStore(root), SqliteLedger(ledger_path))


def flows_request(epsilon: str = "0.25") -> QueryRequest:
    spec = make_spec("flows", dataset="city", zoning="districts", start=dt.date(2024, 3, 4),
                     end=dt.date(2024, 3, 11))
    return QueryRequest(spec, epsilon=Epsilon.parse(epsilon))


def test_report_is_charged_in_every_window_before_it_is_served(report_root: Path, tmp_path: Path) -> None:
    service = service_over(report_root, tmp_path / "l.db")
    admin, _ = service.create_client("admin", "admin")
    service.set_cap("city", Epsilon.parse("3"), client_id=None, window=None)
    doc = service.bounding_report("city", admin)
    assert doc["epsilon"] == REPORT_EPS and doc["windows"] == 2
    assert [m["measure"] for m in doc["measures"]] == ["trips", "presence"]
    for w in WINDOWS:  # the global spend of every window holds the report's ε, charged once
        assert service.ledger.total_charged("city", w) == REPORT_EPS
        [budget] = service.ledger.window_budgets("city", admin.id, [w])
        assert budget.global_spent == REPORT_EPS
    system = service.ledger.client_by_name(SYSTEM_CLIENT)
    assert service.ledger.list_keys(system.id) == []  # nobody can authenticate as it
    assert service.ledger.total_charged("city", 0, system.id) == REPORT_EPS
    rows = [(r.action, r.outcome, r.client_id, r.loss) for r in service.ledger.read_audit(limit=100)]
    assert rows[-2:] == [(REPORT_ACTION, "released", system.id, REPORT_EPS),
                         ("query.bounding_report", "reused", admin.id, Epsilon.zero())]
    service.bounding_report("city", admin)  # reading again is free
    assert service.ledger.total_charged("city", 0) == REPORT_EPS


def test_first_query_pays_the_report_first_and_the_planner_keeps_its_own_cap(report_root: Path,
                                                                              tmp_path: Path) -> None:
    service = service_over(report_root, tmp_path / "l.db")
    planner, _ = service.create_client("p", "planner")
    service.set_cap("city", Epsilon.parse("1"), client_id=planner.id, window=None)
    service.set_cap("city", Epsilon.parse("3"), client_id=None, window=None)
    answer = service.answer(flows_request(), planner)
    assert answer.budget_remaining == Epsilon.parse("0.75")  # the client's own cap is untouched
    assert service.ledger.total_charged("city", 0) == REPORT_EPS + Epsilon.parse("0.25")
    assert service.ledger.total_charged("city", 1) == REPORT_EPS
    [budget] = service.ledger.window_budgets("city", planner.id, [1])
    assert budget.global_spent == REPORT_EPS


def test_nothing_is_served_until_the_report_can_be_charged(report_root: Path, tmp_path: Path) -> None:
    service = service_over(report_root, tmp_path / "l.db")
    admin, _ = service.create_client("admin", "admin")
    planner, _ = service.create_client("p", "planner")
    service.set_cap("city", Epsilon.parse("1"), client_id=planner.id, window=None)
    with pytest.raises(BudgetExceeded, match=r"bounding report \(epsilon=0.1 in every window\).*no global cap"):
        service.bounding_report("city", admin)
    with pytest.raises(BudgetExceeded, match="bounding report"):
        service.answer(flows_request(), planner)
    with pytest.raises(BudgetExceeded, match="bounding report"):  # a quote never promises what is refused
        service.quote(flows_request(), planner)
    service.set_cap("city", Epsilon.parse("0.09"), client_id=None, window=1)  # too little left in window 1
    service.set_cap("city", Epsilon.parse("3"), client_id=None, window=0)
    with pytest.raises(BudgetExceeded, match=r"what remains of the global budget on dataset 'city' window 1"):
        service.answer(flows_request(), planner)
    assert all(service.ledger.total_charged("city", w) == Epsilon.zero() for w in WINDOWS)
    outcomes = [(r.action, r.outcome) for r in service.ledger.read_audit(limit=100) if r.action != "admin.set_cap"]
    assert (REPORT_ACTION, "budget_exceeded") in outcomes and ("query.flows", "budget_exceeded") in outcomes
    service.set_cap("city", Epsilon.parse("0.1"), client_id=None, window=1)  # exactly enough
    assert service.bounding_report("city", admin)["epsilon"] == REPORT_EPS
    assert service.ledger.total_charged("city", 1) == REPORT_EPS


def test_two_workers_charge_it_once(report_root: Path, tmp_path: Path) -> None:
    first, second = service_over(report_root, tmp_path / "l.db"), service_over(report_root, tmp_path / "l.db")
    admin, _ = first.create_client("admin", "admin")
    first.set_cap("city", Epsilon.parse("3"), client_id=None, window=None)
    second.bounding_report("city", admin)
    first.bounding_report("city", admin)
    assert first.ledger.total_charged("city", 0) == REPORT_EPS
    releases = [r for r in first.ledger.read_audit(limit=100) if r.action == REPORT_ACTION]
    assert [r.outcome for r in releases] == ["released"]


def test_an_unpaid_earlier_report_is_charged_with_the_reingestion(report_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    shutil.copytree(report_root, root)
    raw = root / "raw"
    ingest_events(raw / "events.parquet", raw / "cells.csv", root / "datasets" / "city",
                  IngestOptions(name="city", seed=8, first_day=FIRST_DAY, end_day=END_DAY, bound_trips=10,
                                report_epsilon=0))  # L chosen from the first report, which was never served
    service = service_over(root, tmp_path / "l.db")
    admin, _ = service.create_client("admin", "admin")
    planner, _ = service.create_client("p", "planner")
    service.set_cap("city", Epsilon.parse("1"), client_id=planner.id, window=None)
    service.set_cap("city", Epsilon.parse("3"), client_id=None, window=None)
    with pytest.raises(NotFound, match="no bounding report"):
        service.bounding_report("city", admin)  # this ingestion made none: nothing served, nothing charged
    assert service.ledger.total_charged("city", 1) == Epsilon.zero()
    assert service.answer(flows_request(), planner).sensitivity == 10  # the first answer pays the earlier report
    assert all(service.ledger.total_charged("city", w, service.ledger.client_by_name(SYSTEM_CLIENT).id) == REPORT_EPS
               for w in WINDOWS)


def test_system_names_are_reserved(report_root: Path, tmp_path: Path) -> None:
    service = service_over(report_root, tmp_path / "l.db")
    with pytest.raises(InvalidInput, match="reserved"):
        service.create_client(SYSTEM_CLIENT, "admin")


def test_on_a_zcdp_dataset_the_report_costs_the_rho_of_its_release(report_root: Path, tmp_path: Path) -> None:
    raw = report_root / "raw"
    ingest_events(raw / "events.parquet", raw / "cells.csv", tmp_path / "datasets" / "z",
                  IngestOptions(name="z", seed=8, first_day=FIRST_DAY, end_day=END_DAY, accounting="zcdp",
                                report_epsilon="0.1"))
    service = service_over(tmp_path, tmp_path / "l.db")
    admin, _ = service.create_client("admin", "admin")
    service.set_cap("z", Rho.parse("1"), client_id=None, window=None)
    doc = service.bounding_report("z", admin)
    report = service.dataset("z").bounding_report
    assert report is not None and doc["epsilon"] == REPORT_EPS and doc["charged_unit"] == "rho"
    rho = Rho.from_privacy_map(pure_dp_as_rho(report.sensitivity, report.scale))  # OpenDP: ε-DP is ε²/2-zCDP
    assert rho == Rho.parse("0.005") and doc["charged"] == rho
    assert all(service.ledger.total_charged("z", w) == rho for w in WINDOWS)


def test_a_quote_pays_the_report_first_so_its_figures_are_those_the_query_meets(report_root: Path,
                                                                                 tmp_path: Path) -> None:
    service = service_over(report_root, tmp_path / "l.db")
    planner, _ = service.create_client("p", "planner")
    service.set_cap("city", Epsilon.parse("1"), client_id=planner.id, window=None)
    service.set_cap("city", Epsilon.parse("0.35"), client_id=None, window=None)
    quote = service.quote(flows_request(), planner)
    [window] = quote.windows
    assert window.budget.global_spent == REPORT_EPS  # the report, not the client, paid it
    # what the client sees is its own cap (issue 17: the global remainder is other clients' spending)
    assert window.budget.remaining == Epsilon.parse("1") and quote.charged == Epsilon.parse("0.25")
    assert service.ledger.total_charged("city", 0, planner.id) == Epsilon.zero()
    answer = service.answer(flows_request(), planner)
    assert answer.charged == quote.charged and answer.budget_remaining == Epsilon.parse("0.75")
    with pytest.raises(BudgetExceeded, match="global budget") as info:  # the global cap is met: no figure
        service.answer(flows_request("0.2"), planner)
    assert info.value.details == {"window": 0}
