"""Issue 14, the query side: people present, residents, home→work commuting, in- and outflows.

Each new kind over the real aggregate store of an ingested city: its public key domain (zeros
noised), its sensitivity and count unit, exact sums against the flows it summarizes, the role
policy, whole windows, quotes, reuse, and HTTP through Flask, CSV included; the Python client
through a real gunicorn.
"""

from __future__ import annotations

import datetime as dt
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from dpflows.aggregates import AggregateStore
from dpflows.budget import Epsilon
from dpflows.errors import InvalidInput, PolicyViolation
from dpflows.ingest.pipeline import IngestOptions, ZoningSpec, ingest_events
from dpflows.ledger.sqlite import SqliteLedger
from dpflows.queries import make_spec, prepare
from dpflows.sensitivity import query_sensitivity
from dpflows.service import QueryRequest, Service
from dpflows.service.answering import answer

D0 = dt.date(2024, 3, 4)
TWO_WEEKS = D0 + dt.timedelta(days=14)


@pytest.fixture(scope="module")
def city_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from dpflows.demo import generate_city

    root = tmp_path_factory.mktemp("questions")
    files = generate_city(root / "raw", persons=600, seed=3, days=14)
    ingest_events(files.events, files.cells, root / "datasets" / "city",
                  IngestOptions(name="city", **files.span, seed=7, report_epsilon=0,
                                zonings=[ZoningSpec("districts", files.districts),
                                         ZoningSpec("sectors", files.sectors, coarse=True, min_cells_per_zone=50)]))
    return root


@pytest.fixture
def svc(city_root: Path, tmp_path: Path) -> tuple[Service, object, object]:
    service = Service(AggregateStore(city_root), SqliteLedger(tmp_path / "l.db"))
    planner, _ = service.create_client("planner", "planner")
    analyst, _ = service.create_client("analyst", "analyst")
    service.set_cap("city", Epsilon.parse("5"), client_id=planner.id, window=None)
    service.set_cap("city", Epsilon.parse("1"), client_id=analyst.id, window=None)
    service.set_cap("city", Epsilon.parse("10"), client_id=None, window=None)
    return service, planner, analyst


def ask(service: Service, client, kind: str, epsilon: str = "0.5", **kw):
    end = kw.pop("end", TWO_WEEKS if kind in ("residents", "commuting") else D0 + dt.timedelta(days=7))
    spec = make_spec(kind, dataset="city", zoning=kw.pop("zoning", "sectors"), start=kw.pop("start", D0), end=end,
                     **kw)
    return service.answer(QueryRequest(spec, epsilon=Epsilon.parse(epsilon),
                                       case_ref="c-1" if client.role == "analyst" else None), client)


def test_residents_and_workers_per_zone_and_window(svc) -> None:
    service, planner, _ = svc
    homes = ask(service, planner, "residents", place="home")
    assert homes.key_fields == ("zone", "window") and homes.sensitivity == 1 and homes.count_unit == "people"
    zones = service.dataset("city").zoning("sectors").zone_ids
    assert [(r["zone"], r["window"]) for r in homes.values] == [(z, w) for z in zones
                                                                for w in ("2024-03-04", "2024-03-11")]
    assert [w.window for w in homes.windows] == [0, 1] and homes.charged == Epsilon.parse("0.5")
    # sensitivity 1 at ε 0.5: scale 2, whatever the bounds of trips or presence
    assert homes.noise_scale == pytest.approx(2.0)
    workers = ask(service, planner, "residents", place="work")
    assert workers.answer_id != homes.answer_id
    data = service.dataset("city")
    true_homes = prepare(homes.spec, data).true_counts
    assert int(true_homes.sum()) <= 600 * 2  # each person at most one home per window


