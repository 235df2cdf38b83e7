"""Output formats as renderers of one answer record: JSON (default), CSV and GeoJSON.

Each renderer is registered once with its media type; the query views call `render_answer`,
which picks one from ``?format=`` or the Accept header, and the OpenAPI document declares every
media type from the same registry (`ANSWER_FORMATS`), so the document cannot drift from what
the service sends (tests/api/test_openapi_conformance.py checks real responses against it).

A renderer writes an answer's content (its columns: key fields and counts, never one dict per
key) into a `BodyTemplate` whose holes are the per-request fields; `render_answer` keeps the
template in the worker's body cache (api/body_cache.py), keyed by the answer's sharing group,
the answer, the query's options and the format, and fills the holes per request. A reused answer
is then served from bytes: nothing of it is rebuilt. Adding an answer shape (a sparse map of
released keys, say) means its fields in `answer_document` and the schema, and its columns in
the renderers' writers; the caching and the per-request fields stay as they are.
"""

from __future__ import annotations

import csv
import hashlib
import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from flask import Response, current_app, request

from api.auth import current_client
from api.body_cache import JSON_OPTIONS, BodyCache, BodyTemplate, Hole, encode_with_holes
from api.schemas import AnswerSchema
from dpflows import geo
from dpflows.budget import PrivacyLoss
from dpflows.service import Answer, WindowStatus
from dpflows.service.records import AnswerContent
from dpflows.service.relative_change import RelativeChange

#: The per-request fields of a rendered answer (every other field is the same for all its readers).
CHARGED, WINDOWS, BUDGET_REMAINING, REUSED = Hole("charged"), Hole("windows"), Hole("budget_remaining"), Hole("reused")
#: Where the encoded values go, once per rendering (they are the bulk of a body)
VALUES, FEATURES = Hole("values"), Hole("features")
_ANSWER_SCHEMA = AnswerSchema()

def window_charges(windows: list[WindowStatus], charged: PrivacyLoss) -> list[dict[str, Any]]:
    """Per window: the charge under its measure's name (epsilon_charged or rho_charged)."""
    return [{"window": w.window, "start": w.start, "end": w.end, f"{charged.unit}_charged": charged,
             "budget_remaining": w.remaining} for w in windows]


def answer_document(answer: Answer, values: Any = None) -> dict[str, Any]:
    """The answer as AnswerSchema documents it (before dumping); `values` defaults to one dict per key,
    which the renderers replace with the encoded columns (an orjson.Fragment)."""
    content = answer.content
    unit = content.loss_of_release.unit  # "epsilon" or "rho"
    return {
        "answer_id": answer.answer_id,
        "query": answer.spec.canonical(),
        "values": content.rows() if values is None else values,
        "accounting": answer.accounting,
        f"{unit}_charged": answer.charged,
        unit: content.loss_of_release,
        **({"approx_dp": {"epsilon": content.approx_epsilon, "delta": content.delta}}
           if content.approx_epsilon is not None else {}),
        "epsilon_derived_from_max_error": content.loss_from_max_error,
        "windows": window_charges(answer.windows, answer.charged),
        "budget_remaining": answer.budget_remaining,
        "privacy_unit": content.privacy_unit,
        "count_unit": content.count_unit,
        "mechanism": {"name": content.mechanism, "noise_scale": content.noise_scale,
                      "sensitivity": content.sensitivity},
        "error_bound_95": content.error_bound_95,
        "confidence": answer.confidence,
        "reused": answer.reused,
        "postprocessing": content.postprocessing,
        "released_at": answer.released_at,
        **{name: value for name, value in (
            ("raw_values", content.raw_values), ("totals", content.totals), ("raw_totals", content.raw_totals),
            ("derived_from", content.derived_from), ("value_error_bounds", content.value_error_bounds),
            ("value_terms", content.value_terms), ("uncovered_days", content.uncovered_days)) if value is not None},
    }


def relative_change_document(change: RelativeChange) -> dict[str, Any]:
    """The pair's per-zone changes, what the pair cost per window, and both answers in full."""
    answers = (change.current, change.baseline)
    unit = change.current.charged.unit
    per_window: dict[int, dict[str, Any]] = {}
    for answer in answers:  # the baseline's window statuses are the later ones: they win
        for w in answer.windows:
            entry = per_window.setdefault(w.window, {"window": w.window, "start": w.start, "end": w.end,
                                                     f"{unit}_charged": type(answer.charged).zero()})
            entry[f"{unit}_charged"] = entry[f"{unit}_charged"] + answer.charged
            entry["budget_remaining"] = w.remaining
    windows = [per_window[w] for w in sorted(per_window)]
    return {
        "zones": change.zones, "confidence": change.confidence, "current_days": change.current_days,
        "baseline_days": change.baseline_days, "method": change.method, "accounting": change.current.accounting,
        "windows": windows, "budget_remaining": min(w["budget_remaining"] for w in windows),
        "privacy_unit": change.current.content.privacy_unit,
        "current": answer_document(change.current, orjson.Fragment(values_json(change.current.content))),
        "baseline": answer_document(change.baseline, orjson.Fragment(values_json(change.baseline.content))),
    }


