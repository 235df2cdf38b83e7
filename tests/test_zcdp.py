"""zCDP accounting (issue 8, item 4): discrete Gaussian noise, ρ composed exactly, (ε, δ) shown.

Exactness tests compare OpenDP's own privacy maps with the requested ρ as rationals; the
statistical test releases 200,000 zeros through the Gaussian path and compares them with the
exact discrete Gaussian pmf (chi-square at alpha = 1e-7, as tests/test_noise_distribution.py
argues for the Laplace); the service and HTTP tests run on a real SQLite ledger and a real
dataset directory accounted in zCDP.
"""

from __future__ import annotations

import datetime as dt
import math
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opendp.accuracy import discrete_gaussian_scale_to_accuracy
from scipy import stats

from api import create_app
from dpflows.aggregates import AggregateStore, load_dataset, read_interchange
from dpflows.budget import Epsilon, PrivacyLoss, Rho
from dpflows.errors import BudgetExceeded, InvalidInput, PolicyViolation
from dpflows.ingest.bounding import cap_per_person_key
from dpflows.ingest.pipeline import IngestOptions, ingest_events
from dpflows.ledger.sqlite import SqliteLedger
from dpflows.mechanisms import (
    DISCRETE_GAUSSIAN,
    gaussian_error_bound,
    gaussian_sum_error_bound,
    l2_sensitivity,
    release_counts_gaussian,
    rho_for_error,
    rho_loss,
    rho_to_approx_dp,
    scale_for_rho,
)
from dpflows.queries import key_contribution_cap, make_spec
from dpflows.service import QueryRequest, Service
from tests.conftest import build_small_dataset

DAY0 = dt.date(2024, 3, 4)


# -- values and mechanisms --------------------------------------------------------------------------


def test_rho_and_epsilon_never_mix() -> None:
    with pytest.raises(TypeError):
        Epsilon.parse("0.5") + Rho.parse("0.5")
    with pytest.raises(TypeError):
        _ = Epsilon.parse("0.5") < Rho.parse("0.5")
    assert Rho.parse("0.1") + PrivacyLoss(5) == Rho(100_000_005)  # ledger values take the caller's unit
    with pytest.raises(InvalidInput) as info:
        Rho.parse("nan")
    assert info.value.field == "rho"


@pytest.mark.parametrize(("l1", "cap", "squared"), [(100, 1, 100), (20, 7, 2 * 49 + 36), (5, 5, 25), (5, 9, 25),
                                                    (3, 2, 5), (1, 1, 1)])
def test_l2_sensitivity_is_the_exact_maximum_rounded_up(l1: int, cap: int, squared: int) -> None:
    value = l2_sensitivity(l1, cap)
    assert Fraction(value) ** 2 >= squared
    assert Fraction(math.nextafter(value, 0)) ** 2 < squared  # the smallest float that is not below


