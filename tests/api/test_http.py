"""The HTTP contract through Flask's test client over real storage: shapes, roles, charges, reuse."""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from openapi_spec_validator import validate

from api import create_app
from tests.api.conftest import FLOWS, Keys, seed_clients


def spent(client: FlaskClient, keys: Keys, role: str = "planner", window: int = 0) -> float:
    r = client.get("/v1/budget?dataset=small", headers=keys.h(role))
    assert r.status_code == 200
    return r.json["windows"][window]["spent"]


def error(r) -> dict:
    assert set(r.json) == {"error"}, r.json
    assert {"code", "message"} <= set(r.json["error"])
    return r.json["error"]


def test_answer_carries_cost_budget_unit_mechanism_and_error(client: FlaskClient, keys: Keys) -> None:
    r = client.post("/v1/flows", json=FLOWS, headers=keys.h("planner"))
    assert r.status_code == 200
    a = r.json
    assert a["epsilon_charged"] == 0.25 and a["budget_remaining"] == 0.75 and a["reused"] is False
    assert a["privacy_unit"] == "person-window (7 days)"
    assert a["mechanism"] == {"name": "discrete_laplace", "noise_scale": 20.0, "sensitivity": 5}
    assert a["error_bound_95"] > 0 and a["windows"][0]["window"] == 0
    assert sorted((v["origin"], v["destination"]) for v in a["values"]) == [
        ("s0", "s0"), ("s0", "s1"), ("s1", "s0"), ("s1", "s1")]
    assert spent(client, keys) == 0.25


def test_reuse_is_identical_and_free(client: FlaskClient, keys: Keys) -> None:
    first = client.post("/v1/flows", json=FLOWS, headers=keys.h("planner")).json
    again = client.post("/v1/flows", json={**FLOWS, "weekdays": [6, 5, 4, 3, 2, 1, 0]}, headers=keys.h("planner")).json
    assert again["reused"] is True and again["epsilon_charged"] == 0
    assert again["values"] == first["values"] and again["answer_id"] == first["answer_id"]
    assert spent(client, keys) == 0.25


def test_each_window_is_charged(client: FlaskClient, keys: Keys) -> None:
    r = client.post("/v1/presence", json={**FLOWS, "zoning": "districts", "end": "2024-03-18", "hours": [7, 10]},
                    headers=keys.h("planner"))
    assert r.status_code == 200 and len(r.json["values"]) == 8 * 3
    assert [w["window"] for w in r.json["windows"]] == [0, 1]
    assert spent(client, keys, window=0) == spent(client, keys, window=1) == 0.25


def test_cap_is_reachable_and_then_refused_without_charge(client: FlaskClient, keys: Keys) -> None:
    for h in range(4):
        assert client.post("/v1/flows", json={**FLOWS, "hours": [h, h + 1]}, headers=keys.h("planner")).status_code == 200
    r = client.post("/v1/flows", json={**FLOWS, "hours": [9, 10]}, headers=keys.h("planner"))
    assert r.status_code == 409 and error(r)["code"] == "budget_exceeded"
    assert "window 0" in error(r)["message"]
    assert spent(client, keys) == 1.0


@pytest.mark.parametrize(
    ("patch", "field"),
    [({"epsilon": -1}, "epsilon"), ({"epsilon": 0}, "epsilon"), ({"epsilon": "abc"}, "epsilon"),
     ({"max_error": 10}, "epsilon"), ({"start": "2024-13-01"}, "start"), ({"end": "2024-03-04"}, "end"),
     ({"hours": [3, 30]}, "hours"), ({"hours": [1, 2, 3]}, "hours"), ({"weekdays": [9]}, "weekdays"),
     ({"zoning": "nowhere"}, "zoning"), ({"start": "2020-01-01"}, "start"), ({"unknown": 1}, "unknown"),
     ({"confidence": 1.5}, "confidence"), ({"epsilon": 1e308}, "epsilon")],
)
def test_bad_input_is_a_clear_4xx_and_charges_nothing(client: FlaskClient, keys: Keys, patch: dict, field: str) -> None:
    r = client.post("/v1/flows", json={**FLOWS, **patch}, headers=keys.h("planner"))
    assert r.status_code in (403, 404, 422), r.json
    body = error(r)
    assert body.get("field") == field, body
    assert spent(client, keys) == 0


