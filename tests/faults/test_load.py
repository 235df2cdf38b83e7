"""The load test at CI size: 2,000 mixed requests from 8 threads against 3 gunicorn workers.

`benchmarks/load_test.py` does the work (and runs 20,000 requests as a benchmark). Here:
zero errors (no 5xx, no broken connection, no status outside each request kind's allowed set),
the ledger's charge rows equal exactly the ε of the answers clients received, no cap is
exceeded, and the ledger's own invariants and audit chain hold.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from dpflows.aggregates import AggregateStore
from dpflows.ledger.sqlite import SqliteLedger
from dpflows.service import Service
from tests.faults.ledger_checks import check_ledger
from tests.servers import GunicornServer

pytestmark = pytest.mark.slow

BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "load_test.py"


def _load_benchmark():
    spec = importlib.util.spec_from_file_location("load_test", BENCHMARK)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def test_two_thousand_mixed_requests(data_root: Path, tmp_path: Path) -> None:
    load = _load_benchmark()
    ledger_path = tmp_path / "ledger.db"
    setup = Service(AggregateStore(data_root), SqliteLedger(ledger_path))
    clients = load.seed(setup)
    setup.ledger.close()
    env = {"DPFLOWS_RATE_LIMIT": "100000", "DPFLOWS_RATE_BURST": "100000",  # the mix has keyless requests too
           "DPFLOWS_AUTH_FAILURE_LIMIT": "100000", "DPFLOWS_AUTH_FAILURE_BURST": "100000"}
    with GunicornServer(data_root, f"sqlite:///{ledger_path}", workers=3, extra_env=env) as srv:
        result = load.run_load(srv.url, clients, total=2000, threads=8, seed_=7, deadline_s=600)
        log = srv.log_text()
    summary = result.summary()
    totals = load.budget_totals(ledger_path, clients, result)
    print("\n" + load.report(summary, totals))
    assert summary["requests"] == 2000
    assert result.errors == [], result.errors[:5]
    assert totals["equal"], totals
    assert totals["over_cap"] == [], totals
    kinds = {kind for kind, _ in summary["statuses"]}
    assert kinds == {"fresh", "reused", "read", "refused", "greedy"}
    statuses = {status for _, status in summary["statuses"]}
    assert {200, 401, 403, 404, 409, 422} <= statuses  # 409: the greedy planner ran out
    check_ledger(ledger_path, result.received())
    assert "Traceback" not in log
