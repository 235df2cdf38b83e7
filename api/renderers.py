"""Output formats as renderers of one answer record: JSON (default), CSV and GeoJSON.

Each renderer is registered once with its media type; the query views call `render_answer`,
which picks one from ``?format=`` or the Accept header, and the OpenAPI document declares every
media type from the same registry (`ANSWER_FORMATS`), so the document cannot drift from what
the service sends (tests/api/test_openapi_conformance.py checks real responses against it).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flask import Response, current_app, request

from dpflows import geo
from dpflows.budget import PrivacyLoss
from dpflows.service import Answer, WindowStatus
from dpflows.service.relative_change import RelativeChange


def window_charges(windows: list[WindowStatus], charged: PrivacyLoss) -> list[dict[str, Any]]:
    """Per window: the charge under its measure's name (epsilon_charged or rho_charged)."""
    return [{"window": w.window, "start": w.start, "end": w.end, f"{charged.unit}_charged": charged,
             "budget_remaining": w.remaining} for w in windows]


def answer_document(answer: Answer) -> dict[str, Any]:
    unit = answer.loss_of_release.unit  # "epsilon" or "rho"
    return {
        "answer_id": answer.answer_id,
        "query": answer.spec.canonical(),
        "values": answer.values,
        "accounting": answer.accounting,
        f"{unit}_charged": answer.charged,
        unit: answer.loss_of_release,
        **({"approx_dp": {"epsilon": answer.approx_epsilon, "delta": answer.delta}}
           if answer.approx_epsilon is not None else {}),
        "epsilon_derived_from_max_error": answer.loss_from_max_error,
        "windows": window_charges(answer.windows, answer.charged),
        "budget_remaining": answer.budget_remaining,
        "privacy_unit": answer.privacy_unit,
        "count_unit": answer.count_unit,
        "mechanism": {"name": answer.mechanism, "noise_scale": answer.noise_scale,
                      "sensitivity": answer.sensitivity},
        "error_bound_95": answer.error_bound_95,
        "confidence": answer.confidence,
        "reused": answer.reused,
        "postprocessing": answer.postprocessing,
        "released_at": answer.released_at,
        **{name: value for name, value in (
            ("raw_values", answer.raw_values), ("totals", answer.totals), ("raw_totals", answer.raw_totals),
            ("derived_from", answer.derived_from), ("value_error_bounds", answer.value_error_bounds),
            ("value_terms", answer.value_terms), ("uncovered_days", answer.uncovered_days)) if value is not None},
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
        "privacy_unit": change.current.privacy_unit,
        "current": answer_document(change.current), "baseline": answer_document(change.baseline),
    }


#: A spreadsheet runs a cell starting with one of these as a formula (CSV injection).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: Any) -> Any:
    """Text that a spreadsheet would run as a formula gets a leading apostrophe (shown as text);
    numbers stay numbers, negative ones included."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def csv_response(answer: Answer) -> Response:
    """text/csv: key columns, count and error_bound_95 per value; the answer's metadata in headers."""
    out = io.StringIO()
    raw = answer.raw_values
    writer = csv.DictWriter(out, fieldnames=[*answer.key_fields, "count", "error_bound_95",
                                             *(["raw_count"] if raw is not None else [])])
    writer.writeheader()
    bounds = answer.value_error_bounds or [answer.error_bound_95] * len(answer.values)
    for i, row in enumerate(answer.values):
        writer.writerow({**{name: csv_cell(value) for name, value in row.items()}, "error_bound_95": f"{bounds[i]:.3f}",
                         **({"raw_count": raw[i]} if raw is not None else {})})
    response = Response(out.getvalue(), mimetype="text/csv")
    response.headers.update({
        "X-Dpflows-Answer-Id": answer.answer_id,
        f"X-Dpflows-{answer.charged.unit.capitalize()}-Charged": str(answer.charged),
        "X-Dpflows-Budget-Remaining": str(answer.budget_remaining),
        "X-Dpflows-Error-Bound-95": f"{answer.error_bound_95:.6f}",
        "X-Dpflows-Privacy-Unit": answer.privacy_unit,
        "X-Dpflows-Reused": "true" if answer.reused else "false",
    })
    return response


def geojson_response(answer: Answer) -> Response:
    """application/geo+json: flows as lines between zone centroids, presence as zones (dpflows.geo)."""
    zoning = current_app.extensions["dpflows"].catalog.zoning(answer.spec.dataset, answer.spec.zoning)
    doc = geo.service_answer_geojson(answer, zoning)
    return Response(json.dumps(doc), mimetype="application/geo+json")


@dataclass(frozen=True)
class Renderer:
    media_type: str
    render: Callable[[Answer], Any]
    #: query kinds it can draw (None: all)
    kinds: tuple[str, ...] | None
    schema: dict[str, Any]
    description: str


RENDERERS: dict[str, Renderer] = {
    "json": Renderer("application/json", answer_document, None, {}, "the answer with its cost, budget and error"),
    "csv": Renderer("text/csv", csv_response, None, {"type": "string", "format": "binary"},
                    "key columns, count, error_bound_95 (and raw_count when post-processed); cost, budget, error "
                    "bound and privacy unit in X-Dpflows-* headers"),
    "geojson": Renderer("application/geo+json", geojson_response, ("flows", "presence", "inflows", "outflows",
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


def render_answer(answer: Answer, kind: str) -> Any:
    """The answer in the format asked by ?format= (else the Accept header); JSON by default."""
    name = request.args.get("format")
    if name is None:
        offered = [r.media_type for r in RENDERERS.values() if r.kinds is None or kind in r.kinds]
        best = request.accept_mimetypes.best_match(offered, default="application/json")
        if request.accept_mimetypes[best] <= request.accept_mimetypes["application/json"]:
            best = "application/json"
        name = next(n for n, r in RENDERERS.items() if r.media_type == best)
    renderer = RENDERERS.get(name)
    if renderer is None or (renderer.kinds is not None and kind not in renderer.kinds):
        renderer = RENDERERS["json"]
    return renderer.render(answer)