def test_nan_and_infinity_literals_are_rejected(client: FlaskClient, keys: Keys) -> None:
    for literal in ("NaN", "Infinity", "-Infinity"):
        data = '{"dataset":"small","zoning":"sectors","start":"2024-03-04","end":"2024-03-11","epsilon":' + literal + "}"
        r = client.post("/v1/flows", data=data, headers={**keys.h("planner"), "Content-Type": "application/json"})
        assert r.status_code == 422 and error(r)["field"] == "epsilon"
    assert spent(client, keys) == 0


def test_malformed_and_oversized_bodies(client: FlaskClient, keys: Keys) -> None:
    r = client.post("/v1/flows", data="{nope", headers={**keys.h("planner"), "Content-Type": "application/json"})
    assert r.status_code == 400 and error(r)["code"] == "bad_request"
    r = client.post("/v1/flows", data=b"[" * 2_000_000, headers={**keys.h("planner"), "Content-Type": "application/json"})
    assert r.status_code == 413 and error(r)["code"] == "payload_too_large"
    deep = "[" * 5000 + "]" * 5000
    r = client.post("/v1/flows", data=deep, headers={**keys.h("planner"), "Content-Type": "application/json"})
    assert r.status_code == 400 and error(r)["code"] == "bad_request"


def test_authentication(client: FlaskClient, keys: Keys, app: Flask) -> None:
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic abc"},
                    {"Authorization": f"Bearer {keys.planner}x"}):
        r = client.post("/v1/flows", json=FLOWS, headers=headers)
        assert r.status_code == 401 and error(r)["code"] == "unauthenticated"
        assert r.headers["WWW-Authenticate"].startswith("Bearer")
    listing = client.get("/v1/admin/clients", headers=keys.h("admin")).json
    [planner] = [c for c in listing if c["name"] == "planner"]
    assert planner["keys"][0]["prefix"].startswith("dpf_") and "key_hash" not in planner["keys"][0]
    assert client.delete(f"/v1/admin/keys/{planner['keys'][0]['id']}", headers=keys.h("admin")).status_code == 200
    assert client.post("/v1/flows", json=FLOWS, headers=keys.h("planner")).status_code == 401


@pytest.mark.parametrize(
    ("role", "path", "body", "field"),
    [("analyst", "/v1/presence", FLOWS, "kind"), ("analyst", "/v1/flows", {**FLOWS, "zoning": "districts"}, "zoning"),
     ("analyst", "/v1/flows", {**FLOWS, "zoning": "cell"}, "zoning"),
     ("analyst", "/v1/flows", {**FLOWS, "epsilon": 0.3}, "epsilon"),
     ("planner", "/v1/flows", {**FLOWS, "epsilon": 1.01}, "epsilon"), ("admin", "/v1/flows", FLOWS, "role"),
     ("planner", "/v1/admin/clients", None, "role"), ("analyst", "/v1/admin/audit", None, "role")],
)
def test_roles_are_refused_with_403_naming_the_rule(client: FlaskClient, keys: Keys, role, path, body, field) -> None:
    r = client.post(path, json=body, headers=keys.h(role)) if body is not None else client.get(path, headers=keys.h(role))
    assert r.status_code == 403, r.json
    assert error(r)["code"] == "forbidden" and error(r)["field"] == field


def test_analyst_gets_coarse_flows(client: FlaskClient, keys: Keys) -> None:
    r = client.post("/v1/flows", json=FLOWS, headers=keys.h("analyst"))
    assert r.status_code == 200 and r.json["budget_remaining"] == 0.25


def test_max_error_and_quote(client: FlaskClient, keys: Keys) -> None:
    body = {k: v for k, v in FLOWS.items() if k != "epsilon"} | {"max_error": 80}
    q = client.post("/v1/quote", json={**body, "query": "flows"}, headers=keys.h("planner"))
    assert q.status_code == 200 and q.json["reused"] is False and q.json["error_bound_95"] <= 80
    assert spent(client, keys) == 0
    a = client.post("/v1/flows", json=body, headers=keys.h("planner")).json
    assert a["epsilon_charged"] == q.json["epsilon"] and a["epsilon_derived_from_max_error"] is True
    assert client.post("/v1/quote", json={**body, "query": "flows"}, headers=keys.h("planner")).json["reused"] is True


