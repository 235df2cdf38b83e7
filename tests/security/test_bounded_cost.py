"""Issue 18, item 1: every request's CPU is bounded, whatever its numbers.

The requests are the issue's, in-process through the Flask test client over a real SQLite
ledger and real datasets accounted in zCDP ("demo-zcdp") and pure DP ("demo"), built like the
shared test dataset. CPU is `time.process_time()` around one request: on main the analyst's
quote with max_error 1e6 took 6.3 s of CPU, 1e8 and the relative change with max_error 1e14
did not finish in 60 s (OpenDP's accuracy-to-scale search sums the discrete Gaussian pmf up to
max_error at each of ~64 bisection steps).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from api import create_app
from dpflows.budget import Rho
from tests.api.conftest import Keys, seed_clients
from tests.conftest import build_small_dataset

#: What one request may cost: generous for a 2-core machine shared with other work.
CPU_LIMIT_S = 1.0
WEEK = {"start": "2024-03-04", "end": "2024-03-11"}
BASELINE = {"baseline_start": "2024-03-11", "baseline_end": "2024-03-18"}


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("dos-data")
    build_small_dataset(root, "demo-zcdp", accounting="zcdp")
    build_small_dataset(root, "demo")
    return root


@pytest.fixture
def app(demo_root: Path, tmp_path: Path) -> Flask:
    return create_app({"DPFLOWS_DATA_DIR": str(demo_root), "DPFLOWS_LEDGER_URL": f"sqlite:///{tmp_path}/l.db",
                       "TESTING": True, "DPFLOWS_RATE_LIMIT": "100000", "DPFLOWS_RATE_BURST": "100000"})


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def keys(app: Flask) -> Keys:
    service = app.extensions["dpflows"].service
    # demo and demo-zcdp share the data root's default population, whose one global cap is in ρ (issue 17)
    keys = seed_clients(service, "demo", global_cap=Rho.parse("3"))
    service.set_cap("demo-zcdp", Rho.parse("0.02"), client_id=keys.planner_id, window=None)
    service.set_cap("demo-zcdp", Rho.parse("0.03125"), client_id=keys.analyst_id, window=None)  # = per-query cap
    return keys


def cpu(call: Callable[[], Any]) -> tuple[Any, float]:
    """The result of `call` and the CPU seconds this process spent on it."""
    start = time.process_time()
    result = call()
    return result, time.process_time() - start


def post(client: FlaskClient, keys: Keys, role: str, path: str, body: dict[str, Any]) -> tuple[Any, float]:
    return cpu(lambda: client.post(path, json=body, headers=keys.h(role)))


ZCDP_SECTORS = {"dataset": "demo-zcdp", "zoning": "sectors", **WEEK, "case_ref": "c-18"}


@pytest.mark.parametrize("max_error", [1e6, 1e8, 1e14, 1e300], ids="{:g}".format)
def test_analyst_quote_with_a_huge_max_error_is_cheap_and_refused_with_the_fix(
        client: FlaskClient, keys: Keys, max_error: float) -> None:
    """Issue: 1e6 took 6.4 s, 1e8 ran past 20 s. Any max_error that the smallest ρ the service
    charges already meets is refused, naming that ρ and the error it gives."""
    res, seconds = post(client, keys, "analyst", "/v1/quote", {**ZCDP_SECTORS, "query": "flows",
                                                               "max_error": max_error})
    assert seconds < CPU_LIMIT_S
    assert res.status_code == 422, res.get_json()
    error = res.get_json()["error"]
    assert error["field"] == "max_error"
    assert "smallest rho this service charges (0.000001)" in error["message"]
    assert "send rho=0.000001" in error["message"]


@pytest.mark.parametrize("max_error", [1.0, 3.0, 50.0, 1000.0, 5000.0], ids="{:g}".format)
def test_analyst_quote_meets_any_reachable_max_error_cheaply(client: FlaskClient, keys: Keys,
                                                             max_error: float) -> None:
    res, seconds = post(client, keys, "analyst", "/v1/quote", {**ZCDP_SECTORS, "query": "flows",
                                                               "max_error": max_error})
    assert seconds < CPU_LIMIT_S
    if res.status_code == 403:  # too small an error for the analyst's per-query ρ cap: says so
        assert res.get_json()["error"]["field"] == "max_error"
        return
    assert res.status_code == 200, res.get_json()
    doc = res.get_json()
    assert doc["error_bound_95"] <= max_error and doc["rho"] >= 1e-6


@pytest.mark.parametrize("dataset", ["demo-zcdp", "demo"])
def test_relative_change_with_max_error_1e14_is_cheap(client: FlaskClient, keys: Keys, dataset: str) -> None:
    """Issue: gunicorn killed the worker (zCDP: OpenDP's search summed 2^31 pmf terms per step)."""
    body = {"dataset": dataset, "zoning": "districts", **WEEK, **BASELINE, "max_error": 1e14}
    res, seconds = post(client, keys, "planner", "/v1/relative-change", body)
    assert seconds < CPU_LIMIT_S
    assert res.status_code == 422 and res.get_json()["error"]["field"] == "max_error"


@pytest.mark.parametrize(("dataset", "unit", "value"), [("demo-zcdp", "rho", 1e-9), ("demo-zcdp", "rho", 1e-12),
                                                        ("demo", "epsilon", 1e-9), ("demo", "epsilon", 1e-12)])
@pytest.mark.parametrize("path", ["/v1/quote", "/v1/presence"])
def test_a_loss_below_the_floor_is_refused_cheaply_with_the_fix(client: FlaskClient, keys: Keys, dataset: str,
                                                                unit: str, value: float, path: str) -> None:
    """Issue: ρ = 1e-9 made the error bound take 0.1–2 s per free quote. Now refused, charging nothing."""
    floor = "0.000001" if unit == "rho" else "0.0001"
    body = {"dataset": dataset, "zoning": "cell", **WEEK, unit: value}
    res, seconds = post(client, keys, "planner", path, {**body, "query": "presence"} if "quote" in path else body)
    assert seconds < CPU_LIMIT_S
    assert res.status_code == 422, res.get_json()
    error = res.get_json()["error"]
    assert error["field"] == unit
    assert f"below the smallest {unit} this service charges ({floor}); ask for at least {floor}" in error["message"]
    status = client.get(f"/v1/budget?dataset={dataset}", headers=keys.h("planner")).get_json()
    assert status["windows"][0]["spent"] == 0


@pytest.mark.parametrize(("dataset", "unit", "floor"), [("demo-zcdp", "rho", 1e-6), ("demo", "epsilon", 1e-4)])
@pytest.mark.parametrize("kind", ["presence", "flows"])
def test_the_largest_noise_the_service_allows_is_cheap_to_describe(client: FlaskClient, keys: Keys, dataset: str,
                                                                    unit: str, floor: float, kind: str) -> None:
    """At the floor, on cell-level presence over four weeks (the largest ℓ2 sensitivity and the most
    keys of the test data), the quote, the answer and its reuse each stay under the limit."""
    body = {"dataset": dataset, "zoning": "cell" if kind == "presence" else "districts",
            "start": "2024-03-04", "end": "2024-04-01", unit: floor}
    res, seconds = post(client, keys, "planner", "/v1/quote", {**body, "query": kind})
    assert res.status_code == 200, res.get_json()
    assert seconds < CPU_LIMIT_S
    res, seconds = post(client, keys, "planner", f"/v1/{kind}", body)
    assert res.status_code == 200, res.get_json()
    assert seconds < CPU_LIMIT_S + 1.0  # noise for every key is drawn here: OpenDP's exact sampler
    res, seconds = post(client, keys, "planner", f"/v1/{kind}", {**body, "consistent": True})
    assert res.status_code == 200 and res.get_json()["reused"]
    assert seconds < CPU_LIMIT_S


def test_relative_change_at_the_floor_is_cheap(client: FlaskClient, keys: Keys) -> None:
    """Sums of discrete Laplace noise at the largest scale the floor allows: bounds stay bounded in CPU."""
    body = {"dataset": "demo", "zoning": "districts", **WEEK, **BASELINE, "epsilon": 1e-4}
    res, seconds = post(client, keys, "planner", "/v1/relative-change", body)
    assert res.status_code == 200, res.get_json()
    assert seconds < CPU_LIMIT_S + 1.0  # two fresh releases
    res, seconds = post(client, keys, "planner", "/v1/relative-change", body)  # both reused
    assert res.status_code == 200
    assert seconds < CPU_LIMIT_S