@given(st.integers(1, 500), st.integers(1, 500))
@settings(max_examples=200, deadline=None)
def test_l2_sensitivity_beats_any_contribution_vector(l1: int, cap: int) -> None:
    """Greedy vectors (c, c, ..., r) and the even spread never exceed the bound."""
    bound = Fraction(l2_sensitivity(l1, cap)) ** 2
    c = min(l1, cap)
    greedy = [c] * (l1 // c) + ([l1 % c] if l1 % c else [])
    assert sum(Fraction(v) ** 2 for v in greedy) <= bound
    assert l1 <= bound <= l1 * l1  # between the all-ones spread and everything in one key


@pytest.mark.parametrize(("l2", "rho"), [(1.0, "0.5"), (math.sqrt(20), "0.1"), (20.0, "0.03125"), (3.3, "0.0123")])
def test_scale_for_rho_meets_rho_exactly_per_opendp_map(l2: float, rho: str) -> None:
    target = Rho.parse(rho)
    scale = scale_for_rho(l2, target)
    assert rho_loss(l2, scale) <= target.as_fraction()
    assert rho_loss(l2, math.nextafter(scale, 0)) > target.as_fraction() or scale == pytest.approx(
        l2 / math.sqrt(2 * float(target.as_fraction())), rel=1e-15)


def test_approx_dp_display_is_opendps_and_within_the_classic_bound() -> None:
    delta = 1e-8
    previous = 0.0
    for rho in ("0.001", "0.01", "0.1", "0.5", "2"):
        r = Rho.parse(rho)
        eps = rho_to_approx_dp(r, delta)
        classic = float(r.as_fraction()) + 2 * math.sqrt(float(r.as_fraction()) * math.log(1 / delta))
        assert float(r.as_fraction()) <= eps <= classic + 1e-12
        assert eps > previous
        previous = eps
    assert rho_to_approx_dp(Rho.zero(), delta) == 0.0


def test_gaussian_sum_bound_is_subgaussian_and_grows_with_terms() -> None:
    one = gaussian_sum_error_bound(10.0, 1)
    assert one == gaussian_error_bound(10.0)
    four = gaussian_sum_error_bound(10.0, 4)
    assert four == math.ceil(10.0 * math.sqrt(8 * math.log(40)))
    assert four < 4 * one  # sums of Gaussians grow like sqrt(k), not k


@pytest.mark.parametrize("confidence", [0.95, 0.99, 0.999, 0.9, 0.5])
def test_closed_form_gaussian_bound_is_never_below_opendps_and_at_most_one_above(confidence: float) -> None:
    """Issue 18: the closed form replaces OpenDP's pmf summation (time ∝ scale) on the request path.
    On a grid of scales it is OpenDP's figure or that plus one count, never less."""
    scales = np.concatenate([np.linspace(0.2, 30.0, 299), np.geomspace(30.0, 3e5, 120)])
    diffs = [gaussian_error_bound(float(s), confidence)
             - discrete_gaussian_scale_to_accuracy(scale=float(s), alpha=1.0 - confidence) for s in scales]
    assert min(diffs) == 0 and max(diffs) == 1


def test_gaussian_accuracy_takes_constant_time_at_any_scale_or_target() -> None:
    """OpenDP's helpers took 2.6 s at scale 1e7 and ~6 s for max_error 1e6 (unbounded beyond)."""
    for scale in (1.0, 1e4, 1e7, 1e10, 1e15):
        start = time.process_time()
        bound = gaussian_error_bound(scale)
        assert time.process_time() - start < 0.01
        assert bound >= 1.959963984540054 * scale  # never below the continuous Gaussian's quantile
    floor = Rho.parse("0.000001")
    for max_error in (1.0, 10.0, 1e3, 1e5, 1e8, 1e14, 1e300):
        start = time.process_time()
        try:
            rho = rho_for_error(5.0, max_error, floor=floor)
        except InvalidInput as exc:  # the floor meets it: refused, naming the floor's error
            assert max_error >= gaussian_error_bound(scale_for_rho(5.0, floor))
            assert "send rho=0.000001 for that accuracy" in exc.message
        else:
            assert gaussian_error_bound(scale_for_rho(5.0, rho)) <= max_error
            assert rho >= floor
        assert time.process_time() - start < 0.05


@pytest.mark.parametrize("max_error", [3.0, 10.0, 80.0, 1000.0, 5000.0])
def test_rho_for_error_is_the_smallest_rho_that_meets_the_target(max_error: float) -> None:
    rho = rho_for_error(5.0, max_error)
    assert gaussian_error_bound(scale_for_rho(5.0, rho)) <= max_error
    assert gaussian_error_bound(scale_for_rho(5.0, Rho(rho.nanos - 1))) > max_error


@pytest.mark.slow
@pytest.mark.parametrize("rho", ["0.5", "0.02", "0.000125", "0.00000125", "0.000000125"])
def test_measured_95th_percentiles_of_opendp_draws_stay_within_the_closed_form(rho: str) -> None:
    """40,000 draws of OpenDP's discrete Gaussian at scales 5 (Δ2 = 5, ρ = 0.5) to about 10,000: the
    share at or beyond the stated bound is at most 5% plus 6 binomial sd (a false failure < 1e-9), so the
    measured 95th percentile of |noise| is within the bound up to that sampling error; and the bound is
    tight: the share below it minus one count is at most 95% plus the same slack plus the mass of a
    count or two (the bound is the exact quantile or one above it)."""
    n = 40_000
    release = release_counts_gaussian(np.zeros(n, dtype=np.int64), 5.0, Rho.parse(rho))
    noise = np.abs(release.values)
    bound = release.error_bound_95
    slack = 6 * math.sqrt(0.05 * 0.95 / n)
    print(f"scale {release.scale:.1f}: bound {bound:g}, measured 95th percentile {np.quantile(noise, 0.95):g}, "
          f"share >= bound {np.mean(noise >= bound):.4f}")
    assert float(np.mean(noise >= bound)) <= 0.05 + slack
    assert float(np.quantile(noise, 0.95 - slack)) < bound
    assert float(np.mean(noise < bound - 1)) <= 0.95 + slack + 2 * 0.8 / release.scale  # pmf ≤ 0.4/σ per value


# -- the noise is the discrete Gaussian it claims ----------------------------------------------------


@pytest.mark.slow
def test_gaussian_noise_matches_exact_discrete_gaussian_pmf() -> None:
    """200,000 zeros at σ = 5: chi-square against p(k) ∝ exp(−k²/2σ²) at alpha = 1e-7.

    Power: a σ 3% off shifts the bin masses by enough that the noncentrality at N = 200,000 is
    above 150 against a critical value near 75 for ~40 df, so a wrong scale fails; a false alarm
    has probability 1e-7. The 95% bound's coverage is checked to 6 binomial sd (< 2e-9).
    """
    n = 200_000
    release = release_counts_gaussian(np.zeros(n, dtype=np.int64), 1.0, Rho.parse("0.02"))
    scale = release.scale
    assert scale == pytest.approx(5.0, rel=1e-12)
    noise = release.values
    support = np.arange(-60, 61)
    weights = np.exp(-(support.astype(float) ** 2) / (2 * scale * scale))
    pmf = weights / weights.sum()  # mass beyond |k| = 60 at σ = 5 is below 1e-30
    expected = n * pmf
    keep = expected >= 20
    cut = int(support[keep].max())
    observed = np.array([np.sum(noise == k) for k in range(-cut, cut + 1)]
                        + [np.sum(noise < -cut) + np.sum(noise > cut)])
    exp_bins = np.concatenate([expected[keep], [n - expected[keep].sum()]])
    chi2 = float(((observed - exp_bins) ** 2 / exp_bins).sum())
    critical = stats.chi2.ppf(1 - 1e-7, len(exp_bins) - 1)
    assert chi2 < critical, f"chi2={chi2:.1f} >= {critical:.1f}"
    bound = release.error_bound_95
    inside = float(pmf[np.abs(support) < bound].sum())
    assert inside >= 0.95
    hits = float(np.mean(np.abs(noise) < bound))
    assert abs(hits - inside) < 6 * math.sqrt(inside * (1 - inside) / n)


# -- per-key caps ---------------------------------------------------------------------------------


@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 2), st.integers(0, 2)), max_size=60),
       st.integers(1, 3))
