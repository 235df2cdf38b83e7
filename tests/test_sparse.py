"""Sparse, thresholded answers on a dataset accounted in approximate DP (issue 15), through the service on a
real SQLite ledger and a real dataset directory: routing from public facts, the threshold and its δ, what is
charged, what is refused before any charge, and what an answer never says (how many keys were observed)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from pathlib import Path

import numpy as np
import pytest

from api.renderers import answer_document
from dpflows import sparse
from dpflows.aggregates import AggregateStore
from dpflows.budget import ApproxDP, Epsilon, Rho, parse_delta
from dpflows.errors import BudgetExceeded, DomainTooLarge, InvalidInput, PolicyViolation
from dpflows.ledger.sqlite import SqliteLedger
from dpflows.mechanisms import Contribution, smallest_threshold, threshold_scale
from dpflows.queries import make_spec, prepare
from dpflows.sensitivity import query_sensitivity
from dpflows.service import Policy, QueryRequest, Service
from dpflows.sparse import is_sparse, observed_counts
from tests.conftest import FIRST_DAY, build_small_dataset, build_sparse_dataset

WEEK = {"start": FIRST_DAY, "end": FIRST_DAY + dt.timedelta(days=7)}


@pytest.fixture(scope="module")
def sparse_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """'cells': tests.conftest.build_sparse_dataset (cell-level OD sparse, district OD dense, three heavy cell
    pairs); 'pure': the small city in pure DP with the same dense limit."""
    root = tmp_path_factory.mktemp("sparse")
    build_sparse_dataset(root, "cells")
    build_small_dataset(root, "pure", dense_limit=1000)
    return root


@pytest.fixture
def svc(sparse_root: Path, tmp_path: Path):
    service = Service(AggregateStore(sparse_root), SqliteLedger(tmp_path / "ledger.db"))
    yield service
    service.ledger.close()


@pytest.fixture
def planner(svc: Service):
    client, _ = svc.create_client("planner", "planner")
    svc.set_cap("cells", ApproxDP.parse_pair("5", "1e-6"), client_id=client.id, window=None)
    svc.set_cap("cells", ApproxDP.parse_pair("10", "1e-5"), client_id=None, window=None)
    return client


def cell_flows(dataset: str = "cells", **kw: object):
    return make_spec("flows", dataset=dataset, zoning="cell", **{**WEEK, **kw})  # type: ignore[arg-type]


def district_flows(dataset: str = "cells"):
    return make_spec("flows", dataset=dataset, zoning="districts", **WEEK)


def test_going_sparse_is_decided_from_the_domain_size_and_the_datasets_limit(svc: Service) -> None:
    data = svc.dataset("cells")
    assert is_sparse(cell_flows(), data) and not is_sparse(district_flows(), data)
    # presence on cells: 40 zones × 24 hours = 960 keys, within the limit; on two windows of commuting 3,200
    assert not is_sparse(make_spec("presence", dataset="cells", zoning="cell", **WEEK), data)
    with pytest.raises(DomainTooLarge, match="1600 keys, above the dense-release limit of 1000") as info:
        is_sparse(cell_flows("pure"), svc.dataset("pure"))
    assert "--accounting approx_dp" in info.value.message and info.value.field == "zoning"


def test_a_sparse_answer_releases_only_observed_keys_above_the_threshold(svc: Service, planner) -> None:
    spec = cell_flows()
    data = svc.dataset("cells")
    answer = svc.answer(QueryRequest(spec, epsilon=Epsilon.parse("1"), delta=parse_delta("1e-7")), planner)
    contribution = query_sensitivity(spec, data).contribution
    assert contribution == Contribution(5, 5, 5)  # L_trips = 5 into at most 5 keys, all into one
    scale = threshold_scale(contribution, Epsilon.parse("1").nanos)
    assert (answer.mechanism, answer.noise_scale, answer.threshold) == (
        "discrete_laplace_threshold", scale, smallest_threshold(contribution, scale, 10**11))
    assert answer.contribution == {"l0": 5, "l1": 5, "linf": 5} and answer.sensitivity == 5
    assert answer.charged == ApproxDP(10**9, 10**11)
    observed = observed_counts(spec, data)
    dense_truth = prepare(dataclasses.replace(spec, zoning="districts"), data)  # the data is there
    assert dense_truth.true_counts.sum() == observed.counts.sum() > 0
    assert answer.threshold == 90 and all(row["count"] >= answer.threshold for row in answer.values)
    by_key = {(r["origin"], r["destination"]) for r in answer.values}
    # 300 and 200 trips: released but for a noise below -110 (p < 1e-9); 10 trips: not, but for one above 80
    assert {("c000", "c001"), ("c002", "c003")} <= by_key and ("c004", "c005") not in by_key
    cells = [f"c{i:03d}" for i in range(40)]
    observed_pairs = {(cells[k // 40], cells[k % 40]) for k in observed.keys.tolist()}
    assert by_key <= observed_pairs  # never a key the data does not hold
    assert answer.below_threshold_interval == [0.0, answer.threshold + answer.error_bound_95]
    window = svc.budget_status(planner, "cells")[0]
    assert window.budget.client_spent == ApproxDP(10**9, 10**11)


def test_thresholds_at_the_issues_defaults() -> None:
    """L = 20 with ℓ0 = ℓ∞ = 20, ε = 0.5, δ = 1e-9: the issue's ~940; L = 5 (the approx_dp default): 221."""
    for triple, expected in (((20, 20, 20), 941), ((5, 5, 5), 221), ((5, 5, 1), 217)):
        c = Contribution(*triple)
        scale = threshold_scale(c, Epsilon.parse("0.5").nanos)
        assert smallest_threshold(c, scale, parse_delta("1e-9")) == expected


