"""Issue 8 through HTTP: consistent answers, free derived answers and relative change.

The library-level behaviour is tested in tests/test_postprocess.py, test_derive.py and
test_relative.py; here the same features are driven through the real Flask app, schema
validation and JSON (the gunicorn run is in test_gunicorn_e2e.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import requests
from flask.testing import FlaskClient

from dpflows import client as dc
from dpflows.aggregates import AggregateStore
from dpflows.ledger.sqlite import SqliteLedger
from dpflows.service import Service
from tests.api.conftest import Keys, seed_clients
from tests.servers import GunicornServer

WEEK2 = {"start": "2024-03-11", "end": "2024-03-18"}


def _post(client: FlaskClient, path: str, body: dict[str, Any], keys: Keys, role: str = "planner") -> Any:
    return client.post(path, json=body, headers=keys.h(role))


def test_consistent_flows_add_up_and_keep_raw_values(client: FlaskClient, keys: Keys) -> None:
    body = {"dataset": "small", "zoning": "districts", **WEEK2, "hours": [7, 10], "epsilon": 0.25,
            "consistent": True}
    res = _post(client, "/v1/flows", body, keys)
    assert res.status_code == 200, res.get_json()
    doc = res.get_json()
    counts = [v["count"] for v in doc["values"]]
    assert all(isinstance(c, int) and c >= 0 for c in counts)
    rows: dict[str, int] = {}
    cols: dict[str, int] = {}
    for v in doc["values"]:
        rows[v["origin"]] = rows.get(v["origin"], 0) + v["count"]
        cols[v["destination"]] = cols.get(v["destination"], 0) + v["count"]
    totals = doc["totals"]
    assert sum(counts) == sum(rows.values()) == sum(cols.values())
    assert any(rows == part for part in totals.values() if isinstance(part, dict))
    assert any(cols == part for part in totals.values() if isinstance(part, dict))
    assert totals["total"] == sum(counts)
    assert len(doc["raw_values"]) == len(counts) and doc["raw_totals"]["total"] == sum(doc["raw_values"])
    assert doc["raw_totals"]["error_bound_95"]["total"] > 0 and doc["epsilon_charged"] == 0.25
    assert any(p.startswith("consistent") for p in doc["postprocessing"])
    csv = client.post("/v1/flows?format=csv", json=body, headers=keys.h("planner"))
    header = csv.get_data(as_text=True).splitlines()[0]
    assert header == "origin,destination,count,error_bound_95,raw_count"
    assert csv.headers["X-Dpflows-Epsilon-Charged"] == "0"  # the same query again: reused


def test_derived_answer_is_free_and_says_where_it_came_from(client: FlaskClient, keys: Keys) -> None:
    fine = {"dataset": "small", "zoning": "districts", **WEEK2, "epsilon": 0.25}
    first = _post(client, "/v1/presence", fine, keys).get_json()
    # at ε 0.05 a fresh sectors answer would be noisier than sums of four released values
    coarse = {"dataset": "small", "zoning": "sectors", **WEEK2, "epsilon": 0.05, "derive": True}
    quote = _post(client, "/v1/quote", {**coarse, "query": "presence"}, keys).get_json()
    assert quote["epsilon_charged"] == 0
    res = _post(client, "/v1/presence", coarse, keys)
    assert res.status_code == 200, res.get_json()
    doc = res.get_json()
    assert doc["derived_from"] == first["answer_id"] and doc["epsilon_charged"] == 0
    assert set(doc["value_terms"]) == {4}  # each sector sums four districts
    assert len(doc["value_error_bounds"]) == len(doc["values"]) == 2 * 24
    assert doc["error_bound_95"] == max(doc["value_error_bounds"]) > first["error_bound_95"]
    assert doc["budget_remaining"] == 0.75  # only the fine answer was charged
    without = _post(client, "/v1/presence", {**coarse, "derive": False}, keys).get_json()
    assert without.get("derived_from") is None and without["epsilon_charged"] == 0.05


def test_relative_change_charges_both_periods_and_states_intervals(client: FlaskClient, keys: Keys) -> None:
    body = {"dataset": "small", "zoning": "sectors", "start": "2024-03-18", "end": "2024-03-25",
            "baseline_start": "2024-03-04", "baseline_end": "2024-03-11", "weekdays": [0, 1, 2, 3, 4],
            "hours": [7, 10], "epsilon": 0.5}
    res = _post(client, "/v1/relative-change", body, keys)
    assert res.status_code == 200, res.get_json()
    doc = res.get_json()
    assert [z["zone"] for z in doc["zones"]] == ["s0", "s1"]
    for zone in doc["zones"]:
        assert zone["change_pct_low"] <= (zone["change_pct"] if zone["change_pct"] is not None else 1e9)
        assert zone["change_pct_high"] is None or zone["change_pct"] <= zone["change_pct_high"]
    assert (doc["current_days"], doc["baseline_days"]) == (5, 5)
    assert [(w["window"], w["epsilon_charged"]) for w in doc["windows"]] == [(0, 0.5), (2, 0.5)]
    assert doc["current"]["epsilon_charged"] == doc["baseline"]["epsilon_charged"] == 0.5
    assert doc["privacy_unit"] == "person-window (7 days)" and doc["budget_remaining"] == 0.5
    # Too expensive together: refused with nothing charged.
    again = {**body, "start": "2024-03-25", "end": "2024-04-01", "epsilon": 0.75}
    refused = _post(client, "/v1/relative-change", again, keys)
    assert refused.status_code == 409
    budget = client.get("/v1/budget?dataset=small", headers=keys.h("planner")).get_json()
    assert [w["spent"] for w in budget["windows"]] == [0.5, 0, 0.5, 0]


def test_relative_change_rejects_bad_input_and_analysts(client: FlaskClient, keys: Keys) -> None:
    body = {"dataset": "small", "zoning": "sectors", "start": "2024-03-18", "end": "2024-03-25",
            "baseline_start": "2024-03-11", "baseline_end": "2024-03-04", "epsilon": 0.25}
    bad = _post(client, "/v1/relative-change", body, keys)
    assert bad.status_code == 422 and bad.get_json()["error"]["field"] == "baseline_end"
    missing = _post(client, "/v1/relative-change", {k: v for k, v in body.items() if k != "baseline_start"}, keys)
    assert missing.status_code == 422
    analyst = _post(client, "/v1/relative-change", {**body, "baseline_end": "2024-03-18"}, keys, role="analyst")
    assert analyst.status_code == 403


@pytest.mark.slow
def test_issue8_features_through_gunicorn(data_root: Path, tmp_path: Path) -> None:
    """Quote, consistent, derived and relative change on a real gunicorn with 2 workers."""
    ledger_path = tmp_path / "ledger.db"
    setup = Service(AggregateStore(data_root), SqliteLedger(ledger_path))
    keys = seed_clients(setup)
    setup.ledger.close()
    with GunicornServer(data_root, f"sqlite:///{ledger_path}", workers=2) as srv:
        def post(path: str, body: dict[str, Any]) -> requests.Response:
            return requests.post(srv.url + path, json=body, headers=keys.h("planner"), timeout=30)

        fine = {"dataset": "small", "zoning": "districts", **WEEK2, "epsilon": 0.25}
        quote = post("/v1/quote", {**fine, "query": "flows", "consistent": True}).json()
        flows = post("/v1/flows", {**fine, "consistent": True}).json()
        assert quote["epsilon_charged"] == flows["epsilon_charged"] == 0.25
        assert all(v["count"] >= 0 for v in flows["values"])
        assert flows["totals"]["total"] == sum(v["count"] for v in flows["values"])
        coarse = post("/v1/flows", {**fine, "zoning": "sectors", "epsilon": 0.02, "derive": True}).json()
        assert coarse["derived_from"] == flows["answer_id"] and coarse["epsilon_charged"] == 0
        change = post("/v1/relative-change", {"dataset": "small", "zoning": "sectors", "start": "2024-03-18",
                                              "end": "2024-03-25", "baseline_start": "2024-03-04",
                                              "baseline_end": "2024-03-11", "epsilon": 0.25})
        assert change.status_code == 200, change.text
        assert [w["epsilon_charged"] for w in change.json()["windows"]] == [0.25, 0.25]
        # The Python client on the same server: the stored answers come back free.
        client = dc.DpflowsClient(srv.url, keys.planner, timeout=30)
        derived = client.flows("small", "sectors", WEEK2["start"], WEEK2["end"], epsilon=0.02, derive=True)
        assert derived.derived_from == flows["answer_id"] and derived.epsilon_charged == 0
        assert derived.values["error_bound_95"].to_list() == coarse["value_error_bounds"]
        consistent = client.flows("small", "districts", WEEK2["start"], WEEK2["end"], epsilon=0.25, consistent=True)
        assert consistent.reused and consistent.totals == flows["totals"] and consistent.raw_values is not None
        rc = client.relative_change("small", "sectors", "2024-03-18", "2024-03-25", baseline_start="2024-03-04",
                                    baseline_end="2024-03-11", epsilon=0.25)
        assert rc.zones["zone"].to_list() == ["s0", "s1"] and rc.current.reused and rc.baseline.reused
        assert all(w.epsilon_charged == 0 for w in rc.windows)
    ledger = SqliteLedger(ledger_path)
    assert [ledger.total_charged("small", w).nanos for w in range(4)] == [250_000_000, 250_000_000, 250_000_000, 0]
    ledger.close()
