"""Two API hosts (two gunicorn instances, 2 workers each) sharing one PostgreSQL ledger."""

from __future__ import annotations

import itertools
import threading
from fractions import Fraction
from pathlib import Path

import pytest
import requests

from dpflows.aggregates import AggregateStore
from dpflows.budget import Epsilon
from dpflows.ledger.postgres import PostgresLedger
from dpflows.service import Service
from tests.api.conftest import FLOWS, seed_clients
from tests.servers import GunicornServer

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


def test_two_hosts_never_exceed_the_cap_and_share_reuse(data_root: Path, postgres_url: str) -> None:
    setup = Service(AggregateStore(data_root), PostgresLedger(postgres_url))
    keys = seed_clients(setup)
    setup.ledger.close()
    env = {"DPFLOWS_RATE_LIMIT": "100000", "DPFLOWS_RATE_BURST": "100000"}
    with GunicornServer(data_root, postgres_url, workers=2, extra_env=env) as a, \
            GunicornServer(data_root, postgres_url, workers=2, extra_env=env) as b:
        hosts = [a.url, b.url]
        # A query released through host A is found, free and identical, through host B.
        first = requests.post(a.url + "/v1/flows", json={**FLOWS, "start": "2024-03-18", "end": "2024-03-25"},
                              headers=keys.h("planner"), timeout=30).json()
        again = requests.post(b.url + "/v1/flows", json={**FLOWS, "start": "2024-03-18", "end": "2024-03-25"},
                              headers=keys.h("planner"), timeout=30).json()
        assert again["reused"] is True and again["answer_id"] == first["answer_id"]
        assert again["values"] == first["values"] and again["epsilon_charged"] == 0

        # 12 threads alternate hosts with 120 distinct queries of 0.0833... ~ 10x the cap of 1 on window 1.
        statuses: list[int] = []
        charged: list[Fraction] = []
        lock = threading.Lock()
        combos = list(itertools.product(range(24), range(7)))

        def worker(t: int) -> None:
            session = requests.Session()
            for i in range(10):
                h, d = combos[t * 10 + i]
                body = {**FLOWS, "start": "2024-03-11", "end": "2024-03-18", "hours": [h, h + 1], "weekdays": [d],
                        "epsilon": 0.1}
                r = session.post(hosts[(t + i) % 2] + "/v1/flows", json=body, headers=keys.h("planner"), timeout=60)
                with lock:
                    statuses.append(r.status_code)
                    if r.status_code == 200:
                        charged.append(Fraction(str(r.json()["epsilon_charged"])))

        threads = [threading.Thread(target=worker, args=(t,)) for t in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert set(statuses) <= {200, 409} and len(statuses) == 120
    ledger = PostgresLedger(postgres_url)
    total = ledger.total_charged("small", 1, keys.planner_id)
    ledger.close()
    assert total == Epsilon.parse("1")  # exactly the cap: ten answers of 0.1
    assert statuses.count(200) == 10 and sum(charged) == total.as_fraction()