def test_a_dense_answer_on_an_approx_dataset_costs_no_delta(svc: Service, planner) -> None:
    answer = svc.answer(QueryRequest(district_flows(), epsilon=Epsilon.parse("0.5"), delta=parse_delta("1e-7")),
                        planner)
    assert (answer.mechanism, answer.threshold, len(answer.values)) == ("discrete_laplace", None, 64)
    assert answer.charged == ApproxDP(500_000_000, 0)
    assert svc.ledger.total_charged("cells", 0) == ApproxDP(500_000_000, 0)
    doc = answer_document(answer)
    assert (doc["release"], doc["delta_charged"], doc["delta_remaining"]) == ("dense", 0.0, 1e-6)


def test_the_quote_names_the_mechanism_threshold_and_epsilon_delta(svc: Service, planner) -> None:
    request = QueryRequest(cell_flows(), epsilon=Epsilon.parse("0.5"))
    quote = svc.quote(request, planner)
    assert quote.mechanism == "discrete_laplace_threshold"
    assert quote.loss == ApproxDP(500_000_000, Policy().default_delta)  # δ not sent: the server's default, 1e-9
    answer = svc.answer(request, planner)
    assert (answer.threshold, answer.noise_scale, answer.charged) == (quote.threshold, quote.noise_scale, quote.loss)
    again = svc.quote(request, planner)
    assert again.reused and again.charged == ApproxDP(0, 0)
    reused = svc.answer(request, planner)
    assert reused.reused and reused.values == answer.values and reused.charged == ApproxDP(0, 0)


def test_what_a_sparse_answer_cannot_be_is_refused_before_any_charge(svc: Service, planner) -> None:
    with pytest.raises(InvalidInput, match="consistent totals need every key") as info:
        svc.answer(QueryRequest(cell_flows(), epsilon=Epsilon.parse("0.5"), consistent=True), planner)
    assert info.value.field == "consistent"
    with pytest.raises(InvalidInput, match=r"below the smallest delta OpenDP's privacy map gives for this answer "
                                           r"\(5\.56e-16, at l0=5\)"):
        svc.quote(QueryRequest(cell_flows(), epsilon=Epsilon.parse("0.5"), delta=parse_delta("5e-16")), planner)
    floor = svc.quote(QueryRequest(cell_flows(), epsilon=Epsilon.parse("0.5"), delta=parse_delta("5.56e-16")), planner)
    assert floor.loss.delta_attos == 556  # the floor itself is accepted
    with pytest.raises(InvalidInput, match="delta=0 releases nothing"):
        svc.answer(QueryRequest(cell_flows(), epsilon=Epsilon.parse("0.5"), delta=0), planner)
    with pytest.raises(PolicyViolation, match=r"delta=1e-06 exceeds the per-query delta cap of 1e-07") as info:
        svc.answer(QueryRequest(cell_flows(), epsilon=Epsilon.parse("0.5"), delta=parse_delta("1e-6")), planner)
    assert info.value.field == "delta"
    # derive on a sparse answer: no derivation is searched, the answer is released (and charged) as asked
    derived = svc.answer(QueryRequest(cell_flows(), epsilon=Epsilon.parse("0.5"), derive=True), planner)
    assert derived.derived_from is None and derived.charged.delta_attos == Policy().default_delta
    assert svc.ledger.total_charged("cells", 0).delta_attos == Policy().default_delta  # only that one


