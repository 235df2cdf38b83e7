"""End to end through a real gunicorn (2+ workers) on loopback with a real SQLite ledger."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import pytest
import requests

from dpflows.aggregates import AggregateStore
from dpflows.budget import Epsilon
from dpflows.ledger.sqlite import SqliteLedger
from dpflows.service import Service
from tests.api.conftest import FLOWS, Keys, seed_clients
from tests.servers import GunicornServer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GunicornServer, Keys, Path]]:
    tmp = tmp_path_factory.mktemp("e2e")
    ledger_path = tmp / "ledger.db"
    setup = Service(AggregateStore(data_root), SqliteLedger(ledger_path))
    keys = seed_clients(setup)
    setup.ledger.close()
    # 160+ requests of one key in a burst: above the default per-key limit (100), shared by the workers
    unlimited = {"DPFLOWS_RATE_LIMIT": "100000", "DPFLOWS_RATE_BURST": "100000"}
    with GunicornServer(data_root, f"sqlite:///{ledger_path}", workers=3, extra_env=unlimited) as srv:
        yield srv, keys, ledger_path


def post(srv: GunicornServer, keys: Keys, role: str, path: str, body: dict) -> requests.Response:
    if role == "analyst":
        body = {"case_ref": "case-0001", **body}
    return requests.post(srv.url + path, json=body, headers=keys.h(role), timeout=30)


def test_roles_budget_and_reuse_over_http(server) -> None:
    srv, keys, ledger_path = server
    assert len(srv.worker_pids()) == 3
    r = post(srv, keys, "planner", "/v1/flows", {**FLOWS, "hours": [0, 1], "epsilon": 0.25})
    assert r.status_code == 200 and r.json()["budget_remaining"] == 0.75
    again = post(srv, keys, "planner", "/v1/flows", {**FLOWS, "hours": [0, 1], "epsilon": 0.25}).json()
    assert again["reused"] and again["values"] == r.json()["values"] and again["epsilon_charged"] == 0
    assert post(srv, keys, "analyst", "/v1/flows", {**FLOWS, "hours": [0, 1], "epsilon": 0.25}).json()["reused"]
    assert post(srv, keys, "analyst", "/v1/presence", FLOWS).status_code == 403
    assert post(srv, keys, "admin", "/v1/flows", FLOWS).status_code == 403
    assert requests.post(srv.url + "/v1/flows", json=FLOWS, timeout=10).status_code == 401
    bad = post(srv, keys, "planner", "/v1/flows", {**FLOWS, "epsilon": -1})
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "epsilon"
    ledger = SqliteLedger(ledger_path)
    assert ledger.total_charged("small", 0) == Epsilon.parse("0.25")
    ledger.close()
    budget = requests.get(srv.url + "/v1/budget", params={"dataset": "small"}, headers=keys.h("planner"), timeout=10)
    assert budget.json()["windows"][0]["spent"] == 0.25


def test_concurrent_requests_for_ten_times_the_cap_never_exceed_it(server) -> None:
    """16 threads send 160 distinct queries of 0.0625 on window 1 (10 ε in all) against a cap of 1."""
    srv, keys, ledger_path = server
    statuses: list[int] = []
    charged: list[Fraction] = []
    lock = threading.Lock()

    def worker(offset: int) -> None:
        session = requests.Session()
        for i in range(10):
            k = offset * 10 + i
            body = {**FLOWS, "start": "2024-03-11", "end": "2024-03-18", "hours": [k % 24, k % 24 + 1],
                    "weekdays": [k // 24 % 7], "epsilon": 0.0625}
            r = session.post(srv.url + "/v1/flows", json=body, headers=keys.h("planner"), timeout=60)
            with lock:
                statuses.append(r.status_code)
                if r.status_code == 200:
                    charged.append(Fraction(str(r.json()["epsilon_charged"])))

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(statuses) == 160 and set(statuses) <= {200, 409}
    ledger = SqliteLedger(ledger_path)
    total = ledger.total_charged("small", 1, keys.planner_id)
    ledger.close()
    assert total == Epsilon.parse("1")  # the cap, exactly: 16 × 0.0625
    assert sum(charged) == total.as_fraction()  # every 200 answer has its charge, and no charge lacks one
    assert statuses.count(200) == 16


WEEK3 = {**FLOWS, "start": "2024-03-18", "end": "2024-03-25"}  # window 2: untouched by the other tests here
WEEK4 = {**FLOWS, "start": "2024-03-25", "end": "2024-04-01"}  # window 3


def test_each_role_allowed_and_refused_over_http(server) -> None:
    srv, keys, ledger_path = server
    allowed = [("planner", "/v1/flows", {**WEEK4, "zoning": "districts", "epsilon": 0.1}),
               ("planner", "/v1/presence", {**WEEK4, "zoning": "districts", "epsilon": 0.1}),
               ("planner", "/v1/patterns", {**WEEK4, "measure": "presence", "epsilon": 0.1}),
               ("analyst", "/v1/flows", {**WEEK4, "epsilon": 0.2})]
    for role, path, body in allowed:
        r = post(srv, keys, role, path, body)
        assert r.status_code == 200 and r.json()["reused"] is False, (role, path, r.text)
    refused = [("analyst", "/v1/presence", WEEK4, "kind"), ("analyst", "/v1/patterns", WEEK4, "kind"),
               ("analyst", "/v1/flows", {**WEEK4, "zoning": "districts"}, "zoning"),
               ("analyst", "/v1/flows", {**WEEK4, "hours": [1, 2], "epsilon": 0.3}, "epsilon"),
               ("admin", "/v1/flows", WEEK4, "role"), ("admin", "/v1/presence", WEEK4, "role")]
    for role, path, body, field in refused:
        r = post(srv, keys, role, path, body)
        assert r.status_code == 403 and r.json()["error"]["field"] == field, (role, path, r.text)
    r = requests.get(srv.url + "/v1/admin/clients", headers=keys.h("planner"), timeout=10)
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    r = requests.get(srv.url + "/v1/admin/clients", headers=keys.h("admin"), timeout=10)
    assert r.status_code == 200 and {c["name"] for c in r.json()} >= {"admin", "planner", "analyst"}
    ledger = SqliteLedger(ledger_path)
    assert ledger.total_charged("small", 3, keys.planner_id) == Epsilon.parse("0.3")  # refusals charged nothing
    assert ledger.total_charged("small", 3, keys.analyst_id) == Epsilon.parse("0.2")
    ledger.close()


def test_the_cap_is_exactly_reachable_and_never_exceeded_over_http(server) -> None:
    srv, keys, ledger_path = server
    remaining = [post(srv, keys, "planner", "/v1/flows", {**WEEK3, "hours": [h, h + 1], "epsilon": 0.25})
                 for h in range(4)]
    assert [r.status_code for r in remaining] == [200] * 4
    assert [r.json()["budget_remaining"] for r in remaining] == [0.75, 0.5, 0.25, 0]
    r = post(srv, keys, "planner", "/v1/flows", {**WEEK3, "hours": [5, 6], "epsilon": 0.25})
    assert r.status_code == 409 and r.json()["error"]["code"] == "budget_exceeded"
    r = post(srv, keys, "planner", "/v1/flows", {**WEEK3, "hours": [5, 6], "epsilon": 0.0001})
    assert r.status_code == 409  # not even the smallest ε the service charges past the cap
    again = post(srv, keys, "planner", "/v1/flows", {**WEEK3, "hours": [0, 1], "epsilon": 0.25})
    assert again.status_code == 200 and again.json()["reused"] is True  # released answers stay free
    ledger = SqliteLedger(ledger_path)
    assert ledger.total_charged("small", 2, keys.planner_id) == Epsilon.parse("1")
    ledger.close()
