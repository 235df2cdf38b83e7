"""Issue 17, item 3, as a hostile client found it against a real gunicorn: budgets were per dataset, not per
population. The demo ingests the same 20,000 people twice (`demo`, pure DP; `demo-zcdp`, zCDP), each with its
own global cap, and a third ingestion of the same events got fresh caps again; nothing bounded what a
person's home (the same in every week's residents) costs over a year.

Now both demo datasets (and any later ingestion without --population) draw on one population: a spend on
`demo` shows on `demo-zcdp`'s budget as OpenDP's ρ of its ε; a third ingestion shares what remains; and a
horizon cap bounds the population's spend over any run of windows. Clients see none of these figures.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from dpflows.budget import Epsilon, Rho
from dpflows.ingest.pipeline import IngestOptions, ZoningSpec, ingest_events
from dpflows.mechanisms import epsilon_as_rho
from dpflows.quickstart import KEYS_FILE, START, prepare_demo
from tests.servers import GunicornServer

pytestmark = pytest.mark.slow  # generates and ingests a small demo city twice, then serves it

WEEK1 = {"start": "2024-03-04", "end": "2024-03-11"}


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[tuple[GunicornServer, dict[str, str], Path]]:
    """The README's demo (a smaller city), served by gunicorn with two workers; its keys by role."""
    prepare_demo(tmp_path, persons=300).ledger.close()
    found = dict(re.findall(r"^(ADMIN|PLANNER|ANALYST)_KEY=(dpf_\S+)$", (tmp_path / KEYS_FILE).read_text(), re.M))
    keys = {"admin": found["ADMIN"], "planner": found["PLANNER"], "analyst": found["ANALYST"]}
    with GunicornServer(tmp_path / "data", f"sqlite:///{tmp_path / 'ledger.db'}", workers=2) as srv:
        yield srv, keys, tmp_path


def call(srv: GunicornServer, key: str, method: str, path: str, body: dict[str, Any] | None = None,
         **params: Any) -> requests.Response:
    return requests.request(method, srv.url + path, json=body, params=params, timeout=60,
                            headers={"Authorization": f"Bearer {key}"})


def spent(srv: GunicornServer, admin: str, dataset: str, window: int = 0) -> float:
    """What the population of `dataset` spent in one window, as the admin listing shows it."""
    doc = call(srv, admin, "GET", "/v1/admin/allocations", dataset=dataset).json()
    return next((w["spent"] for w in doc["spent"] if w["window"] == window), 0.0)


def flows(dataset: str, **loss: float) -> dict[str, Any]:
    return {"dataset": dataset, "zoning": "districts", **WEEK1, **loss}


def test_a_spend_on_demo_shows_on_demo_zcdp_converted(demo) -> None:
    """Before: demo and demo-zcdp had a global cap each (ε 4 and ρ 0.05 per week), so the same people could
    lose both. Now one population's cap in ρ (0.5 per week) holds both; ε 0.5 on demo counts as ρ 0.125."""
    srv, keys, _ = demo
    admin = keys["admin"]
    listing = call(srv, admin, "GET", "/v1/admin/allocations", dataset="demo").json()
    assert listing == call(srv, admin, "GET", "/v1/admin/allocations", dataset="demo-zcdp").json()
    assert listing["population"]["name"] == "default" and listing["population"]["measure"] == "rho"
    assert listing["global_caps"] == [{"window": None, "cap": 0.5}]
    # a first query on each pays its bounding report (charged to the population before anything is served)
    assert call(srv, keys["planner"], "POST", "/v1/flows", flows("demo", epsilon=0.01)).status_code == 200
    assert call(srv, keys["planner"], "POST", "/v1/flows", flows("demo-zcdp", rho=0.001)).status_code == 200
    before = spent(srv, admin, "demo-zcdp")
    answer = call(srv, keys["planner"], "POST", "/v1/flows", flows("demo", epsilon=0.5)).json()
    assert answer["epsilon_charged"] == 0.5
    converted = epsilon_as_rho(Epsilon.parse("0.5"))
    assert converted == Rho.parse("0.125")
    assert spent(srv, admin, "demo-zcdp") == pytest.approx(before + 0.125, abs=1e-9)
    # the same people: what demo spent is gone from demo-zcdp, to the last nano-unit
    call(srv, admin, "PUT", "/v1/admin/caps", {"dataset": "demo-zcdp", "client_id": 2, "rho": 1})  # the planner
    left = Rho.parse("0.5") - Rho.parse(repr(spent(srv, admin, "demo-zcdp")))
    over = call(srv, keys["planner"], "POST", "/v1/flows", flows("demo-zcdp", rho=left.to_json() + 1e-9))
    assert over.status_code == 409 and "global budget" in over.json()["error"]["message"]
    assert str(left) not in over.text and "population" in over.json()["error"]["message"]
    assert call(srv, keys["planner"], "POST", "/v1/flows", flows("demo-zcdp", rho=left.to_json())).status_code == 200
    # a client sees its own cap and spending on each dataset, in its measure; never the population's figures
    budget = call(srv, keys["planner"], "GET", "/v1/budget", dataset="demo").json()
    assert budget["windows"][0]["spent"] == 0.51 and budget["windows"][0]["remaining"] == 1.49
    assert "global" not in budget and "0.5" not in repr(budget["windows"][0].get("group_cap"))
    refused = call(srv, keys["planner"], "GET", "/v1/admin/allocations", dataset="demo")
    assert refused.status_code == 403
    # the old names keep working, mapped onto the population: a global cap set through demo is in rho
    wrong = call(srv, admin, "PUT", "/v1/admin/caps", {"dataset": "demo", "epsilon": 4})
    assert wrong.status_code == 422 and "send the cap as rho" in wrong.json()["error"]["message"]