@settings(max_examples=100, deadline=None)
def test_cap_per_person_key_keeps_min_of_count_and_cap(rows: list[tuple[int, int, int]], cap: int) -> None:
    frame = pl.DataFrame(rows, schema={"person": pl.Int64, "hour": pl.Int64, "origin": pl.Int64}, orient="row")
    kept = cap_per_person_key(frame.lazy(), cap, keys=["hour", "origin"]).collect()
    before = frame.group_by("person", "hour", "origin").len()
    after = kept.group_by("person", "hour", "origin").len()
    joined = before.join(after, on=["person", "hour", "origin"], how="left", suffix="_kept")
    assert (joined["len_kept"].fill_null(0) == joined["len"].clip(upper_bound=cap)).all()


def test_zcdp_ingestion_caps_each_person_per_trips_row(tmp_path: Path) -> None:
    """Person p goes A→B→A→B within one hour: two A→B trips in one row; zCDP keeps one."""
    cells = tmp_path / "cells.csv"
    cells.write_text("cell_id,lat,lon\nA,40.0,-74.0\nB,40.01,-74.0\n")
    events = tmp_path / "events.csv"
    t = [f"2024-03-04 08:{m:02d}:00" for m in (0, 10, 20, 30)]
    events.write_text("person,timestamp,cell_id\n" + "".join(
        f"p,{ts},{cell}\n" for ts, cell in zip(t, "ABAB", strict=True)))
    counts = {}
    for accounting in ("pure_dp", "zcdp"):
        out = ingest_events(events, cells, tmp_path / accounting,
                            IngestOptions(name=accounting, trip_rule="consecutive", seed=1,
                                          first_day=dt.date(2024, 3, 4), end_day=dt.date(2024, 3, 5),
                                          accounting=accounting, key_cap_trips=1))
        trips = read_interchange(out, "trips").collect()
        counts[accounting] = int(trips.filter((pl.col("origin") == "A") & (pl.col("dest") == "B"))["count"].sum())
        meta = load_dataset(out).metadata
        assert meta.accounting == accounting
    assert counts == {"pure_dp": 2, "zcdp": 1}
    assert load_dataset(tmp_path / "zcdp").metadata.accounting_json() == {
        "measure": "zcdp", "key_caps": {"trips": 1, "presence": 1}, "delta": 1e-8}