def test_relative_change_refuses_sparse_presence(tmp_path: Path) -> None:
    build_small_dataset(tmp_path, "tiny", accounting="approx_dp", dense_limit=100)  # 40 cells × 24 hours: sparse
    svc = Service(AggregateStore(tmp_path), SqliteLedger(tmp_path / "ledger.db"))
    client, _ = svc.create_client("p", "planner")
    svc.set_cap("tiny", ApproxDP.parse_pair("5", "1e-6"), client_id=client.id, window=None)
    svc.set_cap("tiny", ApproxDP.parse_pair("10", "1e-5"), client_id=None, window=None)
    spec = make_spec("presence", dataset="tiny", zoning="cell", **WEEK)
    with pytest.raises(InvalidInput, match="released sparsely"):
        svc.relative_change(QueryRequest(spec, epsilon=Epsilon.parse("0.5")), FIRST_DAY + dt.timedelta(days=7),
                            FIRST_DAY + dt.timedelta(days=14), client)
    assert svc.ledger.total_charged("tiny", 0) == ApproxDP(0, 0)


def test_the_delta_budget_refuses_with_nothing_charged(svc: Service, planner) -> None:
    for day in range(10):  # 10 × 1e-7 = the client's δ cap of 1e-6
        spec = cell_flows(start=FIRST_DAY + dt.timedelta(days=day % 7), end=FIRST_DAY + dt.timedelta(days=7))
        spec = dataclasses.replace(spec, hours=tuple(range(day, 24)))
        svc.answer(QueryRequest(spec, epsilon=Epsilon.parse("0.1"), delta=parse_delta("1e-7")), planner)
    fresh = cell_flows(weekdays=[0])  # not asked before: it would be charged
    with pytest.raises(BudgetExceeded, match="remaining delta budget") as info:
        svc.quote(QueryRequest(fresh, epsilon=Epsilon.parse("0.1"), delta=parse_delta("1e-15")), planner)
    assert info.value.field == "delta"
    with pytest.raises(BudgetExceeded, match="remaining delta budget"):
        svc.answer(QueryRequest(fresh, epsilon=Epsilon.parse("0.1"), delta=parse_delta("1e-15")), planner)
    assert svc.ledger.total_charged("cells", 0) == ApproxDP(10**9, 10**12)
    # a dense answer still fits: it costs no δ
    svc.answer(QueryRequest(district_flows(), epsilon=Epsilon.parse("0.1")), planner)


def test_delta_is_refused_where_the_accounting_has_none(svc: Service) -> None:
    client, _ = svc.create_client("p2", "planner")
    with pytest.raises(InvalidInput, match="has no delta per query") as info:
        svc.quote(QueryRequest(district_flows("pure"), epsilon=Epsilon.parse("0.5"), delta=parse_delta("1e-9")),
                  client)
    assert info.value.field == "delta"
    with pytest.raises(InvalidInput, match="set it as epsilon and delta"):
        svc.set_cap("cells", Epsilon.parse("1"), client_id=client.id, window=None)
    with pytest.raises(InvalidInput, match="has no delta"):
        svc.set_cap("pure", ApproxDP.parse_pair("1", "1e-6"), client_id=client.id, window=None)
    with pytest.raises(InvalidInput, match="send epsilon or max_error, not rho"):
        svc.quote(QueryRequest(district_flows(), rho=Rho.parse("0.1")), client)


def test_nothing_in_a_sparse_answer_says_how_many_keys_were_observed(svc: Service, planner) -> None:
    """The document holds the released keys and public facts only: its fields are these, whatever the data."""
    answer = svc.answer(QueryRequest(cell_flows(), epsilon=Epsilon.parse("1"), delta=parse_delta("1e-7")), planner)
    doc = json.loads(json.dumps(answer_document(answer), default=str))
    assert set(doc) == {
        "answer_id", "query", "values", "accounting", "epsilon_charged", "epsilon", "delta_charged", "delta",
        "delta_remaining", "release", "threshold", "below_threshold_interval", "epsilon_derived_from_max_error",
        "windows", "budget_remaining", "privacy_unit", "count_unit", "mechanism", "error_bound_95", "confidence",
        "reused", "postprocessing", "released_at"}
    assert set(doc["mechanism"]) == {"name", "noise_scale", "sensitivity", "threshold", "contribution"}
    assert [set(row) for row in doc["values"]] == [{"origin", "destination", "count"}] * len(answer.values)
    rows = svc.ledger.read_audit()
    assert rows[-1].query is not None and set(rows[-1].query) == set(cell_flows().canonical()) | {"epsilon", "delta"}