def test_csv_output(client: FlaskClient, keys: Keys) -> None:
    r = client.post("/v1/flows", json=FLOWS, headers={**keys.h("planner"), "Accept": "text/csv"})
    assert r.status_code == 200 and r.mimetype == "text/csv"
    lines = r.data.decode().splitlines()
    assert lines[0] == "origin,destination,count,error_bound_95" and len(lines) == 5
    assert r.headers["X-Dpflows-Epsilon-Charged"] == "0.25"
    assert r.headers["X-Dpflows-Privacy-Unit"] == "person-window (7 days)"


def test_audit_rows_for_every_outcome_without_values(client: FlaskClient, keys: Keys) -> None:
    ok = client.post("/v1/flows", json=FLOWS, headers=keys.h("planner")).json
    client.post("/v1/flows", json=FLOWS, headers=keys.h("planner"))
    client.post("/v1/flows", json={**FLOWS, "epsilon": 5}, headers=keys.h("planner"))
    client.post("/v1/flows", json={**FLOWS, "zoning": "nowhere"}, headers=keys.h("planner"))
    for h in range(4):  # 0.25 already spent: three more reach the cap, the fourth is refused
        client.post("/v1/flows", json={**FLOWS, "hours": [h, h + 1]}, headers=keys.h("planner"))
    page = client.get("/v1/admin/audit?limit=1000", headers=keys.h("admin")).json
    outcomes = [e["outcome"] for e in page["entries"] if e["action"] == "query.flows"]
    assert outcomes == ["released", "reused", "forbidden", "not_found", "released", "released", "released",
                        "budget_exceeded"]
    text = str(page)
    assert str(ok["values"][0]["count"]) not in [str(e.get("query")) for e in page["entries"]]
    assert "count" not in text
    first = client.get("/v1/admin/audit?limit=2", headers=keys.h("admin")).json
    rest = client.get(f"/v1/admin/audit?after_id={first['next_after_id']}&limit=1000", headers=keys.h("admin")).json
    assert [e["id"] for e in first["entries"] + rest["entries"]] == [e["id"] for e in page["entries"]]


def test_datasets_and_zonings_are_public_to_clients(client: FlaskClient, keys: Keys) -> None:
    [ds] = client.get("/v1/datasets", headers=keys.h("analyst")).json
    assert ds["name"] == "small" and ds["windows"] == 4 and ds["bounds"] == {"trips": 5, "presence": 20}
    assert ds["population"] == "default"  # ingested without --population: the data root's one population
    z = client.get("/v1/datasets/small/zonings/sectors", headers=keys.h("analyst")).json
    assert z["coarse"] is True and [zz["cells"] for zz in z["zones"]] == [20, 20] and len(z["cells"]) == 40
    assert client.get("/v1/datasets/small/zonings/none", headers=keys.h("analyst")).status_code == 404


