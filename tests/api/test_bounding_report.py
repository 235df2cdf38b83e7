"""GET /v1/datasets/<dataset>/bounding-report through real HTTP: Flask's test client and a real gunicorn."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import requests
from flask.testing import FlaskClient

from api import create_app
from dpflows.aggregates import AggregateStore, version_dir
from dpflows.budget import Epsilon
from dpflows.client import DpflowsClient
from dpflows.ingest.pipeline import DEFAULT_BOUND_PRESENCE, DEFAULT_BOUND_TRIPS
from dpflows.ledger.sqlite import SqliteLedger
from dpflows.mechanisms import scale_for_epsilon
from dpflows.service import REPORT_ACTION, Service
from tests.api.conftest import Keys, seed_clients
from tests.servers import GunicornServer

PATH = "/v1/datasets/city/bounding-report"


@pytest.fixture
def city_app(report_root: Path, tmp_path: Path):
    return create_app({"DPFLOWS_DATA_DIR": str(report_root), "DPFLOWS_LEDGER_URL": f"sqlite:///{tmp_path}/l.db",
                       "TESTING": True})


@pytest.fixture
def city(city_app) -> tuple[FlaskClient, Keys]:
    return city_app.test_client(), seed_clients(city_app.extensions["dpflows"].service, dataset="city")


def test_admin_and_planner_read_the_stored_release_after_its_charge(city, report_root: Path) -> None:
    client, keys = city
    r = client.get(PATH, headers=keys.h("admin"))
    assert r.status_code == 200, r.json
    doc = r.json
    assert doc["epsilon"] == 0.1 and doc["windows"] == 2 and doc["privacy_unit"] == "person-window (7 days)"
    assert doc["charged"] == 0.1 and doc["charged_unit"] == "epsilon"
    scale = scale_for_epsilon(2, Epsilon.parse("0.1"))  # 2/0.1, stepped up until OpenDP's map is within ε
    assert doc["mechanism"] == {"name": "discrete_laplace", "noise_scale": scale, "sensitivity": 2}
    assert doc["error_bound_95"] > 0 and len(doc["detection_thresholds"]) == 4
    stored = json.loads((version_dir(report_root / "datasets" / "city") / "metadata.json").read_text())["bounding_report"]
    for m in doc["measures"]:  # the values served are the stored noisy release, bin for bin
        assert [b["noisy_count"] for b in m["histogram"]] == stored["noisy_counts"][m["measure"]]
        assert m["bound"] == {"trips": DEFAULT_BOUND_TRIPS, "presence": DEFAULT_BOUND_PRESENCE}[m["measure"]]
        assert 0 <= m["share_dropped"] <= 1 and m["suggested_bound"] >= 1
        assert [q["q"] for q in m["quantiles"]] == [0.5, 0.9, 0.95, 0.99]
        assert m["typical_query"]["keys"] == 50 * 50 if m["measure"] == "trips" else 50 * 24
    budget = client.get("/v1/budget?dataset=city", headers=keys.h("planner")).json
    assert [w["global_spent"] for w in budget["windows"]] == [0.1, 0.1]  # in the global spend of every window
    assert [w["spent"] for w in budget["windows"]] == [0, 0]  # the planner's own spending is its own
    again = client.get(PATH, headers=keys.h("planner"))
    assert again.status_code == 200 and again.json["measures"] == doc["measures"]
    assert client.get("/v1/budget?dataset=city", headers=keys.h("planner")).json["windows"][1]["global_spent"] == 0.1


def test_who_may_read_it_and_errors(city, data_root: Path, tmp_path: Path) -> None:
    client, keys = city
    r = client.get(PATH, headers=keys.h("analyst"))
    assert r.status_code == 403 and r.json["error"]["field"] == "role"
    assert client.get(PATH).status_code == 401
    r = client.get("/v1/datasets/nope/bounding-report", headers=keys.h("admin"))
    assert r.status_code == 404 and r.json["error"]["field"] == "dataset"
    small = create_app({"DPFLOWS_DATA_DIR": str(data_root), "DPFLOWS_LEDGER_URL": f"sqlite:///{tmp_path}/s.db"})
    small_keys = seed_clients(small.extensions["dpflows"].service)
    r = small.test_client().get("/v1/datasets/small/bounding-report", headers=small_keys.h("admin"))
    assert r.status_code == 404 and "no bounding report" in r.json["error"]["message"]


def test_without_a_global_cap_it_is_409_and_nothing_is_charged(city_app, tmp_path: Path) -> None:
    service: Service = city_app.extensions["dpflows"].service
    _, admin_key = service.create_client("admin", "admin")
    r = city_app.test_client().get(PATH, headers={"Authorization": f"Bearer {admin_key}"})
    assert r.status_code == 409 and r.json["error"]["code"] == "budget_exceeded"
    assert "global cap" in r.json["error"]["message"] and r.json["error"]["field"] == "dataset"
    assert service.ledger.total_charged("city", 0) == Epsilon.zero()


@pytest.mark.slow
def test_gunicorn_workers_charge_it_once(report_root: Path, tmp_path: Path) -> None:
    ledger_path = tmp_path / "l.db"
    setup = Service(AggregateStore(report_root), SqliteLedger(ledger_path))
    keys = seed_clients(setup, dataset="city")
    setup.ledger.close()
    with GunicornServer(report_root, f"sqlite:///{ledger_path}", workers=2, log_path=tmp_path / "g.log") as srv:
        statuses: list[int] = []

        def read() -> None:
            session = requests.Session()
            for _ in range(5):
                statuses.append(session.get(srv.url + PATH, headers=keys.h("admin"), timeout=30).status_code)

        threads = [threading.Thread(target=read) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert statuses == [200] * 30
        body = DpflowsClient(srv.url, keys.planner).bounding_report("city")  # the Python client
        assert body["epsilon"] == 0.1 and body["measures"][0]["measure"] == "trips"
    ledger = SqliteLedger(ledger_path)
    try:
        assert [ledger.total_charged("city", w) for w in (0, 1)] == [Epsilon.parse("0.1")] * 2
        outcomes = [r.outcome for r in ledger.read_audit(limit=1000) if r.action == REPORT_ACTION]
        # one release; a worker that raced for it finds it stored and is audited as reused, at no charge
        assert outcomes.count("released") == 1 and set(outcomes) <= {"released", "reused"}
    finally:
        ledger.close()
