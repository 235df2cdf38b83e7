"""Issue 17, as a hostile client found it against a real gunicorn: each finding reproduced, now refused.

Covered here: derived answers that ignored the accuracy asked (item 4), a "coarse" flag anyone
could set (item 5), the system principal's keys blocking ingestion for good (item 7), police
questions read by oversight only (item 6), queries visible across clients (item 1: sharing groups)
and spending visible across clients (item 2: group allocations, no global figures).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from dpflows.aggregates import AggregateStore
from dpflows.errors import PolicyViolation
from dpflows.ledger.sqlite import SqliteLedger
from dpflows.service import SYSTEM_CLIENT, Service
from dpflows.service.admin import hash_key
from tests.api.conftest import Keys
from tests.security.conftest import seeded_ledger
from tests.servers import GunicornServer

WEEK = {"dataset": "small", "start": "2024-03-04", "end": "2024-03-11"}


@pytest.fixture
def served(data_root: Path, tmp_path: Path) -> Iterator[tuple[GunicornServer, Keys, Path]]:
    root = tmp_path / "data"
    shutil.copytree(data_root, root)
    ledger = tmp_path / "ledger.db"
    keys = seeded_ledger(root, ledger)
    with GunicornServer(root, f"sqlite:///{ledger}", workers=2) as srv:
        srv.ledger_path = ledger  # type: ignore[attr-defined]
        yield srv, keys, root


def post(srv: GunicornServer, key: str, path: str, body: dict[str, Any]) -> requests.Response:
    return requests.post(srv.url + path, json=body, headers={"Authorization": f"Bearer {key}"}, timeout=30)


def test_a_derived_answer_never_ignores_the_accuracy_asked(served) -> None:
    """Before: after a planner released sectors flows at ε 1e-9, the analyst asking the same at ε 0.25 with
    derive=true got that answer (error ±6e10) for free."""
    srv, keys, _ = served
    # at the smallest ε the service charges (1e-4 since issue 18, item 2)
    sloppy = post(srv, keys.planner, "/v1/flows", {**WEEK, "zoning": "sectors", "epsilon": 1e-4})
    assert sloppy.status_code == 200 and sloppy.json()["error_bound_95"] > 1e5
    body = {**WEEK, "zoning": "sectors", "epsilon": 0.25, "derive": True, "case_ref": "case-0001"}
    quote = post(srv, keys.analyst, "/v1/quote", {**body, "query": "flows"}).json()
    assert quote.get("derived_from") is None and quote["epsilon"] == 0.25 and quote["epsilon_charged"] == 0.25
    answer = post(srv, keys.analyst, "/v1/flows", body).json()
    assert answer.get("derived_from") is None and answer["epsilon_charged"] == 0.25
    assert answer["error_bound_95"] < 100 and answer["answer_id"] != sloppy.json()["answer_id"]


def test_coarse_is_checked_at_upload_and_at_query_time(served) -> None:
    """Before: an admin uploaded a zoning whose zone TARGET is one cell, marked coarse, and the analyst got
    single-cell counts."""
    srv, keys, root = served
    rows = "cell_id,zone_id\n" + "c000,TARGET\n" + "".join(f"c{i:03d},REST\n" for i in range(1, 40))
    upload = requests.post(srv.url + "/v1/admin/datasets/small/zonings", timeout=30,
                           headers={"Authorization": f"Bearer {keys.admin}"},
                           json={"name": "trap", "csv": rows, "coarse": True, "min_cells_per_zone": 1})
    assert upload.status_code == 422 and "below the server's minimum of 10" in upload.json()["error"]["message"]
    # A zoning that reached the data root another way (an old upload, a file copied in) is still checked.
    setup = Service(AggregateStore(root), SqliteLedger(root / "side.db"))
    data = setup.dataset("small")
    from dpflows.cells import Zoning, parse_zoning_csv

    zoning = Zoning.from_mapping("trap", parse_zoning_csv(rows, source="trap"), data.catalog, coarse=True,
                                 min_cells_per_zone=1, source="trap")
    data.add_zoning(zoning)
    refused = post(srv, keys.analyst, "/v1/flows", {**WEEK, "zoning": "trap", "epsilon": 0.25, "case_ref": "c-1"})
    assert refused.status_code == 403
    assert "has a zone of 1 cell(s)" in refused.json()["error"]["message"]
    ok = post(srv, keys.analyst, "/v1/flows", {**WEEK, "zoning": "sectors", "epsilon": 0.25, "case_ref": "c-1"})
    assert ok.status_code == 200


def test_the_system_principal_never_gets_a_key_and_old_revoked_keys_do_not_block(data_root: Path,
                                                                                   tmp_path: Path) -> None:
    """Before: a key issued to system:ingest blocked every later ingestion for good, revoked or not, and the
    advice named no command."""
    ledger = SqliteLedger(tmp_path / "l.db")
    service = Service(AggregateStore(data_root), ledger)
    admin, _ = service.create_client("admin", "admin")
    system = ledger.create_client(SYSTEM_CLIENT, "admin")
    with pytest.raises(PolicyViolation, match="never gets an API key"):
        service.rotate_key(system.id, by=admin)
    # a key from an older release, then revoked: no longer blocks the report charge
    old = ledger.add_key(system.id, hash_key("dpf_old"), "dpf_ol")
    from dpflows.errors import Conflict
    from dpflows.service.reports import system_client

    with pytest.raises(Conflict, match=f"dpflows admin revoke-key --key-id {old.id}"):
        system_client(service.context)
    service.revoke_key(old.id, by=admin)
    assert system_client(service.context).id == system.id


def test_police_questions_are_read_by_oversight_only(served) -> None:
    """Item 6: an analyst's query carries its case; admins see who, when, the cost and the outcome, not what or why."""
    srv, keys, root = served
    missing = post(srv, keys.analyst, "/v1/flows", {**WEEK, "zoning": "sectors", "epsilon": 0.1})
    assert missing.status_code == 403 and missing.json()["error"]["field"] == "case_ref"
    asked = post(srv, keys.analyst, "/v1/flows", {**WEEK, "zoning": "sectors", "hours": [22, 2], "epsilon": 0.1,
                                                  "case_ref": "OP-TRIDENT-42"})
    assert asked.status_code == 200
    setup = Service(AggregateStore(root), SqliteLedger(srv.ledger_path))
    _, oversight_key = setup.create_client("oversight-board", "oversight")

    def audit(key: str) -> list[dict[str, Any]]:
        r = requests.get(srv.url + "/v1/admin/audit?limit=1000", headers={"Authorization": f"Bearer {key}"},
                         timeout=30)
        assert r.status_code == 200, r.text
        return [e for e in r.json()["entries"] if e["client_id"] == keys.analyst_id]

    seen_by_admin = audit(keys.admin)
    assert [e["outcome"] for e in seen_by_admin] == ["forbidden", "released"]
    assert all(e["query"] is None for e in seen_by_admin) and seen_by_admin[1]["epsilon"] == 0.1
    assert "OP-TRIDENT" not in json.dumps(seen_by_admin)
    seen_by_oversight = audit(oversight_key)
    assert seen_by_oversight[1]["query"]["case_ref"] == "OP-TRIDENT-42"
    assert seen_by_oversight[1]["query"]["hours"] == [22, 23, 0, 1]
    for role_key in (keys.planner, keys.analyst):
        assert requests.get(srv.url + "/v1/admin/audit", headers={"Authorization": f"Bearer {role_key}"},
                            timeout=30).status_code == 403
    assert post(srv, oversight_key, "/v1/flows", {**WEEK, "zoning": "sectors", "epsilon": 0.1}).status_code == 403