def test_admin_loads_a_zoning(data_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    shutil.copytree(data_root, root)
    app = create_app({"DPFLOWS_DATA_DIR": str(root), "DPFLOWS_LEDGER_URL": f"sqlite:///{tmp_path}/l.db"})
    keys = seed_clients(app.extensions["dpflows"].service)
    c = app.test_client()
    csv = "cell_id,zone_id\n" + "".join(f"c{i:03d},{'north' if i < 20 else 'south'}\n" for i in range(40))
    r = c.post("/v1/admin/datasets/small/zonings", json={"name": "halves", "csv": csv, "coarse": True,
                                                        "min_cells_per_zone": 20}, headers=keys.h("admin"))
    assert r.status_code == 201 and r.json == {"name": "halves", "zones": 2, "coarse": True, "method": "csv",
                                               "assigned_to_nearest": [], "empty_polygons": []}
    assert c.post("/v1/flows", json={**FLOWS, "zoning": "halves"}, headers=keys.h("analyst")).status_code == 200
    r = c.post("/v1/admin/datasets/small/zonings", json={"name": "halves", "csv": csv}, headers=keys.h("admin"))
    assert r.status_code == 409
    bad = csv.replace("c039,south\n", "")
    r = c.post("/v1/admin/datasets/small/zonings", json={"name": "partial", "csv": bad}, headers=keys.h("admin"))
    assert r.status_code == 422 and "'c039'" in error(r)["message"]
    r = c.post("/v1/admin/datasets/small/zonings", json={"name": "tiny", "csv": csv, "coarse": True,
                                                        "min_cells_per_zone": 50}, headers=keys.h("admin"))
    assert r.status_code == 422 and error(r)["field"] == "coarse"


def test_admin_loads_a_zoning_from_polygons_or_as_a_grid(data_root: Path, tmp_path: Path) -> None:
    from tests.test_zoning_sources import WARDS

    root = tmp_path / "root"
    shutil.copytree(data_root, root)
    app = create_app({"DPFLOWS_DATA_DIR": str(root), "DPFLOWS_LEDGER_URL": f"sqlite:///{tmp_path}/l.db",
                      "DPFLOWS_MAX_UPLOAD_BYTES": str(2 * 1024 * 1024)})
    keys = seed_clients(app.extensions["dpflows"].service)
    c = app.test_client()
    url = "/v1/admin/datasets/small/zonings"
    r = c.post(url, json={"name": "wards", "geojson": WARDS, "id_field": "WARD"}, headers=keys.h("admin"))
    assert r.status_code == 201, r.json
    assert (r.json["zones"], r.json["method"], r.json["empty_polygons"]) == (2, "geojson", ["far"])
    nearest = {n["cell_id"]: n for n in r.json["assigned_to_nearest"]}
    assert len(nearest) == 11 and nearest["c007"] == {"cell_id": "c007", "zone_id": "east", "distance_km": 0.426}
    z = c.get("/v1/datasets/small/zonings/wards", headers=keys.h("planner")).json
    assert [f["properties"]["zone_id"] for f in z["geometry"]["features"]] == ["west", "east"]
    assert c.post("/v1/flows", json={**FLOWS, "zoning": "wards", "epsilon": 0.1},
                  headers=keys.h("planner")).status_code == 200

    r = c.post(url, json={"name": "grid", "grid_km": 5, "coarse": True}, headers=keys.h("admin"))
    assert r.status_code == 201 and r.json == {"name": "grid", "zones": 2, "coarse": True, "method": "grid",
                                               "assigned_to_nearest": [], "empty_polygons": []}
    # the analyst may query the coarse grid; its zones are the squares holding cells
    assert c.post("/v1/flows", json={**FLOWS, "zoning": "grid"}, headers=keys.h("analyst")).status_code == 200

    r = c.post(url, json={"name": "w2", "geojson": WARDS}, headers=keys.h("admin"))
    assert r.status_code == 422 and error(r)["field"] == "id_field" and "id_field is required" in error(r)["message"]
    r = c.post(url, json={"name": "w2", "geojson": WARDS, "id_field": "GEOID"}, headers=keys.h("admin"))
    assert r.status_code == 422 and error(r)["message"].startswith("geojson: 3 of 3 features have no value")
    r = c.post(url, json={"name": "w2"}, headers=keys.h("admin"))
    assert r.status_code == 422
    r = c.post(url, json={"name": "w2", "grid_km": 0}, headers=keys.h("admin"))
    assert r.status_code == 422
    assert c.post(url, json={"name": "w2", "grid_km": 1}, headers=keys.h("planner")).status_code == 403

    # polygon files run to megabytes: an admin may send up to DPFLOWS_MAX_UPLOAD_BYTES here (2 MiB in
    # this app), every other body stays at 1 MiB; a non-admin is refused before its body is read
    def padded(size: int) -> dict:
        pad = {"type": "Feature", "properties": {"WARD": "pad", "pad": "x" * size},
               "geometry": WARDS["features"][2]["geometry"]}
        return {"name": "bigwards", "geojson": {**WARDS, "features": [*WARDS["features"], pad]}, "id_field": "WARD"}

    assert c.post(url, json=padded(1_500_000), headers=keys.h("planner")).status_code == 403
    assert c.post("/v1/flows", json={**FLOWS, "pad": "x" * 1_500_000}, headers=keys.h("planner")).status_code == 413
    r = c.post(url, json=padded(2_500_000), headers=keys.h("admin"))
    assert r.status_code == 413
    r = c.post(url, json=padded(1_500_000), headers=keys.h("admin"))
    assert r.status_code == 201 and r.json["empty_polygons"] == ["far", "pad"]


def test_admin_sets_caps_and_issues_keys(client: FlaskClient, keys: Keys) -> None:
    r = client.put("/v1/admin/caps", json={"dataset": "small", "epsilon": 0.3, "client_id": keys.planner_id,
                                           "window": 1}, headers=keys.h("admin"))
    assert r.status_code == 200
    windows = client.get("/v1/budget?dataset=small", headers=keys.h("planner")).json["windows"]
    assert [w["cap"] for w in windows] == [1.0, 0.3, 1.0, 1.0]
    r = client.put("/v1/admin/caps", json={"dataset": "small", "epsilon": 1, "window": 99}, headers=keys.h("admin"))
    assert r.status_code == 422 and error(r)["field"] == "window"
    r = client.post(f"/v1/admin/clients/{keys.planner_id}/keys", headers=keys.h("admin"))
    assert r.status_code == 201
    new_key = r.json["api_key"]
    assert client.get("/v1/budget?dataset=small", headers={"Authorization": f"Bearer {new_key}"}).status_code == 200
    r = client.post("/v1/admin/clients", json={"name": "planner", "role": "planner"}, headers=keys.h("admin"))
    assert r.status_code == 409
    r = client.post("/v1/admin/clients", json={"name": "x", "role": "root"}, headers=keys.h("admin"))
    assert r.status_code == 422 and error(r)["field"] == "role"


def test_rate_limit_gives_429_with_retry_after(data_root: Path, tmp_path: Path) -> None:
    app = create_app({"DPFLOWS_DATA_DIR": str(data_root), "DPFLOWS_LEDGER_URL": f"sqlite:///{tmp_path}/l.db",
                      "DPFLOWS_RATE_LIMIT": "1", "DPFLOWS_RATE_BURST": "3"})
    keys = seed_clients(app.extensions["dpflows"].service)
    c = app.test_client()
    codes = [c.get("/v1/datasets", headers=keys.h("planner")).status_code for _ in range(5)]
    assert codes[:3] == [200, 200, 200] and codes[-1] == 429
    r = c.get("/v1/datasets", headers=keys.h("planner"))
    assert error(r)["code"] == "rate_limited" and int(r.headers["Retry-After"]) >= 1


def test_health_and_unknown_routes(client: FlaskClient) -> None:
    assert client.get("/healthz").json["status"] == "ok"
    assert client.get("/readyz").json["checks"]["ledger"] == "ok"
    assert error(client.get("/v2/flows"))["code"] == "not_found"
    assert error(client.delete("/v1/flows"))["code"] == "method_not_allowed"


def test_openapi_document_validates_and_lists_every_route(client: FlaskClient, app: Flask) -> None:
    spec = client.get("/openapi.json").json
    validate(spec)
    documented = {(path, m.upper()) for path, ops in spec["paths"].items() for m in ops}
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static" or rule.endpoint.startswith(("api-docs", "planner.")):
            continue  # static files, the docs UI and the planner page are not API operations
        path = re.sub(r"<(?:\w+(?:\([^)]*\))?:)?(\w+)>", r"{\1}", rule.rule)  # <int(max=..):id> -> {id}
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            assert (path, method) in documented, (path, method)
    assert client.get("/docs").status_code == 200
    with client.get("/static/vendor/redoc.standalone.js") as r:
        assert r.status_code == 200


def test_readiness_fails_with_503_when_the_data_root_is_unreadable(tmp_path: Path) -> None:
    app = create_app({"DPFLOWS_DATA_DIR": str(tmp_path / "missing"), "DPFLOWS_LEDGER_URL": f"sqlite:///{tmp_path}/l.db"})
    c = app.test_client()
    assert c.get("/healthz").status_code == 200
    r = c.get("/readyz")
    assert r.status_code == 503 and error(r)["code"] == "data_unavailable"
    assert str(tmp_path) not in r.get_data(as_text=True)  # no server path in a public response


def test_request_log_has_route_status_and_epsilon_but_no_key_or_value(client: FlaskClient, keys: Keys) -> None:
    records: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Collect()
    logger = logging.getLogger("dpflows.api.request")
    logger.addHandler(handler)
    try:
        answer = client.post("/v1/flows", json=FLOWS, headers=keys.h("planner")).json
        client.post("/v1/flows", json={**FLOWS, "epsilon": 5}, headers=keys.h("planner"))
    finally:
        logger.removeHandler(handler)
    ok, refused = (r.fields for r in records)  # type: ignore[attr-defined]
    assert ok["route"] == "/v1/flows" and ok["status"] == 200 and ok["epsilon_charged"] == "0.25"
    assert ok["client_id"] == keys.planner_id and ok["request_id"] and ok["ms"] >= 0
    assert refused["status"] == 403 and refused["error"] == "forbidden" and refused["epsilon_charged"] is None
    text = json.dumps([r.fields for r in records]) + " ".join(r.getMessage() for r in records)  # type: ignore[attr-defined]
    assert keys.planner not in text and answer["answer_id"] not in text and "count" not in text


def test_schema_errors_name_the_field_and_the_value_sent(client: FlaskClient, keys: Keys) -> None:
    r = client.post("/v1/flows", json={**FLOWS, "epsilon": -1}, headers=keys.h("planner"))
    assert r.status_code == 422 and error(r)["message"].startswith("epsilon=-1: Must be greater than 0")
    r = client.post("/v1/flows", json={**FLOWS, "start": "2024-13-01"}, headers=keys.h("planner"))
    assert 'start="2024-13-01"' in error(r)["message"]
    r = client.post("/v1/flows", json={**FLOWS, "colour": "x" * 500}, headers=keys.h("planner"))
    assert error(r)["field"] == "colour" and "Unknown field" in error(r)["message"] and len(error(r)["message"]) < 200
    r = client.get("/v1/admin/audit?limit=5000", headers=keys.h("admin"))
    assert r.status_code == 422 and error(r)["field"] == "limit" and 'limit="5000"' in error(r)["message"]


def test_unexpected_exception_is_a_generic_500_without_its_text(data_root: Path, tmp_path: Path) -> None:
    app = create_app({"DPFLOWS_DATA_DIR": str(data_root), "DPFLOWS_LEDGER_URL": f"sqlite:///{tmp_path}/l.db"})

    @app.get("/boom")
    def boom() -> None:
        raise ValueError("person p-4711 made 987654321 trips")

    records: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Collect()
    logging.getLogger("dpflows").addHandler(handler)
    try:
        r = app.test_client().get("/boom")
    finally:
        logging.getLogger("dpflows").removeHandler(handler)
    assert r.status_code == 500 and error(r)["code"] == "internal_error"
    logged = " ".join(rec.getMessage() + json.dumps(getattr(rec, "fields", {})) for rec in records)
    assert "ValueError" in logged
    for secret in ("p-4711", "987654321"):
        assert secret not in r.get_data(as_text=True) and secret not in logged


@pytest.mark.parametrize(("method", "path", "body", "status"), [
    ("POST", "/v1/admin/clients/1959917176511795298304/keys", None, 404),
    ("DELETE", "/v1/admin/keys/1959917176511795298304", None, 404),
    ("PUT", "/v1/admin/caps", {"dataset": "small", "epsilon": 1, "client_id": 2**64}, 422),
    ("GET", "/v1/admin/audit?after_id=18446744073709551616", None, 422),
])
def test_ids_beyond_sqlite_integers_are_a_4xx_not_a_500(client: FlaskClient, keys: Keys, method: str, path: str,
                                                        body: dict | None, status: int) -> None:
    """Found by schemathesis: an id above 2**63-1 reached SQLite and raised OverflowError (a 500)."""
    r = client.open(path, method=method, json=body, headers=keys.h("admin"))
    assert r.status_code == status, r.json
    assert error(r)["code"] in ("not_found", "invalid_input")
