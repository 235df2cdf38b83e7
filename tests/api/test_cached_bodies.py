"""Answers rendered from columns and served again as cached bytes (issue 16 items 2 and 3): byte for byte what
the per-row renderers sent before, with each request's own cost, budget and reuse flag; never across groups."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from pathlib import Path
from typing import Any

import orjson
import pytest
from flask import Flask, g

import api.renderers as renderers
from api import create_app
from api.body_cache import BodyCache
from api.schemas import AnswerSchema
from dpflows import geo
from dpflows.budget import Epsilon, PrivacyLoss, Rho
from dpflows.ledger import Client
from dpflows.queries import make_spec
from dpflows.service import Answer, QueryRequest, Service
from tests.conftest import build_small_dataset

D0 = dt.date(2024, 3, 4)


# -- the renderers as they were before issue 16 (rows of dicts, then the schema and orjson): the reference ----

def old_window_charges(windows: list[Any], charged: PrivacyLoss) -> list[dict[str, Any]]:
    return [{"window": w.window, "start": w.start, "end": w.end, f"{charged.unit}_charged": charged,
             "budget_remaining": w.budget.remaining} for w in windows]


def old_answer_document(answer: Answer) -> dict[str, Any]:
    unit = answer.loss_of_release.unit
    return {
        "answer_id": answer.answer_id, "query": answer.spec.canonical(), "values": answer.values,
        "accounting": answer.accounting, f"{unit}_charged": answer.charged, unit: answer.loss_of_release,
        **({"approx_dp": {"epsilon": answer.approx_epsilon, "delta": answer.delta}}
           if answer.approx_epsilon is not None else {}),
        "epsilon_derived_from_max_error": answer.loss_from_max_error,
        "windows": old_window_charges(answer.windows, answer.charged), "budget_remaining": answer.budget_remaining,
        "privacy_unit": answer.privacy_unit, "count_unit": answer.count_unit,
        "mechanism": {"name": answer.mechanism, "noise_scale": answer.noise_scale, "sensitivity": answer.sensitivity},
        "error_bound_95": answer.error_bound_95, "confidence": answer.confidence, "reused": answer.reused,
        "postprocessing": answer.postprocessing, "released_at": answer.released_at,
        **{name: value for name, value in (
            ("raw_values", answer.raw_values), ("totals", answer.totals), ("raw_totals", answer.raw_totals),
            ("derived_from", answer.derived_from), ("value_error_bounds", answer.value_error_bounds),
            ("value_terms", answer.value_terms), ("uncovered_days", answer.uncovered_days)) if value is not None},
    }


def old_json(answer: Answer) -> bytes:
    """What flask-smorest sent: the schema's dump, through the app's orjson provider."""
    return orjson.dumps(AnswerSchema().dump(old_answer_document(answer)),
                        option=orjson.OPT_NON_STR_KEYS | orjson.OPT_APPEND_NEWLINE)


def old_csv(answer: Answer) -> tuple[str, dict[str, str]]:
    out = io.StringIO()
    raw = answer.raw_values
    writer = csv.DictWriter(out, fieldnames=[*answer.key_fields, "count", "error_bound_95",
                                             *(["raw_count"] if raw is not None else [])])
    writer.writeheader()
    bounds = answer.value_error_bounds or [answer.error_bound_95] * len(answer.values)
    for i, row in enumerate(answer.values):
        writer.writerow({**{name: renderers.csv_cell(value) for name, value in row.items()},
                         "error_bound_95": f"{bounds[i]:.3f}", **({"raw_count": raw[i]} if raw is not None else {})})
    return out.getvalue(), {
        "X-Dpflows-Answer-Id": answer.answer_id,
        f"X-Dpflows-{answer.charged.unit.capitalize()}-Charged": str(answer.charged),
        "X-Dpflows-Budget-Remaining": str(answer.budget_remaining),
        "X-Dpflows-Error-Bound-95": f"{answer.error_bound_95:.6f}",
        "X-Dpflows-Privacy-Unit": answer.privacy_unit,
        "X-Dpflows-Reused": "true" if answer.reused else "false",
    }


# -- fixtures -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bodies")
    build_small_dataset(root, "small")
    build_small_dataset(root, "smallz", accounting="zcdp")
    build_small_dataset(root, "smallp", places=True)
    return root


@pytest.fixture
def app(root: Path, tmp_path: Path) -> Flask:
    return create_app({"DPFLOWS_DATA_DIR": str(root), "DPFLOWS_LEDGER_URL": f"sqlite:///{tmp_path}/ledger.db",
                       "TESTING": True})


def funded(service: Service, name: str, group: str | None = None) -> Client:
    client, _ = service.create_client(name, "planner")
    if group is not None:
        client = service.set_group(client.id, group)
    for dataset, loss in (("small", Epsilon.parse("5")), ("smallp", Epsilon.parse("5")), ("smallz", Rho.parse("1"))):
        service.set_cap(dataset, loss, client_id=client.id, window=None)
    # the three share the root's population, whose global cap is in ρ (it holds a zCDP dataset; issue 17)
    service.set_cap("smallz", Rho.parse("50"), client_id=None, window=None)
    return client


def render(app: Flask, client: Client, answer: Answer, fmt: str) -> Any:
    with app.test_request_context(f"/v1/{answer.spec.kind}?format={fmt}", method="POST"):
        g.client = client
        return renderers.render_answer(answer, answer.spec.kind)


def request_for(dataset: str, kind: str, **kw: Any) -> QueryRequest:
    window_kind = kind in ("residents", "commuting")
    spec = make_spec(kind, dataset=dataset, zoning=kw.pop("zoning", "districts"), start=D0,
                     end=D0 + dt.timedelta(days=14 if window_kind else 7),
                     hours=None if window_kind else kw.pop("hours", [7, 10]),
                     place=kw.pop("place", None), measure=kw.pop("measure", None))
    price = {"rho": Rho.parse("0.01")} if dataset == "smallz" else {"epsilon": Epsilon.parse("0.1")}
    return QueryRequest(spec, **price, **kw)


CASES = [
    ("flows", "small", {}),
    ("flows", "small", {"consistent": True}),
    ("flows", "small", {"clamp_negative": True, "confidence": 0.9}),
    ("presence", "small", {}),
    ("patterns", "small", {"measure": "presence"}),
    ("inflows", "small", {}),
    ("flows", "smallz", {}),
    ("presence", "smallz", {"zoning": "cell", "hours": [8, 9]}),
    ("residents", "smallp", {"place": "home"}),
    ("commuting", "smallp", {"clamp_negative": True}),
]


@pytest.mark.parametrize(("kind", "dataset", "options"), CASES)
def test_fresh_and_cached_bodies_are_the_bytes_the_row_renderers_sent(app: Flask, kind: str, dataset: str,
                                                                      options: dict[str, Any]) -> None:
    service = app.extensions["dpflows"].service
    client = funded(service, "p")
    fresh = service.answer(request_for(dataset, kind, **dict(options)), client)
    again = service.answer(request_for(dataset, kind, **dict(options)), client)
    assert not fresh.reused and again.reused and "content" not in again.__dict__  # nothing read yet
    bodies: BodyCache = app.extensions["dpflows"].bodies
    for answer in (fresh, again):  # the fresh answer renders and caches; the reuse is served from bytes
        hits = bodies.hits
        response = render(app, client, answer, "json")
        assert response.get_data() == old_json(answer)
        assert response.mimetype == "application/json"
        text, headers = old_csv(answer)
        response = render(app, client, answer, "csv")
        assert response.get_data(as_text=True) == text and response.mimetype == "text/csv"
        assert {k: v for k, v in response.headers.items() if k.startswith("X-Dpflows")} == headers
        if kind in ("flows", "presence", "inflows", "residents"):
            response = render(app, client, answer, "geojson")
            zoning = app.extensions["dpflows"].catalog.zoning(dataset, answer.spec.zoning)
            assert json.loads(response.get_data()) == json.loads(json.dumps(geo.service_answer_geojson(answer, zoning)))
        if answer is again:
            assert bodies.hits >= hits + 2  # served from the cache


def test_a_derived_answer_is_rendered_each_time(app: Flask) -> None:
    service = app.extensions["dpflows"].service
    client = funded(service, "p")
    fine = request_for("small", "flows", hours=[7, 10])
    service.answer(fine, client)
    coarse = QueryRequest(make_spec("flows", dataset="small", zoning="sectors", start=D0, end=D0 + dt.timedelta(7),
                                    hours=[7, 10]), epsilon=Epsilon.parse("0.02"), derive=True)
    derived = service.answer(coarse, client)
    assert derived.derived_from is not None and derived.body_key is None
    assert render(app, client, derived, "json").get_data() == old_json(derived)
    assert old_csv(derived)[0] == render(app, client, derived, "csv").get_data(as_text=True)


def test_a_body_is_only_ever_served_to_the_group_that_released_it(app: Flask) -> None:
    """Two groups ask the same query: each gets its own release, and the cached bodies never cross."""
    service = app.extensions["dpflows"].service
    police, transit = funded(service, "police-1", "police"), funded(service, "transit-1", "transit")
    colleague = funded(service, "police-2", "police")
    ask = request_for("small", "flows")
    mine = service.answer(ask, police)
    render(app, police, mine, "json")
    theirs = service.answer(ask, transit)
    assert not theirs.reused and theirs.answer_id != mine.answer_id
    body = render(app, transit, theirs, "json").get_json()
    assert body["answer_id"] == theirs.answer_id and body["values"] == theirs.values != mine.values
    shared = service.answer(ask, colleague)
    assert shared.reused and shared.answer_id == mine.answer_id
    assert render(app, colleague, shared, "json").get_json()["values"] == mine.values
    bodies: BodyCache = app.extensions["dpflows"].bodies
    groups = {key[0] if key[0] != "values" else key[1] for key in bodies._items}
    assert groups == {"police", "transit"}  # every body and key template is filed under its group


def test_the_cache_holds_at_most_its_bound_least_recently_used_first() -> None:
    cache = BodyCache(1000)
    for n in range(10):
        cache.put(("g", n), n, 300)
        assert cache.held <= 1000
    assert len(cache) == 3 and cache.get(("g", 9)) == 9 and cache.get(("g", 6)) is None
    cache.get(("g", 7))
    cache.put(("g", 10), 10, 300)  # drops 8, the least recently used, not 7
    assert cache.get(("g", 7)) == 7 and cache.get(("g", 8)) is None
    cache.put(("g", "huge"), "x", 1001)  # larger than the bound: not kept, nothing dropped
    assert cache.get(("g", "huge")) is None and len(cache) == 3
    off = BodyCache(0)
    off.put(("g", 1), 1, 1)
    assert off.get(("g", 1)) is None


def test_the_cache_bound_is_a_setting(root: Path, tmp_path: Path) -> None:
    app = create_app({"DPFLOWS_DATA_DIR": str(root), "DPFLOWS_LEDGER_URL": f"sqlite:///{tmp_path}/l.db",
                      "DPFLOWS_ANSWER_CACHE_BYTES": "5000", "TESTING": True})
    service = app.extensions["dpflows"].service
    client = funded(service, "p")
    for hours in ([7, 10], [8, 10], [9, 10]):
        answer = service.answer(request_for("small", "presence", hours=hours), client)
        assert render(app, client, answer, "json").get_data() == old_json(answer)
    assert app.extensions["dpflows"].bodies.held <= 5000


def test_keys_are_encoded_exactly_as_orjson_encodes_them() -> None:
    """Zone labels are free text: every code point, quotes, backslashes and '%' come out as orjson writes them."""
    from dpflows.service.records import AnswerContent

    labels = ["a%d", "%", 'q"uote', "back\\slash", "é", "日本", "😀", "\u2028", "x" * 200]
    labels += ["".join(chr(c) for c in range(start, start + 64) if not 0xD800 <= c <= 0xDFFF)
               for start in range(0x20, 0x3000, 64)]
    content = AnswerContent(key_fields=("zone", "hour"), keys={"zone": labels, "hour": list(range(len(labels)))},
                            counts=[(-1) ** n * n * 1000 for n in range(len(labels))], loss_of_release=Epsilon(1),
                            loss_from_max_error=False, privacy_unit="u", mechanism="m", noise_scale=1.0,
                            sensitivity=1.0, error_bound_95=1.0, postprocessing=[], release_windows=(0,))
    cache = BodyCache(10**7)
    for _ in range(2):  # built, then from the cached key template
        assert renderers.values_json(content, cache, "g") == orjson.dumps(content.rows())
    empty = AnswerContent(**{**content.__dict__, "keys": {"zone": [], "hour": []}, "counts": []})
    assert renderers.values_json(empty) == b"[]"