@pytest.mark.parametrize(("bincount_domain", "reduce_rows"), [
    (sparse.BINCOUNT_DOMAIN, sparse.REDUCE_ROWS),  # these small domains: one bincount over the domain
    (0, sparse.REDUCE_ROWS),  # the sorting path of large domains: every row gathered, one sort
    (0, 1),  # the sorting path reducing what it gathered after every slot (memory bounded by the keys hit)
])
def test_observed_counts_match_the_dense_truth_for_every_kind(svc: Service, monkeypatch: pytest.MonkeyPatch,
                                                              bincount_domain: int, reduce_rows: int) -> None:
    """The sparse path reads the same rows and key indices as the dense one: on a domain both can hold, the
    observed keys are exactly the dense vector's non-zero keys, with the same counts, whichever way the rows
    are reduced (the way is chosen from the domain's size; here forced)."""
    monkeypatch.setattr(sparse, "BINCOUNT_DOMAIN", bincount_domain)
    monkeypatch.setattr(sparse, "REDUCE_ROWS", reduce_rows)
    data = svc.dataset("cells")
    specs = [district_flows(), make_spec("presence", dataset="cells", zoning="districts", **WEEK, hours=[7, 10]),
             make_spec("patterns", dataset="cells", zoning="districts", zone="d3", **WEEK),
             make_spec("inflows", dataset="cells", zoning="cell", **WEEK),
             make_spec("outflows", dataset="cells", zoning="districts", start=FIRST_DAY,
                       end=FIRST_DAY + dt.timedelta(days=20), weekdays=[0, 2])]
    for spec in specs:
        dense = prepare(spec, data).true_counts
        observed = observed_counts(spec, data)
        assert observed.keys.tolist() == np.flatnonzero(dense).tolist(), spec.kind
        assert observed.counts.tolist() == dense[dense != 0].tolist(), spec.kind


def test_ingestion_defaults_for_cell_level_datasets() -> None:
    """approx_dp datasets default to L_trips 5 (a sparse answer's threshold grows with L); the dense limit is
    an ingestion option stored with the dataset, and the CLI copies --dense-limit into it."""
    from dpflows.cli import build_parser
    from dpflows.cli.data_commands import ingest_options
    from dpflows.ingest.options import IngestOptions

    span = {"first_day": FIRST_DAY, "end_day": FIRST_DAY + dt.timedelta(days=14)}
    meta = IngestOptions("cells", **span, accounting="approx_dp").events_metadata()
    assert (meta.bound_trips, meta.dense_limit) == (5, 100_000)
    assert IngestOptions("pure", **span).events_metadata().bound_trips == 20
    assert IngestOptions("cells", **span, accounting="approx_dp", bound_trips=3).events_metadata().bound_trips == 3
    args = build_parser().parse_args(["ingest", "e.parquet", "--cells", "c.csv", "--out", "x/cells", "--first-day",
                                      "2024-03-04", "--end-day", "2024-03-18", "--accounting", "approx_dp",
                                      "--dense-limit", "5000"])
    options = ingest_options(args)
    assert (options.trips_bound(), options.events_metadata().dense_limit) == (5, 5000)
    with pytest.raises(InvalidInput, match="dense_limit=0"):
        IngestOptions("cells", **span, accounting="approx_dp", dense_limit=0)


def test_a_pure_dataset_shares_its_populations_epsilon_delta_budget(svc: Service, planner) -> None:
    """'pure' and 'cells' are drawn from the same people (the data root's default population): its budget is in
    (ε, δ), and a pure-DP answer counts there as (ε, 0) (Accounting.convert), beside the sparse answers' δ."""
    from dpflows.budget import PrivacyLoss

    assert svc.ledger.population("default") is None or svc.ledger.population("default").measure == "epsilon_delta"
    svc.set_cap("pure", Epsilon.parse("1"), client_id=planner.id, window=None)
    answer = svc.answer(QueryRequest(district_flows("pure"), epsilon=Epsilon.parse("0.5")), planner)
    assert answer.charged == Epsilon.parse("0.5")
    svc.answer(QueryRequest(cell_flows(), epsilon=Epsilon.parse("0.25"), delta=parse_delta("1e-8")), planner)
    assert svc.ledger.population_spent("default", 0) == PrivacyLoss(750_000_000, 10**10)
    assert svc.ledger.population("default").measure == "epsilon_delta"