# -- JSON ---------------------------------------------------------------------------------------------

def values_json(content: AnswerContent, bodies: BodyCache | None = None, group: str = "") -> bytes:
    """The `values` array, [{key fields..., "count": n}, ...], encoded straight from the columns.

    The keys' part of every object is the same for all answers over one key domain, so it is written
    once into a template with a %d per count (kept in `bodies`, per sharing group: the domain shows
    the hours and zoning asked), and each answer costs one C-level formatting of its counts."""
    fields = content.key_fields
    columns = [content.keys[f] for f in fields]
    cache_key = ("values", group, fields, hashlib.blake2b(orjson.dumps(columns, option=JSON_OPTIONS)).digest())
    template = None if bodies is None else bodies.get(cache_key)
    if template is None:
        template = _values_template(fields, columns)
        if bodies is not None:
            bodies.put(cache_key, template, len(template))
    return template % tuple(content.counts)  # type: ignore[no-any-return]


def _values_template(fields: tuple[str, ...], columns: list[list[Any]]) -> bytes:
    """b'[{"origin":"a","destination":"b","count":%d},...]': keys encoded by orjson, each once."""
    encoded: dict[Any, bytes] = {}

    def enc(value: Any) -> bytes:
        out = encoded.get(value)
        if out is None:
            out = encoded[value] = orjson.dumps(value, option=JSON_OPTIONS).replace(b"%", b"%%")
        return out

    names = [orjson.dumps(f).replace(b"%", b"%%") + b":" for f in fields]
    rows = [b"{" + b"".join(n + enc(v) + b"," for n, v in zip(names, vals, strict=True)) + b'"count":%d}'
            for vals in zip(*columns, strict=True)] if columns else []
    return b"[" + b",".join(rows) + b"]"


def json_template(answer: Answer, bodies: BodyCache | None, group: str) -> BodyTemplate:
    """The answer as AnswerSchema dumps it (the same bytes as before templates), holes for the per-request fields."""
    doc = _ANSWER_SCHEMA.dump(answer_document(answer, VALUES))
    doc[f"{answer.charged.unit}_charged"] = CHARGED
    doc["windows"], doc["budget_remaining"], doc["reused"] = WINDOWS, BUDGET_REMAINING, REUSED
    return BodyTemplate("application/json", encode_with_holes(
        doc, newline=True, static={"values": values_json(answer.content, bodies, group)}))


def _loss_json(value: Any) -> float:
    if isinstance(value, PrivacyLoss):
        return value.to_json()  # as EpsilonField dumps it
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def request_fields(answer: Answer) -> dict[str, Callable[[], bytes]]:
    """The per-request fields, encoded as JSON as the schema dumps them (each only when a template asks for it):
    dates as ISO text (orjson's own), losses by `to_json` (PrivacyLoss is a dataclass: passed through to it)."""
    return {
        "charged": lambda: orjson.dumps(answer.charged.to_json()),
        "windows": lambda: orjson.dumps(window_charges(answer.windows, answer.charged), default=_loss_json,
                                        option=orjson.OPT_PASSTHROUGH_DATACLASS),
        "budget_remaining": lambda: orjson.dumps(answer.budget_remaining.to_json()),
        "reused": lambda: b"true" if answer.reused else b"false",
    }


def request_headers(answer: Answer) -> dict[str, Callable[[], str]]:
    """The per-request headers' values (CSV)."""
    return {"charged": lambda: str(answer.charged), "budget_remaining": lambda: str(answer.budget_remaining),
            "reused": lambda: "true" if answer.reused else "false"}


# -- CSV ----------------------------------------------------------------------------------------------

#: A spreadsheet runs a cell starting with one of these as a formula (CSV injection).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: Any) -> Any:
    """Text that a spreadsheet would run as a formula gets a leading apostrophe (shown as text);
    numbers stay numbers, negative ones included."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def csv_template(answer: Answer, bodies: BodyCache | None, group: str) -> BodyTemplate:
    """text/csv: key columns, count and error_bound_95 per value (raw_count when post-processed);
    the answer's metadata in headers, its cost and budget among them filled per request."""
    content = answer.content
    out = io.StringIO()
    writer = csv.writer(out)
    raw = content.raw_values
    writer.writerow([*content.key_fields, "count", "error_bound_95", *(["raw_count"] if raw is not None else [])])
    cells = [[csv_cell(v) for v in content.keys[f]] for f in content.key_fields]
    if content.value_error_bounds is not None:
        bounds: Any = [f"{b:.3f}" for b in content.value_error_bounds]
    else:
        bounds = [f"{content.error_bound_95:.3f}"] * len(content.counts)
    writer.writerows(zip(*cells, content.counts, bounds, *([raw] if raw is not None else []), strict=True))
    return BodyTemplate("text/csv", (out.getvalue().encode(),), (
        ("X-Dpflows-Answer-Id", answer.answer_id),
        (f"X-Dpflows-{answer.charged.unit.capitalize()}-Charged", CHARGED),
        ("X-Dpflows-Budget-Remaining", BUDGET_REMAINING),
        ("X-Dpflows-Error-Bound-95", f"{content.error_bound_95:.6f}"),
        ("X-Dpflows-Privacy-Unit", content.privacy_unit),
        ("X-Dpflows-Reused", REUSED),
    ))