def test_commuting_is_home_zone_to_work_zone_per_window(svc) -> None:
    service, planner, analyst = svc
    a = ask(service, planner, "commuting")
    assert a.key_fields == ("home", "work", "window") and len(a.values) == 4 * 4 * 2 and a.sensitivity == 1
    b = ask(service, analyst, "commuting", epsilon="0.25")  # analysts may ask it on coarse zonings
    assert b.charged == Epsilon.parse("0.25")
    with pytest.raises(PolicyViolation, match="coarse"):
        ask(service, analyst, "commuting", zoning="districts", epsilon="0.1")
    with pytest.raises(PolicyViolation, match="flows only"):
        ask(service, analyst, "residents", place="home", epsilon="0.1")


def test_in_and_outflows_are_exact_column_and_row_sums_of_flows(svc) -> None:
    service, _, analyst = svc
    data = service.dataset("city")
    flows = prepare(make_spec("flows", dataset="city", zoning="sectors", start=D0, end=D0 + dt.timedelta(days=7),
                              hours=[7, 10]), data).true_counts.reshape(4, 4)
    for kind, axis in (("inflows", 0), ("outflows", 1)):
        spec = make_spec(kind, dataset="city", zoning="sectors", start=D0, end=D0 + dt.timedelta(days=7),
                         hours=[7, 10])
        prepared = prepare(spec, data)
        assert prepared.domain.fields == ("zone",)
        assert np.array_equal(prepared.true_counts, flows.sum(axis=axis))  # intrazonal trips count in both
        assert query_sensitivity(spec, data).l1 == data.metadata.bound_trips
    released = ask(service, analyst, "inflows", epsilon="0.25", hours=[7, 10])
    assert len(released.values) == 4 and released.count_unit == "trips"


def test_one_hour_on_one_day_counts_people_with_sensitivity_one(svc) -> None:
    service, planner, _ = svc
    one = ask(service, planner, "presence", hours=[8, 9], end=D0 + dt.timedelta(days=1))
    assert one.sensitivity == 1 and one.count_unit == "people"
    week = ask(service, planner, "presence", hours=[8, 9])
    assert week.sensitivity == 7 and week.count_unit == "person-hours"  # min(L_presence, 7 day-hour slots)
    assert one.error_bound_95 < week.error_bound_95 / 5


def test_whole_windows_and_shapes_are_checked_before_any_charge(svc) -> None:
    service, planner, _ = svc
    with pytest.raises(InvalidInput, match="whole windows"):
        ask(service, planner, "residents", place="home", start=D0 + dt.timedelta(days=1))
    with pytest.raises(InvalidInput, match="leave out hours"):
        make_spec("commuting", dataset="city", zoning="sectors", start=D0, end=TWO_WEEKS, hours=[7, 9])
    with pytest.raises(InvalidInput, match="place"):
        make_spec("residents", dataset="city", zoning="sectors", start=D0, end=TWO_WEEKS)
    spec = make_spec("inflows", dataset="city", zoning="sectors", start=D0, end=D0 + dt.timedelta(days=7))
    with pytest.raises(InvalidInput, match="two-way table"):
        answer(service.context, QueryRequest(spec, epsilon=Epsilon.parse("0.5"), consistent=True), planner)
    assert service.ledger.total_charged("city", 0) == Epsilon.zero()