# -- items 1 and 2: sharing groups and their allocations -------------------------------------------


def admin_call(srv: GunicornServer, keys: Keys, method: str, path: str, body: dict[str, Any]) -> requests.Response:
    return requests.request(method, srv.url + path, json=body, headers={"Authorization": f"Bearer {keys.admin}"},
                            timeout=30)


def test_queries_are_invisible_across_groups_and_shared_within_one(served) -> None:
    """Before: reuse was global and /v1/quote reported `reused` for free, so a planner found the analyst's exact
    query (week 3, hours 22-02, ε 0.1) in free quotes, then fetched it with its answer_id and released_at.
    Now an answer is reused, derived from and reported as reused only within the releasing client's group."""
    srv, keys, _ = served
    secret = {**WEEK, "zoning": "sectors", "hours": [22, 2], "epsilon": 0.1}
    asked = post(srv, keys.analyst, "/v1/flows", {**secret, "case_ref": "OP-1"}).json()
    assert asked["reused"] is False
    # The planner's search: every 4-hour span of the week at that ε, quoted for free; none is "reused".
    starts = [h for h in range(24) if (h + 4) % 24]  # an end hour of 0 is written 24
    quotes = {h: post(srv, keys.planner, "/v1/quote", {**secret, "hours": [h, (h + 4) % 24], "query": "flows"})
              for h in starts}
    assert all(q.status_code == 200 for q in quotes.values())
    assert [h for h, q in quotes.items() if q.json()["reused"]] == []  # before: [22]
    fetched = post(srv, keys.planner, "/v1/flows", secret).json()  # the exact query: a fresh release, charged
    assert fetched["reused"] is False and fetched["epsilon_charged"] == 0.1
    assert fetched["answer_id"] != asked["answer_id"] and fetched["released_at"] != asked["released_at"]
    assert fetched["values"] != asked["values"] or fetched["raw_values"] != asked.get("raw_values")
    # Nor is a foreign answer summed into a free one: the planner's districts never feed the analyst's sectors.
    fine = post(srv, keys.planner, "/v1/flows", {**WEEK, "zoning": "districts", "hours": [7, 10], "epsilon": 0.25})
    derived = post(srv, keys.analyst, "/v1/flows", {**WEEK, "zoning": "sectors", "hours": [7, 10], "epsilon": 0.02,
                                                     "derive": True, "case_ref": "OP-1"}).json()
    assert derived.get("derived_from") is None and derived["epsilon_charged"] == 0.02
    assert fine.json()["answer_id"] not in json.dumps(derived)
    # Only an admin groups clients, and `client:<id>` (a client alone) is no group name anyone can join.
    join = {"client_id": keys.planner_id, "group": f"client:{keys.analyst_id}"}
    assert admin_call(srv, keys, "POST", "/v1/admin/groups", join).status_code == 422
    assert requests.post(srv.url + "/v1/admin/groups", json={**join, "group": "g"}, timeout=30,
                         headers={"Authorization": f"Bearer {keys.planner}"}).status_code == 403
    # Within one group (an admin's choice), reuse and derivation are shared, with their ids.
    for client_id in (keys.planner_id, keys.analyst_id):
        r = admin_call(srv, keys, "POST", "/v1/admin/groups", {"client_id": client_id, "group": "joint-unit"})
        assert r.status_code == 200 and r.json()["group"] == "joint-unit"
    shared = {**WEEK, "zoning": "sectors", "hours": [6, 9], "epsilon": 0.1}
    first = post(srv, keys.analyst, "/v1/flows", {**shared, "case_ref": "OP-2"}).json()
    assert post(srv, keys.planner, "/v1/quote", {**shared, "query": "flows"}).json()["reused"] is True
    again = post(srv, keys.planner, "/v1/flows", shared).json()
    assert again["reused"] is True and again["answer_id"] == first["answer_id"] and again["epsilon_charged"] == 0
    fine2 = post(srv, keys.planner, "/v1/flows", {**WEEK, "zoning": "districts", "hours": [16, 19], "epsilon": 0.25})
    within = post(srv, keys.analyst, "/v1/flows", {**WEEK, "zoning": "sectors", "hours": [16, 19], "epsilon": 0.02,
                                                    "derive": True, "case_ref": "OP-2"}).json()
    assert within["derived_from"] == fine2.json()["answer_id"] and within["epsilon_charged"] == 0
    # Answers released before the move stay in the group they were released in (each client alone then):
    # neither the analyst's nor the planner's own earlier release of `secret` is found from the new group.
    assert post(srv, keys.planner, "/v1/quote", {**secret, "query": "flows"}).json()["reused"] is False