# -- the service on a zCDP dataset -------------------------------------------------------------------


@pytest.fixture(scope="module")
def zcdp_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("zcdp-data")
    build_small_dataset(root, "smallz", accounting="zcdp")
    build_small_dataset(root, "small")
    return root


@pytest.fixture
def zservice(zcdp_root: Path, tmp_path: Path):
    ledger = SqliteLedger(tmp_path / "ledger.db")
    yield Service(AggregateStore(zcdp_root), ledger)
    ledger.close()


@pytest.fixture
def zplanner(zservice: Service):
    client, _ = zservice.create_client("zp", "planner")
    zservice.set_cap("smallz", Rho.parse("0.1"), client_id=client.id, window=None)
    zservice.set_cap("smallz", Rho.parse("1"), client_id=None, window=None)
    return client


def _presence(zoning: str = "cell", start: dt.date = DAY0, days: int = 1, **kw):
    return make_spec("presence", dataset="smallz", zoning=zoning, start=start, end=start + dt.timedelta(days=days),
                     **kw)


def test_key_contribution_cap_counts_public_rows(zservice: Service) -> None:
    data = zservice.dataset("smallz")  # L_presence 20, L_trips 5; districts hold 5 cells
    assert key_contribution_cap(_presence(), data) == 1  # one day, one cell, one hour: one row
    assert key_contribution_cap(_presence(days=7), data) == 7
    assert key_contribution_cap(_presence("districts", days=7), data) == 20  # 35 rows, capped by L
    flows = make_spec("flows", dataset="smallz", zoning="cell", start=DAY0, end=DAY0 + dt.timedelta(days=1),
                      hours=[8, 9])
    assert key_contribution_cap(flows, data) == 1
    weekly = make_spec("patterns", dataset="smallz", zoning="districts", start=DAY0, end=DAY0 + dt.timedelta(days=28),
                       measure="presence", zone="d0")
    assert key_contribution_cap(weekly, data) == 5  # one day per weekday per window, five cells


def test_zcdp_answer_is_gaussian_charged_in_rho_with_approx_dp(zservice: Service, zplanner) -> None:
    answer = zservice.answer(QueryRequest(_presence(), rho=Rho.parse("0.05")), zplanner)
    assert answer.mechanism == DISCRETE_GAUSSIAN and answer.accounting == "zcdp"
    assert answer.charged == Rho.parse("0.05") and isinstance(answer.budget_remaining, Rho)
    assert answer.budget_remaining == Rho.parse("0.05")
    assert answer.sensitivity == l2_sensitivity(20, 1)  # sqrt(20), not L = 20
    assert answer.noise_scale == scale_for_rho(l2_sensitivity(20, 1), Rho.parse("0.05"))
    assert answer.approx_epsilon == rho_to_approx_dp(Rho.parse("0.05"), 1e-8) and answer.delta == 1e-8
    assert len(answer.values) == 40 * 24  # every cell and hour, zeros included
    again = zservice.answer(QueryRequest(_presence(), rho=Rho.parse("0.05")), zplanner)
    assert again.reused and again.charged == Rho.zero() and again.values == answer.values


