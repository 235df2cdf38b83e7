"""Validated bodies remembered per client (issue 16: a reused answer's request is not validated again): the
same bytes from the same client get the same arguments, views that change their arguments get a copy, an
invalid body is refused every time, and one client's remembered body is never another's."""

from __future__ import annotations

from flask import Flask
from flask.testing import FlaskClient

from api.views import queries_blp
from tests.api.conftest import FLOWS, Keys


def _parser_memory(app: Flask) -> dict:
    return queries_blp.ARGUMENTS_PARSER._parsed  # type: ignore[attr-defined,no-any-return]


def test_a_quote_sent_twice_is_answered_twice_though_its_view_pops_its_arguments(client: FlaskClient,
                                                                                keys: Keys) -> None:
    body = {**FLOWS, "query": "flows"}
    first = client.post("/v1/quote", json=body, headers=keys.h("planner"))
    second = client.post("/v1/quote", json=body, headers=keys.h("planner"))
    assert first.status_code == second.status_code == 200, second.get_data(as_text=True)
    assert first.json == second.json  # the view popped "query" from a copy, not from what is remembered


def test_an_invalid_body_is_refused_every_time_and_never_remembered(app: Flask, client: FlaskClient,
                                                                    keys: Keys) -> None:
    bad = {**FLOWS, "epsilon": -1}
    before = len(_parser_memory(app))
    for _ in range(2):
        r = client.post("/v1/flows", json=bad, headers=keys.h("planner"))
        assert r.status_code == 422 and "epsilon" in r.get_data(as_text=True)
    assert len(_parser_memory(app)) == before


def test_remembered_bodies_are_per_client_and_answers_stay_each_clients_own(app: Flask, client: FlaskClient,
                                                                           keys: Keys) -> None:
    memory = _parser_memory(app)
    memory.clear()
    first = client.post("/v1/flows", json=FLOWS, headers=keys.h("planner"))
    again = client.post("/v1/flows", json=FLOWS, headers=keys.h("planner"))
    assert first.status_code == again.status_code == 200
    assert again.json["reused"] is True and again.json["values"] == first.json["values"]
    assert again.json["epsilon_charged"] == 0 and first.json["epsilon_charged"] == 0.25
    assert {key[0] for key in memory} == {keys.planner_id}
    other = client.post("/v1/flows", json=FLOWS, headers=keys.h("analyst"))  # same bytes, another client
    assert other.status_code == 200
    assert {key[0] for key in memory} == {keys.planner_id, keys.analyst_id}  # validated for it, not found
