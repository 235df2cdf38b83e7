"""DpflowsClient against the real API in gunicorn: every endpoint, answers, reuse and typed errors."""

from __future__ import annotations

import datetime as dt

import polars as pl
import pytest

from dpflows import client as dc
from tests.ui.conftest import LiveServer

pytestmark = pytest.mark.slow

WEEK = ("2024-03-18", "2024-03-25")  # window 2: the browser tests spend in windows 0 and 1


@pytest.fixture(scope="module")
def planner(live_server: LiveServer) -> dc.DpflowsClient:
    return dc.DpflowsClient(live_server.base_url, live_server.planner_key, timeout=30)


def test_catalog_endpoints(planner: dc.DpflowsClient) -> None:
    [small] = [d for d in planner.datasets() if d.name == "small"]
    assert (small.first_day, small.end_day, small.windows) == (dt.date(2024, 3, 4), dt.date(2024, 4, 1), 4)
    assert small.bounds == {"trips": 5, "presence": 20} and small.privacy_unit == "person-window (7 days)"
    assert {"districts", "sectors", "cell"} <= {z["name"] for z in small.zonings}
    zoning = planner.zoning("small", "districts")
    assert [z["zone_id"] for z in zoning["zones"]] == [f"d{i}" for i in range(8)]
    assert len(zoning["cells"]) == 40 and zoning["zones"][0]["centroid"] == pytest.approx([40.0, -73.98])
    with pytest.raises(dc.NotFoundError) as info:
        planner.zoning("small", "nope")
    assert info.value.status == 404


def test_quote_then_flows_then_reuse(planner: dc.DpflowsClient) -> None:
    before = planner.budget("small")
    quote = planner.quote("flows", "small", "districts", *WEEK, hours=(7, 10), epsilon=0.25)
    assert quote.epsilon == 0.25 and quote.epsilon_charged == 0.25 and not quote.reused
    assert [w.window for w in quote.windows] == [2]
    assert planner.budget("small").windows == before.windows  # a quote spends nothing

    answer = planner.flows("small", "districts", *WEEK, hours=(7, 10), epsilon=0.25)
    assert answer.epsilon_charged == 0.25 and not answer.reused
    assert answer.values.height == 64 and answer.values["count"].dtype == pl.Int64
    spread = answer.values["upper"] - answer.values["count"] - answer.error_bound_95
    assert spread.abs().max() < 1e-9
    assert answer.error_bound_95 == quote.error_bound_95
    assert answer.windows[0].start == dt.date(2024, 3, 18)
    after = {w.window: w.budget_remaining for w in planner.budget("small").windows}
    assert after[2] == pytest.approx(0.75)

    again = planner.flows("small", "districts", *WEEK, hours=[7, 10], epsilon="0.25")
    assert again.reused and again.epsilon_charged == 0 and again.answer_id == answer.answer_id
    assert again.values.equals(answer.values)
    assert planner.quote("flows", "small", "districts", *WEEK, hours=(7, 10), epsilon=0.25).reused

    doc = answer.to_geojson()
    assert len(doc["features"]) == 64 and {"count", "lower", "upper"} <= set(doc["features"][0]["properties"])


def test_presence_patterns_and_max_error(planner: dc.DpflowsClient) -> None:
    presence = planner.presence("small", "sectors", *WEEK, hours=(8, 9), max_error=400)
    assert presence.error_bound_95 <= 400 and presence.values.columns[:2] == ["zone", "hour"]
    assert presence.to_geojson()["features"][0]["geometry"]["type"] in ("Point", "Polygon", "MultiPolygon")
    patterns = planner.patterns("small", "sectors", *WEEK, measure="trips", zone="s0", weekdays=[5, 6],
                                epsilon=0.05, clamp_negative=True)
    assert set(patterns.values["weekday"].unique()) == {5, 6} and patterns.values["count"].min() >= 0
    assert patterns.postprocessing
    with pytest.raises(ValueError, match="no map"):
        patterns.to_geojson()


