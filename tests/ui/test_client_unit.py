"""The HTTP client without the API: request shape, answer parsing, and one exception per error code.

A throwaway stdlib HTTP server on 127.0.0.1 plays canned answers; what the client sends is
recorded and checked. The client against the real API is tested in test_client.py.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import polars as pl
import pytest

from dpflows import client as dc

ANSWER = {
    "answer_id": "a1", "query": {"kind": "flows", "dataset": "small", "zoning": "z"},
    "values": [{"origin": "a", "destination": "b", "count": 12}, {"origin": "b", "destination": "a", "count": -3}],
    "epsilon_charged": 0.25,
    "windows": [{"window": 0, "start": "2024-03-04", "end": "2024-03-11", "epsilon_charged": 0.25,
                 "budget_remaining": 0.75}],
    "budget_remaining": 0.75, "privacy_unit": "person-window (7 days)",
    "mechanism": {"name": "discrete_laplace", "noise_scale": 20.0, "sensitivity": 5},
    "error_bound_95": 5.5, "confidence": 0.95, "reused": False, "postprocessing": [],
}
ZONING = {"name": "z", "zones": [{"zone_id": "a", "cells": 3, "centroid": [40.0, -74.0]},  # [lat, lon]
                                 {"zone_id": "b", "cells": 3, "centroid": [41.0, -73.0]}], "cells": [], "geometry": None}


class Canned:
    def __init__(self) -> None:
        self.routes: dict[tuple[str, str], tuple[int, Any, dict[str, str]]] = {}
        self.seen: list[dict[str, Any]] = []


@pytest.fixture
def server() -> Iterator[tuple[str, Canned]]:
    canned = Canned()

    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length)) if length else None
            path = self.path.split("?")[0]
            canned.seen.append({"method": self.command, "path": self.path, "body": body,
                                "auth": self.headers.get("Authorization")})
            status, doc, headers = canned.routes.get((self.command, path), (404, {"error": {
                "code": "not_found", "message": f"no route {path}"}}, {}))
            data = json.dumps(doc).encode() if doc is not None else b""
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_DELETE = _serve

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", canned
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def test_flows_request_and_answer(server) -> None:
    url, canned = server
    canned.routes[("POST", "/v1/flows")] = (200, ANSWER, {})
    canned.routes[("GET", "/v1/datasets/small/zonings/z")] = (200, ZONING, {})
    client = dc.DpflowsClient(url + "/", "dpf_secret", timeout=5)
    answer = client.flows("small", "z", "2024-03-04", "2024-03-11", hours=(7, 10), weekdays=[0, 1], epsilon=0.25)
    sent = canned.seen[0]
    assert sent["auth"] == "Bearer dpf_secret"
    assert sent["body"] == {"dataset": "small", "zoning": "z", "start": "2024-03-04", "end": "2024-03-11",
                            "hours": [7, 10], "weekdays": [0, 1], "epsilon": 0.25}
    assert answer.values.columns == ["origin", "destination", "count", "error_bound_95", "lower", "upper"]
    assert answer.values.row(0) == ("a", "b", 12, 5.5, 6.5, 17.5)
    assert answer.values.row(1)[4:] == (0.0, 2.5)  # a true count is never negative
    assert answer.budget_remaining == 0.75 and answer.windows[0].end.isoformat() == "2024-03-11"
    assert answer.mechanism.sensitivity == 5 and not answer.reused
    geo = answer.to_geojson()  # fetches the zoning through the same client
    assert geo["features"][0]["geometry"]["coordinates"] == [[-74.0, 40.0], [-73.0, 41.0]]  # GeoJSON: [lon, lat]
    assert geo["dpflows"]["answer_id"] == "a1"
    assert "dpf_secret" not in repr(client)


def test_empty_values_keep_their_schema() -> None:
    frame = dc.values_frame("presence", [], 3.0)
    assert frame.schema["zone"] == pl.String and frame.schema["hour"] == pl.Int64 and frame.height == 0


@pytest.mark.parametrize(("status", "code", "exc"), [
    (401, "unauthenticated", dc.AuthenticationError),
    (403, "forbidden", dc.ForbiddenError),
    (404, "not_found", dc.NotFoundError),
    (409, "budget_exceeded", dc.BudgetExceededError),
    (409, "conflict", dc.ConflictError),
    (422, "invalid_input", dc.InvalidInputError),
    (422, "domain_too_large", dc.InvalidInputError),
    (429, "rate_limited", dc.RateLimitedError),
    (503, "unavailable", dc.UnavailableError),
    (503, "data_unavailable", dc.UnavailableError),
    (400, "bad_request", dc.InvalidInputError),
    (418, "brand_new_code", dc.DpflowsClientError),
])
def test_every_error_code_has_its_exception(server, status: int, code: str, exc: type) -> None:
    from api.errors import error_table

    url, canned = server
    canned.routes[("GET", "/v1/errors")] = (200, {"errors": error_table()}, {})  # the service's own table
    canned.routes[("POST", "/v1/quote")] = (status, {"error": {"code": code, "message": "m", "field": "epsilon"}},
                                            {"Retry-After": "3"})
    client = dc.DpflowsClient(url, "k")
    with pytest.raises(exc) as info:
        client.quote("flows", "small", "z", "2024-03-04", "2024-03-11", epsilon=5)
    err = info.value
    assert (err.code, err.status, err.field, err.message) == (code, status, "epsilon", "m")
    assert isinstance(err, dc.DpflowsClientError)
    if isinstance(err, dc.RateLimitedError):
        assert err.retry_after == 3.0


def test_error_without_body_and_unreachable_service(server) -> None:
    url, canned = server
    canned.routes[("GET", "/v1/budget")] = (503, None, {})
    with pytest.raises(dc.UnavailableError) as info:
        dc.DpflowsClient(url, "k").budget("small")
    assert info.value.code == "http_503"
    dead = dc.DpflowsClient("http://127.0.0.1:9", "k", timeout=2)  # port 9 (discard): nothing listens
    with pytest.raises(dc.ConnectionFailedError) as info:
        dead.datasets()
    assert info.value.code == "connection_failed" and isinstance(info.value, dc.UnavailableError)


def test_price_must_be_exactly_one() -> None:
    client = dc.DpflowsClient("http://127.0.0.1:9", "k")
    with pytest.raises(ValueError, match="exactly one"):
        client.flows("small", "z", "2024-03-04", "2024-03-11")
    with pytest.raises(ValueError, match="exactly one"):
        client.presence("small", "z", "2024-03-04", "2024-03-11", epsilon=1, max_error=3)
    with pytest.raises(ValueError, match="http"):
        dc.DpflowsClient("127.0.0.1:8000", "k")


def test_client_package_speaks_no_flask_and_loads_no_opendp() -> None:
    import ast
    import subprocess
    import sys
    from pathlib import Path

    for module in Path(dc.__file__).parent.glob("*.py"):
        tree = ast.parse(module.read_text())
        imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert not imported & {"flask", "api", "werkzeug", "requests"}, module.name
    # the client and the shared field list load without OpenDP (or the server's code)
    probe = "import sys, dpflows.client; print(sorted(m for m in ('opendp', 'flask', 'api') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