def test_spending_is_invisible_across_groups(served) -> None:
    """Before: /v1/budget returned global_spent, every budget_remaining was the smaller of the client's and the
    global remainder, and a refusal by the global cap said what remained globally: bisecting with free quotes
    showed when the police spent. Now a client sees its own cap and its group's allocation only."""
    srv, keys, _ = served
    assert admin_call(srv, keys, "PUT", "/v1/admin/caps", {"dataset": "small", "epsilon": 1.2}).status_code == 200

    def budget(key: str) -> list[dict[str, Any]]:
        r = requests.get(srv.url + "/v1/budget?dataset=small", headers={"Authorization": f"Bearer {key}"},
                         timeout=30)
        assert r.status_code == 200
        return r.json()["windows"]

    police = post(srv, keys.analyst, "/v1/flows", {**WEEK, "zoning": "sectors", "epsilon": 0.25, "case_ref": "c"})
    assert police.status_code == 200
    post(srv, keys.analyst, "/v1/flows", {**WEEK, "zoning": "sectors", "hours": [1, 5], "epsilon": 0.25,
                                          "case_ref": "c"})
    [week] = [w for w in budget(keys.planner) if w["window"] == 0]
    refused = post(srv, keys.planner, "/v1/flows", {**WEEK, "zoning": "districts", "epsilon": 0.8})
    quote = post(srv, keys.planner, "/v1/quote", {**WEEK, "zoning": "districts", "epsilon": 0.8, "query": "flows"})
    seen = {"budget": week, "refusal": refused.json(), "quote": quote.json()}
    assert "global_spent" not in week and "global_cap" not in week, seen
    assert week["remaining"] == 1.0, seen  # before: min(1, 1.2 - 0.5) = 0.7 showed the police's 0.5
    assert refused.status_code == 409
    error = refused.json()["error"]
    assert "global budget" in error["message"] and "0.7" not in json.dumps(error), seen  # before: "... of 0.7"
    assert "remaining" not in error.get("details", {})
    assert quote.status_code == 200 and quote.json()["windows"][0]["budget_remaining"] == 1.0
    assert set(week) >= {"cap", "spent", "remaining", "group", "group_cap"}
    # With allocations, the other group's spending cannot even refuse: each group has its own share.
    for client_id, group in ((keys.planner_id, "planning"), (keys.analyst_id, "police")):
        assert admin_call(srv, keys, "POST", "/v1/admin/groups",
                          {"client_id": client_id, "group": group}).status_code == 200
    assert admin_call(srv, keys, "PUT", "/v1/admin/caps", {"dataset": "small", "epsilon": 3}).status_code == 200
    for group, eps in (("planning", 1.0), ("police", 1.0)):
        r = admin_call(srv, keys, "PUT", "/v1/admin/caps", {"dataset": "small", "epsilon": eps, "group": group})
        assert r.status_code == 200
    over = admin_call(srv, keys, "PUT", "/v1/admin/caps", {"dataset": "small", "epsilon": 1.000000001,
                                                           "group": "oversight"})
    assert over.status_code == 422 and "above its global cap" in over.json()["error"]["message"]
    assert admin_call(srv, keys, "PUT", "/v1/admin/caps", {"dataset": "small", "epsilon": 1.9}).status_code == 422
    [week] = [w for w in budget(keys.planner) if w["window"] == 0]
    assert (week["group"], week["group_cap"], week["group_spent"], week["remaining"]) == ("planning", 1.0, 0, 1.0)
    [police_week] = [w for w in budget(keys.analyst) if w["window"] == 0]
    assert police_week["group"] == "police" and police_week["group_spent"] == 0  # spent before its allocation