def test_typed_errors_charge_nothing(live_server: LiveServer, planner: dc.DpflowsClient) -> None:
    analyst = dc.DpflowsClient(live_server.base_url, live_server.analyst_key)
    before = planner.budget("small").windows
    with pytest.raises(dc.AuthenticationError):
        dc.DpflowsClient(live_server.base_url, "dpf_wrong").budget("small")
    with pytest.raises(dc.ForbiddenError) as info:
        analyst.presence("small", "sectors", *WEEK, epsilon=0.1)
    assert info.value.code == "forbidden"
    with pytest.raises(dc.ForbiddenError) as info:
        planner.flows("small", "districts", *WEEK, epsilon=1.5)
    assert info.value.field == "epsilon"
    with pytest.raises(dc.InvalidInputError) as info:
        planner.flows("small", "districts", "2024-03-25", "2024-03-18", epsilon=0.1)
    assert info.value.field == "end"
    with pytest.raises(dc.NotFoundError):
        planner.flows("nope", "districts", *WEEK, epsilon=0.1)
    planner.flows("small", "sectors", "2024-03-25", "2024-04-01", epsilon=1)  # window 3 now empty
    with pytest.raises(dc.BudgetExceededError) as info:
        planner.flows("small", "districts", "2024-03-25", "2024-04-01", epsilon=0.01)
    assert info.value.code == "budget_exceeded"
    after = {w.window: w.budget_remaining for w in planner.budget("small").windows}
    assert [after[w.window] for w in before if w.window != 3] == [w.budget_remaining for w in before if w.window != 3]
    assert after[3] == 0


def test_admin_endpoints(live_server: LiveServer) -> None:
    admin = dc.DpflowsClient(live_server.base_url, live_server.admin_key)
    created = admin.create_client("planner-from-client", "planner")
    assert created.client.role == "planner" and created.api_key.startswith("dpf_")
    listed = {c.name: c for c in admin.list_clients()}
    assert [k.prefix for k in listed["planner-from-client"].keys] == [created.prefix]
    admin.set_cap("small", 0.5, client_id=created.client.id)
    # the population's global cap, named by the population itself (the one the live server set: ρ 5)
    admin.set_cap(None, rho=5, population="default")
    populations = {d.name: d.population for d in admin.datasets()}
    assert {populations[n] for n in ("small", "smallp", "smallz")} == {"default"} and populations["sparse"] == "sparse"
    newbie = dc.DpflowsClient(live_server.base_url, created.api_key)
    windows = newbie.budget("small").windows
    assert {(w.cap, w.spent, w.budget_remaining) for w in windows} == {(0.5, 0.0, 0.5)}

    second = admin.issue_key(created.client.id)
    assert second.api_key != created.api_key and second.client.id == created.client.id
    dc.DpflowsClient(live_server.base_url, second.api_key).budget("small")
    revoked = admin.revoke_key(admin.key_id(second))
    assert revoked.revoked_at is not None
    with pytest.raises(dc.AuthenticationError):
        dc.DpflowsClient(live_server.base_url, second.api_key).budget("small")
    newbie.budget("small")  # the first key still works

    csv_text = "cell_id,zone_id\n" + "".join(f"c{i:03d},h{i // 20}\n" for i in range(40))
    square = [[-74.01, 39.99], [-73.92, 39.99], [-73.92, 40.05], [-74.01, 40.05], [-74.01, 39.99]]
    geometry = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"zone_id": "h0"}, "geometry": {"type": "Polygon", "coordinates": [square]}},
    ]}
    admin.add_zoning("small", "halves", csv_text, coarse=True, min_cells_per_zone=20, geometry=geometry)
    assert newbie.zoning("small", "halves")["coarse"] is True
    presence = newbie.presence("small", "halves", "2024-03-18", "2024-03-19", hours=(8, 9), epsilon=0.1)
    kinds = {f["properties"]["zone"]: f["geometry"]["type"] for f in presence.to_geojson()["features"]}
    assert kinds == {"h0": "Polygon", "h1": "Point"}  # h1 has no polygon: its centroid
    with pytest.raises(dc.ConflictError):
        admin.add_zoning("small", "halves", csv_text)
    polygons = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"WARD": "all"}, "geometry": {"type": "Polygon", "coordinates": [square]}}]}
    added = admin.add_zoning_from_polygons("small", "one-ward", polygons, "WARD")
    assert added["zones"] == 1 and added["method"] == "geojson"
    assert added["assigned_to_nearest"] == [] and added["empty_polygons"] == []  # the square covers every cell
    assert admin.add_grid_zoning("small", "grid-1km", 1.0)["zones"] == 30
    assert newbie.zoning("small", "grid-1km")["geometry"]["features"][0]["properties"] == {"zone_id": "G0000_0000"}
    with pytest.raises(dc.ForbiddenError):
        newbie.list_clients()
    rows = admin.audit_all(page=7)
    actions = [row["action"] for row in rows]
    assert "admin.create_client" in actions and "query.flows" in actions
    assert [row["id"] for row in rows] == sorted({row["id"] for row in rows})
    assert all("values" not in (row.get("query") or {}) for row in rows)