def test_quote_reuse_and_http(svc, city_root: Path, tmp_path: Path) -> None:
    from api import create_app
    from tests.api.conftest import seed_clients

    root = tmp_path / "data"
    shutil.copytree(city_root, root, ignore=shutil.ignore_patterns("raw"))
    app = create_app({"DPFLOWS_DATA_DIR": str(root), "DPFLOWS_LEDGER_URL": f"sqlite:///{tmp_path}/h.db"})
    keys = seed_clients(app.extensions["dpflows"].service, dataset="city")
    http = app.test_client()
    body = {"dataset": "city", "zoning": "sectors", "start": "2024-03-04", "end": "2024-03-18", "epsilon": 0.25}
    quote = http.post("/v1/quote", json={**body, "query": "residents", "place": "home"}, headers=keys.h("planner"))
    assert quote.status_code == 200 and quote.get_json()["count_unit"] == "people", quote.get_json()
    first = http.post("/v1/residents", json={**body, "place": "home"}, headers=keys.h("planner")).get_json()
    again = http.post("/v1/residents", json={**body, "place": "home"}, headers=keys.h("planner")).get_json()
    assert again["reused"] and again["answer_id"] == first["answer_id"] and again["epsilon_charged"] == 0
    csv = http.post("/v1/commuting?format=csv", json=body, headers=keys.h("planner"))
    assert csv.status_code == 200 and csv.get_data(as_text=True).splitlines()[0] == "home,work,window,count,error_bound_95"
    week = {**body, "end": "2024-03-11"}
    for kind in ("inflows", "outflows"):
        r = http.post(f"/v1/{kind}", json={**week, "case_ref": "c-9"}, headers=keys.h("analyst"))
        assert r.status_code == 200 and [v["zone"] for v in r.get_json()["values"]] == ["NE", "NW", "SE", "SW"]
    refused = http.post("/v1/residents", json={**body, "place": "home", "case_ref": "c-9"}, headers=keys.h("analyst"))
    assert refused.status_code == 403 and refused.get_json()["error"]["field"] == "kind"
    bad = http.post("/v1/commuting", json={**body, "hours": [7, 9]}, headers=keys.h("planner"))
    assert bad.status_code == 422


def test_the_python_client_through_gunicorn(city_root: Path, tmp_path: Path) -> None:
    from dpflows.client import DpflowsClient
    from tests.api.conftest import seed_clients
    from tests.servers import GunicornServer

    root = tmp_path / "data"
    shutil.copytree(city_root, root, ignore=shutil.ignore_patterns("raw"))
    setup = Service(AggregateStore(root), SqliteLedger(tmp_path / "g.db"))
    keys = seed_clients(setup, dataset="city")
    setup.ledger.close()
    with GunicornServer(root, f"sqlite:///{tmp_path}/g.db", workers=2) as srv:
        client = DpflowsClient(srv.url, keys.planner)
        homes = client.residents("city", "sectors", "2024-03-04", "2024-03-18", place="home", epsilon=0.25)
        assert homes.values.columns[:3] == ["zone", "window", "count"] and homes.values.height == 8
        commute = client.commuting("city", "sectors", "2024-03-04", "2024-03-11", epsilon=0.25)
        assert commute.values.height == 16 and set(commute.values["window"]) == {"2024-03-04"}
        arriving = client.inflows("city", "sectors", "2024-03-04", "2024-03-11", hours=(7, 10), epsilon=0.25)
        leaving = client.outflows("city", "sectors", "2024-03-04", "2024-03-11", hours=(7, 10), epsilon=0.25)
        assert arriving.values.height == leaving.values.height == 4
        assert arriving.raw["count_unit"] == "trips" and homes.raw["count_unit"] == "people"


def test_derive_on_the_new_kinds_is_refused_cleanly_or_fresh(svc) -> None:
    """derive=true on kinds without exact-sum derivations releases fresh (never errors, never a foreign answer)."""
    service, planner, _ = svc
    for kind, kw in (("residents", {"place": "home"}), ("commuting", {}), ("inflows", {}), ("outflows", {})):
        end = TWO_WEEKS if kind in ("residents", "commuting") else D0 + dt.timedelta(days=7)
        spec = make_spec(kind, dataset="city", zoning="districts", start=D0, end=end, **kw)
        answer = service.answer(QueryRequest(spec, epsilon=Epsilon.parse("0.1"), derive=True), planner)
        assert answer.derived_from is None and answer.charged == Epsilon.parse("0.1")