def test_rho_composes_exactly_and_a_hair_over_is_refused(zservice: Service, zplanner) -> None:
    for day in range(3):  # 3 × 0.03 = 0.09 of the 0.1 cap in window 0
        zservice.answer(QueryRequest(_presence(start=DAY0 + dt.timedelta(days=day)), rho=Rho.parse("0.03")), zplanner)
    with pytest.raises(BudgetExceeded):
        zservice.answer(QueryRequest(_presence(start=DAY0 + dt.timedelta(days=3)), rho=Rho.parse("0.010000001")),
                        zplanner)
    assert zservice.ledger.total_charged("smallz", 0, zplanner.id).nanos == 90_000_000
    last = zservice.answer(QueryRequest(_presence(start=DAY0 + dt.timedelta(days=3)), rho=Rho.parse("0.01")), zplanner)
    assert last.budget_remaining == Rho.zero()
    assert zservice.ledger.total_charged("smallz", 0, zplanner.id).nanos == 100_000_000


def test_measures_are_refused_on_the_wrong_dataset(zservice: Service, zplanner) -> None:
    with pytest.raises(InvalidInput) as info:
        zservice.answer(QueryRequest(_presence(), epsilon=Epsilon.parse("0.1")), zplanner)
    assert info.value.field == "epsilon" and "rho" in info.value.message
    with pytest.raises(InvalidInput) as info:
        zservice.set_cap("smallz", Epsilon.parse("1"), client_id=zplanner.id, window=None)
    assert info.value.field == "epsilon"
    zservice.set_cap("small", Epsilon.parse("1"), client_id=zplanner.id, window=None)
    # small and smallz share the data root's default population, whose global cap is in rho (issue 17)
    with pytest.raises(InvalidInput, match="send the cap as rho") as info:
        zservice.set_cap("small", Epsilon.parse("1"), client_id=None, window=None)
    assert info.value.field == "epsilon"
    pure = make_spec("presence", dataset="small", zoning="cell", start=DAY0, end=DAY0 + dt.timedelta(days=1))
    with pytest.raises(InvalidInput) as info:
        zservice.answer(QueryRequest(pure, rho=Rho.parse("0.1")), zplanner)
    assert info.value.field == "rho"
    with pytest.raises(PolicyViolation):  # planner's per-query cap on zCDP datasets: ρ 0.5
        zservice.answer(QueryRequest(_presence(), rho=Rho.parse("0.6")), zplanner)
    assert zservice.ledger.total_charged("smallz", 0).nanos == 0


def test_max_error_derives_rho_and_the_quote_equals_the_charge(zservice: Service, zplanner) -> None:
    request = QueryRequest(_presence("districts", days=2), max_error=80.0)
    quote = zservice.quote(request, zplanner)
    assert isinstance(quote.loss, Rho) and quote.accounting == "zcdp"
    assert quote.error_bound_95 <= 80.0
    answer = zservice.answer(request, zplanner)
    assert answer.charged == quote.loss and answer.loss_from_max_error
    assert answer.error_bound_95 == quote.error_bound_95


def test_budget_status_shows_rho_and_its_approx_dp(zservice: Service, zplanner) -> None:
    zservice.answer(QueryRequest(_presence(), rho=Rho.parse("0.04")), zplanner)
    status = zservice.budget_status(zplanner, "smallz")
    assert status[0].budget.client_spent.nanos == 40_000_000
    assert status[0].spent_approx_dp == {"epsilon": rho_to_approx_dp(Rho.parse("0.04"), 1e-8), "delta": 1e-8}
    assert status[1].spent_approx_dp == {"epsilon": 0.0, "delta": 1e-8}


# -- through HTTP ---------------------------------------------------------------------------------------


