"""The OpenAPI document never drifts from the service: real requests and responses of every
endpoint, each output format and the error shape included, validated by openapi-core."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from openapi_core import Config, OpenAPI
from openapi_core.contrib.werkzeug import WerkzeugOpenAPIRequest, WerkzeugOpenAPIResponse
from werkzeug.test import EnvironBuilder

from api import create_app
from tests.api.conftest import FLOWS, Keys

WEEK = {"dataset": "small", "start": "2024-03-04", "end": "2024-03-11"}


@pytest.fixture
def app(data_root: Path, tmp_path: Path) -> Flask:
    """A copy of the data root: this test uploads a zoning, and the shared root must stay as it is."""
    root = tmp_path / "data"
    shutil.copytree(data_root, root)
    return create_app({"DPFLOWS_DATA_DIR": str(root), "DPFLOWS_LEDGER_URL": f"sqlite:///{tmp_path}/ledger.db",
                       "TESTING": True})


@pytest.fixture
def spec(client: FlaskClient) -> OpenAPI:
    # GeoJSON is JSON (RFC 7946): tell the validator how to read it, as it reads application/json
    config = Config(extra_media_type_deserializers={"application/geo+json": json.loads})
    return OpenAPI.from_dict(client.get("/openapi.json").get_json(), config=config)


def exchange(app: Flask, spec: OpenAPI, method: str, path: str, *, key: str | None = None,
             body: Any = None, query: dict[str, str] | None = None, accept: str | None = None,
             valid_request: bool = True) -> Any:
    """Send one real request through the app; validate it (unless meant to be invalid) and its response."""
    headers = {}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    if accept is not None:
        headers["Accept"] = accept

    def build() -> EnvironBuilder:
        return EnvironBuilder(path=path, method=method, json=body, query_string=query, headers=headers,
                              base_url="http://localhost/")

    request = build().get_request()
    response = app.test_client().open(build())
    if valid_request:
        spec.validate_request(WerkzeugOpenAPIRequest(request))
    spec.validate_response(WerkzeugOpenAPIRequest(build().get_request()), WerkzeugOpenAPIResponse(response))
    return response


def test_every_query_endpoint_in_every_format(app: Flask, spec: OpenAPI, keys: Keys) -> None:
    bodies = {
        "/v1/flows": FLOWS,
        "/v1/presence": {**WEEK, "zoning": "districts", "hours": [7, 10], "epsilon": 0.25},
        "/v1/patterns": {**WEEK, "zoning": "districts", "measure": "presence", "epsilon": 0.25},
        "/v1/inflows": {**WEEK, "zoning": "districts", "hours": [7, 10], "epsilon": 0.1},
    }
    for path, body in bodies.items():
        for fmt in ("json", "csv", "geojson"):
            if fmt == "geojson" and path == "/v1/patterns":
                continue
            response = exchange(app, spec, "POST", path, key=keys.planner, body=body, query={"format": fmt})
            assert response.status_code == 200, response.get_data(as_text=True)
        response = exchange(app, spec, "POST", path, key=keys.planner, body=body, accept="text/csv")
        assert response.mimetype == "text/csv"
    quote = exchange(app, spec, "POST", "/v1/quote", key=keys.planner, body={**FLOWS, "query": "flows"})
    assert quote.status_code == 200
    change = exchange(app, spec, "POST", "/v1/relative-change", key=keys.planner,
                      body={**WEEK, "zoning": "districts", "hours": [7, 10], "epsilon": 0.05,
                            "baseline_start": "2024-03-11", "baseline_end": "2024-03-18"})
    assert change.status_code == 200, change.get_data(as_text=True)


def test_account_admin_and_health_endpoints(app: Flask, spec: OpenAPI, keys: Keys) -> None:
    assert exchange(app, spec, "GET", "/v1/budget", key=keys.planner, query={"dataset": "small"}).status_code == 200
    assert exchange(app, spec, "GET", "/v1/datasets", key=keys.planner).status_code == 200
    assert exchange(app, spec, "GET", "/v1/datasets/small/zonings/districts", key=keys.planner).status_code == 200
    created = exchange(app, spec, "POST", "/v1/admin/clients", key=keys.admin,
                       body={"name": "bus-company", "role": "planner"})
    assert created.status_code == 201
    client_id = created.get_json()["client"]["id"]
    assert exchange(app, spec, "GET", "/v1/admin/clients", key=keys.admin).status_code == 200
    issued = exchange(app, spec, "POST", f"/v1/admin/clients/{client_id}/keys", key=keys.admin)
    assert issued.status_code == 201
    assert exchange(app, spec, "PUT", "/v1/admin/caps", key=keys.admin,
                    body={"dataset": "small", "epsilon": 0.5, "client_id": client_id}).status_code == 200
    zoning = "cell_id,zone_id\n" + "".join(f"c{i:03d},z{i // 10}\n" for i in range(40))
    assert exchange(app, spec, "POST", "/v1/admin/datasets/small/zonings", key=keys.admin,
                    body={"name": "quarters", "csv": zoning}).status_code == 201
    assert exchange(app, spec, "GET", "/v1/admin/audit", key=keys.admin).status_code == 200
    assert exchange(app, spec, "GET", "/v1/errors").status_code == 200
    assert exchange(app, spec, "GET", "/healthz").status_code == 200
    assert exchange(app, spec, "GET", "/readyz").status_code == 200


def test_errors_follow_the_one_documented_shape(app: Flask, spec: OpenAPI, keys: Keys) -> None:
    cases = [
        ("POST", "/v1/flows", None, FLOWS, 401),
        ("POST", "/v1/flows", keys.analyst, {**FLOWS, "zoning": "districts"}, 403),
        ("POST", "/v1/flows", keys.planner, {**FLOWS, "zoning": "nowhere"}, 404),
        ("POST", "/v1/flows", keys.planner, {**FLOWS, "epsilon": 5}, 403),
        ("POST", "/v1/flows", keys.planner, {**FLOWS, "epsilon": 1.0, "hours": [1, 2]}, 200),
        ("POST", "/v1/flows", keys.planner, {**FLOWS, "epsilon": 0.5, "hours": [3, 4]}, 409),
    ]
    for method, path, key, body, status in cases:
        response = exchange(app, spec, method, path, key=key, body=body, valid_request=key is not None)
        assert response.status_code == status, (body, response.get_data(as_text=True))


def test_each_query_declares_the_key_fields_of_its_values(client: FlaskClient, app: Flask, keys: Keys) -> None:
    """The page and generated clients read `x-key-fields` from the document: it is the server's own table,
    and the fields it names are the ones a real answer's values carry."""
    from api.planner import STATIC_DIR
    from dpflows.query_kinds import KEY_FIELDS, QUERY_KINDS

    paths = client.get("/openapi.json").get_json()["paths"]
    declared = {kind: paths[f"/v1/{kind}"]["post"]["x-key-fields"] for kind in QUERY_KINDS}
    assert declared == {kind: list(fields) for kind, fields in KEY_FIELDS.items()}
    answer = app.test_client().post("/v1/flows", json=FLOWS, headers={"Authorization": f"Bearer {keys.planner}"})
    assert answer.status_code == 200
    assert set(answer.get_json()["values"][0]) >= set(declared["flows"])
    page = (STATIC_DIR / "app.js").read_text()
    assert '"x-key-fields"' in page and '["origin", "destination"]' not in page  # read, not copied