def test_coarser_answers_of_the_new_kinds_are_exact_sums(svc) -> None:
    """Residents, commuting and in/outflows on sectors are derived, free, from the same on a zoning nested in the
    sectors (each sector split in three), when a fresh release at the ε asked would be less accurate."""
    service, planner, _ = svc
    data = service.dataset("city")
    sectors = data.zoning("sectors")
    sector_of = {c: sectors.zone_ids[z] for c, z in zip(data.catalog.cell_ids, sectors.zone_of_cell, strict=True)}
    if "thirds" not in data.zonings:
        service.add_zoning("city", "thirds", "cell_id,zone_id\n" + "".join(
            f"{c},{sector_of[c]}-{i % 3}\n" for i, c in enumerate(data.catalog.cell_ids)))
    # a finer answer of the other place, released at a smaller scale, is never the one summed
    service.answer(QueryRequest(make_spec("residents", dataset="city", zoning="thirds", start=D0, end=TWO_WEEKS,
                                          place="work"), epsilon=Epsilon.parse("0.9")), planner)
    for kind, kw in (("residents", {"place": "home"}), ("commuting", {}), ("inflows", {}), ("outflows", {})):
        end = TWO_WEEKS if kind in ("residents", "commuting") else D0 + dt.timedelta(days=7)
        fine = service.answer(QueryRequest(make_spec(kind, dataset="city", zoning="thirds", start=D0, end=end, **kw),
                                           epsilon=Epsilon.parse("0.2")), planner)
        coarse_spec = make_spec(kind, dataset="city", zoning="sectors", start=D0, end=end, **kw)
        coarse = service.answer(QueryRequest(coarse_spec, epsilon=Epsilon.parse("0.001"), derive=True), planner)
        assert coarse.derived_from == fine.answer_id and coarse.charged == Epsilon.zero(), kind
        fields = coarse.key_fields
        want: dict[tuple, int] = {}
        for row in fine.values:
            key = tuple(row[f].rsplit("-", 1)[0] if f in ("zone", "home", "work") else row[f] for f in fields)
            want[key] = want.get(key, 0) + row["count"]
        assert {tuple(r[f] for f in fields): r["count"] for r in coarse.values} == want, kind


@pytest.mark.parametrize("epsilon", ["0.5", "0.1", "0.25", "1"])
def test_exact_privacy_maps_at_the_new_sensitivities(svc, epsilon: str) -> None:
    """OpenDP's own map of the measurement that released each new kind gives at most the ε charged, at exactly the
    sensitivity stated (residents and commuting 1; one hour of presence on one day 1; in/outflows L_trips)."""
    from fractions import Fraction

    from dpflows.budget import Rho
    from dpflows.mechanisms import privacy_loss, rho_loss, scale_for_epsilon, scale_for_rho

    service, _planner, _ = svc
    data = service.dataset("city")
    cases = [(make_spec("residents", dataset="city", zoning="sectors", start=D0, end=TWO_WEEKS, place="home"), 1),
             (make_spec("commuting", dataset="city", zoning="sectors", start=D0, end=TWO_WEEKS), 1),
             (make_spec("presence", dataset="city", zoning="sectors", start=D0, end=D0 + dt.timedelta(days=1),
                        hours=[8, 9]), 1),
             (make_spec("inflows", dataset="city", zoning="sectors", start=D0, end=D0 + dt.timedelta(days=7)),
              data.metadata.bound_trips)]
    eps = Epsilon.parse(epsilon)
    for spec, l1 in cases:
        s = query_sensitivity(spec, data)
        assert s.l1 == l1, spec.kind
        scale = scale_for_epsilon(s.l1, eps)
        assert privacy_loss(s.l1, scale) <= eps.as_fraction()  # exactly, as rationals
        assert privacy_loss(s.l1, math.nextafter(scale, 0.0) * 0.999) > eps.as_fraction()  # and not loose
        rho = Rho(eps.nanos)
        assert rho_loss(s.l2, scale_for_rho(s.l2, rho)) <= Fraction(rho.nanos, 10**9)