def test_zcdp_through_http(zcdp_root: Path, tmp_path: Path) -> None:
    app = create_app({"DPFLOWS_DATA_DIR": str(zcdp_root), "DPFLOWS_LEDGER_URL": f"sqlite:///{tmp_path}/l.db",
                      "TESTING": True})
    service = app.extensions["dpflows"].service
    _, admin_key = service.create_client("admin", "admin")
    planner, key = service.create_client("planner", "planner")
    http = app.test_client()
    admin = {"Authorization": f"Bearer {admin_key}"}
    h = {"Authorization": f"Bearer {key}"}
    bad = http.put("/v1/admin/caps", json={"dataset": "smallz", "epsilon": 1, "client_id": planner.id}, headers=admin)
    assert bad.status_code == 422 and bad.get_json()["error"]["field"] == "epsilon"
    for body in ({"dataset": "smallz", "rho": 0.2, "client_id": planner.id}, {"dataset": "smallz", "rho": 2}):
        assert http.put("/v1/admin/caps", json=body, headers=admin).status_code == 200
    query = {"dataset": "smallz", "zoning": "cell", "start": "2024-03-05", "end": "2024-03-06", "rho": 0.05}
    quote = http.post("/v1/quote", json={**query, "query": "presence"}, headers=h).get_json()
    assert quote["accounting"] == "zcdp" and quote["rho_charged"] == 0.05 and "epsilon" not in quote
    res = http.post("/v1/presence", json=query, headers=h)
    assert res.status_code == 200, res.get_json()
    doc = res.get_json()
    assert doc["accounting"] == "zcdp" and doc["rho_charged"] == 0.05 and doc["rho"] == 0.05
    assert "epsilon_charged" not in doc and doc["mechanism"]["name"] == "discrete_gaussian"
    assert doc["approx_dp"] == {"epsilon": rho_to_approx_dp(Rho.parse("0.05"), 1e-8), "delta": 1e-8}
    assert doc["budget_remaining"] == 0.15 and doc["windows"][0]["rho_charged"] == 0.05
    assert doc["error_bound_95"] == quote["error_bound_95"]
    wrong = http.post("/v1/presence", json={**query, "rho": None, "epsilon": 0.1} | {}, headers=h)
    assert wrong.status_code == 422
    wrong = http.post("/v1/presence", json={k: v for k, v in query.items() if k != "rho"} | {"epsilon": 0.1},
                      headers=h)
    assert wrong.status_code == 422 and wrong.get_json()["error"]["field"] == "epsilon"
    budget = http.get("/v1/budget?dataset=smallz", headers=h).get_json()
    assert budget["accounting"] == "zcdp" and budget["windows"][0]["spent"] == 0.05
    assert budget["windows"][0]["spent_approx_dp"]["delta"] == 1e-8
    listing = http.get("/v1/datasets", headers=h).get_json()
    assert {d["name"]: d["accounting"]["measure"] for d in listing} == {"small": "pure_dp", "smallz": "zcdp"}
    csv = http.post("/v1/presence?format=csv", json=query, headers=h)
    assert csv.headers["X-Dpflows-Rho-Charged"] == "0"  # reused: the same query again is free


@pytest.mark.slow
def test_python_client_through_gunicorn_on_zcdp(zcdp_root: Path, tmp_path: Path) -> None:
    """The Python client spends ρ on a real gunicorn: quote == charge, budget in ρ, caps in ρ."""
    from dpflows import client as dc
    from tests.servers import GunicornServer

    url = f"sqlite:///{tmp_path}/ledger.db"
    service = Service(AggregateStore(zcdp_root), SqliteLedger(tmp_path / "ledger.db"))
    _, admin_key = service.create_client("admin", "admin")
    planner, key = service.create_client("planner", "planner")
    service.ledger.close()
    server = GunicornServer(zcdp_root, url, workers=2, log_path=tmp_path / "gunicorn.log")
    try:
        admin = dc.DpflowsClient(server.url, admin_key, timeout=30)
        admin.set_cap("smallz", rho=0.2, client_id=planner.id)
        admin.set_cap("smallz", rho=1)
        with pytest.raises(dc.DpflowsClientError) as info:
            admin.set_cap("smallz", 1.0, client_id=planner.id)
        assert info.value.status == 422
        me = dc.DpflowsClient(server.url, key, timeout=30)
        quote = me.quote("presence", "smallz", "cell", "2024-03-12", "2024-03-13", rho=0.05)
        answer = me.presence("smallz", "cell", "2024-03-12", "2024-03-13", rho=0.05)
        assert answer.accounting == "zcdp" and answer.rho_charged == 0.05 and answer.epsilon_charged is None
        assert quote.epsilon == 0.05 and answer.error_bound_95 == quote.error_bound_95
        assert answer.mechanism.name == "discrete_gaussian" and answer.mechanism.sensitivity == l2_sensitivity(20, 1)
        assert answer.approx_dp is not None and answer.approx_dp["delta"] == 1e-8
        assert answer.windows[0].epsilon_charged == 0.05 and answer.budget_remaining == pytest.approx(0.15)
        assert answer.values.height == 40 * 24
    finally:
        server.stop()