# -- GeoJSON ------------------------------------------------------------------------------------------

def geojson_template(answer: Answer, bodies: BodyCache | None, group: str) -> BodyTemplate:
    """application/geo+json: flows as lines between zone centroids, presence as zones (dpflows.geo)."""
    content = answer.content
    zoning = current_app.extensions["dpflows"].catalog.zoning(answer.spec.dataset, answer.spec.zoning)
    meta = {**geo.answer_geojson_metadata(answer), f"{answer.charged.unit}_charged": CHARGED,
            "budget_remaining": BUDGET_REMAINING, "reused": REUSED}
    doc = geo.columns_geojson(answer.spec.kind, content.keys, content.counts, zoning, content.error_bound_95,
                              metadata=meta)
    features = orjson.dumps(doc["features"], option=JSON_OPTIONS)
    doc["features"] = FEATURES
    return BodyTemplate("application/geo+json", encode_with_holes(doc, static={"features": features}))


@dataclass(frozen=True)
class Renderer:
    media_type: str
    #: the answer rendered, its per-request fields left as holes (a key-template cache and the reader's group)
    template: Callable[[Answer, BodyCache | None, str], BodyTemplate]
    #: query kinds it can draw (None: all)
    kinds: tuple[str, ...] | None
    schema: dict[str, Any]
    description: str


RENDERERS: dict[str, Renderer] = {
    "json": Renderer("application/json", json_template, None, {}, "the answer with its cost, budget and error"),
    "csv": Renderer("text/csv", csv_template, None, {"type": "string", "format": "binary"},
                    "key columns, count, error_bound_95 (and raw_count when post-processed); cost, budget, error "
                    "bound and privacy unit in X-Dpflows-* headers"),
    "geojson": Renderer("application/geo+json", geojson_template, ("flows", "presence", "inflows", "outflows",
                                                                    "residents"),
                        {"type": "object", "properties": {"type": {"type": "string"},
                                                          "features": {"type": "array", "items": {"type": "object"}},
                                                          "properties": {"type": "object"}}},
                        "flows as lines between zone centroids; presence, in/outflows and residents as zone polygons "
                        "or points"),
}

#: ?format= on the query endpoints: documented here, read by `render_answer`.
FORMAT_PARAMETER = {
    "name": "format", "in": "query", "required": False,
    "schema": {"type": "string", "enum": list(RENDERERS)},
    "description": "; ".join(f"{name}: {r.description}" + ("" if r.kinds is None else f" ({', '.join(r.kinds)} only)")
                             for name, r in RENDERERS.items()) + "; also chosen by the Accept header",
}
#: The other media types of a query's 200 response (flask-smorest documents application/json itself).
ANSWER_FORMATS = {200: {"content": {r.media_type: {"schema": r.schema} for name, r in RENDERERS.items()
                                      if name != "json"}}}


def render_answer(answer: Answer, kind: str) -> Response:
    """The answer in the format asked by ?format= (else the Accept header); JSON by default.

    From the worker's body cache when this answer was rendered before in this format for the
    client's sharing group and the same options; else rendered now, and kept."""
    name = request.args.get("format")
    if name is None:
        offered = [r.media_type for r in RENDERERS.values() if r.kinds is None or kind in r.kinds]
        best = request.accept_mimetypes.best_match(offered, default="application/json")
        if request.accept_mimetypes[best] <= request.accept_mimetypes["application/json"]:
            best = "application/json"
        name = next(n for n, r in RENDERERS.items() if r.media_type == best)
    renderer = RENDERERS.get(name)
    if renderer is None or (renderer.kinds is not None and kind not in renderer.kinds):
        name, renderer = "json", RENDERERS["json"]
    bodies: BodyCache = current_app.extensions["dpflows"].bodies
    key = None if answer.body_key is None else (*answer.body_key, name)
    template = None if key is None else bodies.get(key)
    if template is None:
        template = renderer.template(answer, bodies, current_client().share_group)
        if key is not None:
            bodies.put(key, template, template.nbytes)
    fields, headers = request_fields(answer), request_headers(answer)
    return template.response(lambda field: fields[field](), lambda field: headers[field]())