def test_geojson_format_on_query_endpoints(live_server: LiveServer, planner: dc.DpflowsClient) -> None:
    body = {"dataset": "small", "zoning": "districts", "start": WEEK[0], "end": WEEK[1], "hours": [7, 10],
            "epsilon": 0.25}
    doc = planner.request("POST", "/v1/flows?format=geojson", body=body)
    assert doc["type"] == "FeatureCollection" and len(doc["features"]) == 64
    assert doc["dpflows"]["reused"] is True  # the same query as test_quote_then_flows_then_reuse: free
    line = next(f for f in doc["features"] if f["geometry"]["type"] == "LineString")
    assert {"origin", "destination", "count", "error_bound_95", "lower", "upper"} <= set(line["properties"])


def test_sparse_answers_through_the_client(live_server: LiveServer, planner: dc.DpflowsClient) -> None:
    """On the approximate-DP dataset 'sparse': the quote and the answer say sparse, the threshold and δ; the
    frame holds released keys only; the budget shows δ; an admin sets an (ε, δ) cap."""
    quote = planner.quote("flows", "sparse", "cell", *WEEK, epsilon=1, delta=1e-7)
    assert (quote.release, quote.threshold, quote.delta, quote.delta_charged) == ("sparse", 90, 1e-7, 1e-7)
    answer = planner.flows("sparse", "cell", *WEEK, epsilon=1, delta=1e-7)
    assert answer.sparse and answer.threshold == 90 and answer.delta_charged == 1e-7
    assert answer.mechanism.threshold == 90 and answer.mechanism.contribution == {"l0": 5, "l1": 5, "linf": 5}
    assert answer.below_threshold_interval == [0.0, 90 + answer.error_bound_95]
    assert answer.values.height == 0 or answer.values["count"].min() >= 90  # window 2 holds no heavy pair
    assert answer.to_geojson()["dpflows"]["threshold"] == 90
    window = next(w for w in planner.budget("sparse").windows if w.window == 2)
    assert (window.delta_spent, window.delta_remaining) == (1e-7, 9e-7)
    dense = planner.flows("sparse", "districts", *WEEK, epsilon=0.5, delta=1e-7)
    assert not dense.sparse and dense.delta_charged == 0 and dense.values.height == 64
    admin = dc.DpflowsClient(live_server.base_url, live_server.admin_key, timeout=30)
    admin.set_cap("sparse", 2, client_id=_planner_id(admin), delta=2e-6, window=3)
    assert next(w for w in planner.budget("sparse").windows if w.window == 3).delta_cap == 2e-6


def _planner_id(admin: dc.DpflowsClient) -> int:
    return next(c.id for c in admin.list_clients() if c.name == "planner-ui")