def test_a_third_ingestion_of_the_same_people_gets_no_fresh_budget(demo) -> None:
    """Before: ingesting the demo's events a third time gave a third global cap. Now it joins the same
    population: once the population's week is spent, the new dataset serves nothing for that week."""
    srv, keys, home = demo
    admin = keys["admin"]
    call(srv, admin, "PUT", "/v1/admin/caps", {"dataset": "demo", "client_id": 2, "epsilon": 5})
    for _ in range(3):  # ε 1 is ρ 0.5, the population's whole week: three ε 0.5 (0.375) leave less than 0.125
        call(srv, keys["planner"], "POST", "/v1/flows", {**flows("demo", epsilon=0.5), "hours": [_, _ + 1]})
    raw = home / "raw"
    options = IngestOptions(name="demo-3", first_day=START, end_day=START + dt.timedelta(days=28), seed=3,
                            zonings=[ZoningSpec("districts", raw / "zonings" / "districts.csv")])
    ingest_events(raw / "events.parquet", raw / "cells.csv", home / "data" / "datasets" / "demo-3", options)
    call(srv, admin, "PUT", "/v1/admin/caps", {"dataset": "demo-3", "client_id": 2, "epsilon": 2})
    answer = call(srv, keys["planner"], "POST", "/v1/flows", flows("demo-3", epsilon=0.5))
    assert answer.status_code == 409 and "global budget" in answer.json()["error"]["message"]
    listing = call(srv, admin, "GET", "/v1/admin/allocations", dataset="demo-3").json()
    assert listing["population"]["name"] == "default"
    assert spent(srv, admin, "demo-3") <= 0.5


def test_the_horizon_cap_refuses_a_spend_over_a_run_of_windows(demo) -> None:
    """Before: nothing bounded a population's spend over weeks (a home repeats every week). Now, with at most
    ρ 0.4 over any 2 consecutive weeks, a charge that fits its week but not the run is refused."""
    srv, keys, _ = demo
    admin = keys["admin"]
    put = call(srv, admin, "PUT", "/v1/admin/populations/default/horizon", {"horizon_windows": 2, "rho": 0.4})
    assert put.status_code == 200 and put.json()["horizon_cap"] == 0.4
    call(srv, admin, "PUT", "/v1/admin/caps", {"dataset": "demo", "client_id": 2, "epsilon": 5})
    two_weeks = {"dataset": "demo", "zoning": "districts", "start": "2024-03-04", "end": "2024-03-18"}
    assert call(srv, keys["planner"], "POST", "/v1/flows", {**two_weeks, "epsilon": 0.5}).status_code == 200
    week2 = {"dataset": "demo", "zoning": "districts", "start": "2024-03-11", "end": "2024-03-18", "hours": [7, 10]}
    assert call(srv, keys["planner"], "POST", "/v1/flows", {**week2, "epsilon": 0.5}).status_code == 200
    # weeks 1 and 2 now hold about 0.38 of 0.4; week 1 alone about 0.13 of its 0.5
    week1 = {**week2, **WEEK1}
    refused = call(srv, keys["planner"], "POST", "/v1/flows", {**week1, "epsilon": 0.5})
    assert refused.status_code == 409
    message = refused.json()["error"]["message"]
    assert "horizon cap of population 'default'" in message and "0.38" not in message and "0.4" not in message
    # week 3 is in the run of weeks 2-3 only, which holds 0.25 of 0.4: it fits
    week3 = {**week2, "start": "2024-03-18", "end": "2024-03-25"}
    assert call(srv, keys["planner"], "POST", "/v1/flows", {**week3, "epsilon": 0.5}).status_code == 200
    listing = call(srv, admin, "GET", "/v1/admin/allocations", dataset="demo").json()
    windows = {w["window"]: w["spent"] for w in listing["spent"]}
    assert all(windows.get(w, 0) + windows.get(w + 1, 0) <= 0.4 for w in range(4))
