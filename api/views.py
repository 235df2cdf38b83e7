"""The HTTP routes. Each view validates (schema), makes one call into dpflows, and dumps.

No view catches exceptions: `api.errors` maps the one exception tree in one place.
"""

from __future__ import annotations

import functools
import threading
from collections import OrderedDict
from typing import Any

from flask import Response, current_app, g, request
from flask_smorest import Blueprint as SmorestBlueprint
from webargs.flaskparser import FlaskParser, abort

import api.renderers as renderers
import api.schemas as schemas
from api.auth import current_client, require
from api.errors import ErrorSchema, ErrorTableSchema, error_table
from dpflows.accounting import accounting
from dpflows.budget import ApproxDP, Epsilon, Rho, parse_delta
from dpflows.queries import make_spec
from dpflows.query_kinds import KEY_FIELDS
from dpflows.service import QueryRequest, Service

BEARER = [{"bearerAuth": []}]
ERRORS = {401: "missing, unknown or revoked key", 403: "role or policy forbids it",
          413: "body too large (1 MiB; zoning uploads by an admin: DPFLOWS_MAX_UPLOAD_BYTES)",
          422: "invalid input", 503: "ledger or data unavailable",
          429: "rate limited (per key, or failed authentications per client address); see Retry-After"}

#: JSON bodies at most this long are remembered once validated (a query is ~150 bytes; uploads are not)
PARSED_BODY_MAX_BYTES = 4096
#: validated bodies each worker remembers, least recently used dropped first
PARSED_BODIES = 1024


def _copy(value: Any) -> Any:
    """A copy of parsed arguments: new dicts and lists; the rest (text, numbers, dates) is immutable."""
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


class BodyParser(FlaskParser):
    """webargs' parser, but a body nested too deeply for json.loads (RecursionError, else a 500) is a
    400 like any other malformed JSON. Parsed only when the view's arguments are, after `require`.

    A client sending the very bytes it sent before (a reused answer's request) gets the arguments it got
    then, without validating them again: the schemas depend on the body alone, and only valid bodies
    are remembered. Keyed by the authenticated client, so one client's hit never shows that another
    sent the same query (a faster answer would)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._parsed: OrderedDict[tuple[Any, ...], Any] = OrderedDict()
        self._parsed_lock = threading.Lock()

    def parse(self, argmap: Any, req: Any = None, *, location: str | None = None, **kwargs: Any) -> Any:
        client = g.get("client")
        if (client is None or (location or self.location) != "json" or request.mimetype != "application/json"
                or not 0 < (request.content_length or 0) <= PARSED_BODY_MAX_BYTES):
            return super().parse(argmap, req, location=location, **kwargs)
        key = (client.id, argmap, tuple(sorted(kwargs.items(), key=lambda kv: kv[0])),
               request.get_data(cache=True))
        try:
            hash(key)
        except TypeError:  # an argument of the decorator that cannot be a key: parse as always
            return super().parse(argmap, req, location=location, **kwargs)
        with self._parsed_lock:
            known = self._parsed.get(key)
            if known is not None:
                self._parsed.move_to_end(key)
        if known is not None:
            return _copy(known)  # views may change what they are given
        parsed = super().parse(argmap, req, location=location, **kwargs)
        with self._parsed_lock:
            self._parsed[key] = _copy(parsed)
            while len(self._parsed) > PARSED_BODIES:
                self._parsed.popitem(last=False)
        return parsed

    def _raw_load_json(self, req: Any) -> Any:
        try:
            return super()._raw_load_json(req)
        except RecursionError:
            abort(400, messages={"json": ["JSON nested too deeply"]})


class Blueprint(SmorestBlueprint):
    ARGUMENTS_PARSER = BodyParser()


queries_blp = Blueprint("queries", __name__, url_prefix="/v1", description="Differentially private queries")
account_blp = Blueprint("account", __name__, url_prefix="/v1", description="Budgets, datasets and zonings")
admin_blp = Blueprint("admin", __name__, url_prefix="/v1/admin", description="Admin: clients, keys, caps, audit")
health_blp = Blueprint("health", __name__, description="Liveness and readiness")


def upload_limit(view: Any) -> Any:
    """A body of up to DPFLOWS_MAX_UPLOAD_BYTES (polygon files run to megabytes) instead of 1 MiB.
    Placed after `require`, so only an authenticated caller of the right role gets it, and before
    the arguments, which read the body."""

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        request.max_content_length = int(current_app.config["DPFLOWS_MAX_UPLOAD_BYTES"])
        return view(*args, **kwargs)

    return wrapper


@admin_blp.after_request
def _drain_refused_upload(response: Response) -> Response:
    """A refused zoning upload (401, 403, 429: answered before its body was read) has its body read
    and dropped, so that gunicorn does not close a socket with unread data in it: nginx, which lets
    bodies of up to 32 MiB through to this route, would turn the reset into a 502. Never more than
    DPFLOWS_MAX_UPLOAD_BYTES is read."""
    if (request.endpoint == "admin.add_zoning" and response.status_code in (401, 403, 429)
            and 0 < (request.content_length or 0) <= int(current_app.config["DPFLOWS_MAX_UPLOAD_BYTES"])):
        stream = request.environ.get("wsgi.input")
        while stream is not None and stream.read(1 << 16):
            pass
    return response


def run_query(kind: str, body: dict[str, Any]) -> Any:
    answer = service().answer(query_request(kind, body), current_client())
    setattr(g, f"{answer.charged.unit}_charged", answer.charged)  # for the request log line (api.logs)
    return renderers.render_answer(answer, kind)


def service() -> Service:
    return current_app.extensions["dpflows"].service  # type: ignore[no-any-return]


def _document_errors(blp: Blueprint, *codes: int) -> Any:
    def decorate(view: Any) -> Any:
        for code in codes:
            view = blp.alt_response(code, schema=ErrorSchema, description=ERRORS.get(code, ""))(view)
        return view
    return decorate


def query_doc(kind: str) -> Any:
    """A query operation's OpenAPI: bearer auth, `?format` and its media types, and `x-key-fields`, the
    fields that key the answer's values, which the planner page reads instead of keeping a copy."""
    return queries_blp.doc(security=BEARER, parameters=[renderers.FORMAT_PARAMETER], responses=renderers.ANSWER_FORMATS,
                           **{"x-key-fields": list(KEY_FIELDS[kind])})


def query_request(kind: str, body: dict[str, Any]) -> QueryRequest:
    spec = make_spec(
        kind, dataset=body["dataset"], zoning=body["zoning"], start=body["start"], end=body["end"],
        hours=body.get("hours"), weekdays=body.get("weekdays"),
        measure=body.get("measure") if kind == "patterns" else None,
        zone=body.get("zone") if kind == "patterns" else None,
        place=body.get("place") if kind == "residents" else None,
    )
    epsilon, rho = body.get("epsilon"), body.get("rho")
    return QueryRequest(
        spec,
        epsilon=None if epsilon is None else Epsilon.parse(epsilon),
        rho=None if rho is None else Rho.parse(rho),
        max_error=body.get("max_error"),
        confidence=body["confidence"],
        clamp_negative=body["clamp_negative"],
        consistent=body["consistent"],
        derive=body["derive"],
        case_ref=body.get("case_ref"),
        delta=None if body.get("delta") is None else parse_delta(body["delta"]),
    )


# -- queries ------------------------------------------------------------------------------------
# Request schemas are given as instances: given a class, webargs builds (deep-copies) one per request.

@queries_blp.route("/flows", methods=["POST"])
@require("planner", "analyst", "admin")
@queries_blp.arguments(schemas.FlowsQuerySchema())
@queries_blp.response(200, schemas.AnswerSchema, description="Origin-destination counts between zones")
@_document_errors(queries_blp, 401, 403, 404, 409, 422, 429, 503)
@query_doc("flows")
def flows(body: dict[str, Any]) -> Any:
    """Trips from each zone to each zone, every pair released (zeros noised too)."""
    return run_query("flows", body)


@queries_blp.route("/presence", methods=["POST"])
@require("planner", "analyst", "admin")
@queries_blp.arguments(schemas.PresenceQuerySchema())
@queries_blp.response(200, schemas.AnswerSchema, description="Person-hours per zone and hour of day")
@_document_errors(queries_blp, 401, 403, 404, 409, 422, 429, 503)
@query_doc("presence")
def presence(body: dict[str, Any]) -> Any:
    """Presence (distinct person-cell-hours) per zone and hour of day."""
    return run_query("presence", body)


@queries_blp.route("/patterns", methods=["POST"])
@require("planner", "analyst", "admin")
@queries_blp.arguments(schemas.PatternsQuerySchema())
@queries_blp.response(200, schemas.AnswerSchema, description="Weekday × hour profile")
@_document_errors(queries_blp, 401, 403, 404, 409, 422, 429, 503)
@query_doc("patterns")
def patterns(body: dict[str, Any]) -> Any:
    """Hour-of-day × weekday profile of trips (departures) or presence, for one zone or the whole area."""
    return run_query("patterns", body)


@queries_blp.route("/inflows", methods=["POST"])
@require("planner", "analyst", "admin")
@queries_blp.arguments(schemas.ZoneTotalsQuerySchema())
@queries_blp.response(200, schemas.AnswerSchema, description="Trips arriving in each zone")
@_document_errors(queries_blp, 401, 403, 404, 409, 422, 429, 503)
@query_doc("inflows")
def inflows(body: dict[str, Any]) -> Any:
    """Trips arriving in each zone (one noisy value per zone, far more accurate than summing a column of flows);
    a trip within one zone arrives there too."""
    return run_query("inflows", body)


@queries_blp.route("/outflows", methods=["POST"])
@require("planner", "analyst", "admin")
@queries_blp.arguments(schemas.ZoneTotalsQuerySchema())
@queries_blp.response(200, schemas.AnswerSchema, description="Trips leaving each zone")
@_document_errors(queries_blp, 401, 403, 404, 409, 422, 429, 503)
@query_doc("outflows")
def outflows(body: dict[str, Any]) -> Any:
    """Trips leaving each zone; a trip within one zone leaves it too."""
    return run_query("outflows", body)


@queries_blp.route("/residents", methods=["POST"])
@require("planner", "analyst", "admin")
@queries_blp.arguments(schemas.ResidentsQuerySchema())
@queries_blp.response(200, schemas.AnswerSchema, description="People whose home (or work) cell lies in each zone")
@_document_errors(queries_blp, 401, 403, 404, 409, 422, 429, 503)
@query_doc("residents")
def residents(body: dict[str, Any]) -> Any:
    """Residents (place home) or workers (place work) per zone and window; each person counts at most once per
    window (sensitivity 1). Whole windows only."""
    return run_query("residents", body)


@queries_blp.route("/commuting", methods=["POST"])
@require("planner", "analyst", "admin")
@queries_blp.arguments(schemas.CommutingQuerySchema())
@queries_blp.response(200, schemas.AnswerSchema, description="Home zone → work zone counts per window")
@_document_errors(queries_blp, 401, 403, 404, 409, 422, 429, 503)
@query_doc("commuting")
def commuting(body: dict[str, Any]) -> Any:
    """People living in one zone and working in another, per window (sensitivity 1). Whole windows only."""
    return run_query("commuting", body)


@queries_blp.route("/relative-change", methods=["POST"])
@require("planner", "analyst", "admin")
@queries_blp.arguments(schemas.RelativeChangeQuerySchema())
@queries_blp.response(200, schemas.RelativeChangeSchema, description="% change of presence per zone vs a baseline")
@_document_errors(queries_blp, 401, 403, 404, 409, 422, 429, 503)
@queries_blp.doc(security=BEARER)
def relative_change(body: dict[str, Any]) -> Any:
    """Presence per zone and counted day against the same weekdays and hours of a baseline period, in %.

    Two presence answers, both charged (or reused, or derived for free with `derive`); their joint
    cost is checked first, so a refusal charges nothing. Each zone's interval holds at `confidence`.
    """
    baseline_start, baseline_end = body.pop("baseline_start"), body.pop("baseline_end")
    change = service().relative_change(query_request("presence", body), baseline_start, baseline_end,
                                       current_client())
    return renderers.relative_change_document(change)


@queries_blp.route("/quote", methods=["POST"])
@require("planner", "analyst", "admin")
@queries_blp.arguments(schemas.QuoteQuerySchema())
@queries_blp.response(200, schemas.QuoteSchema, description="What the query would cost; nothing charged")
@_document_errors(queries_blp, 401, 403, 404, 422, 429, 503)
@queries_blp.doc(security=BEARER)
def quote(body: dict[str, Any]) -> Any:
    """Price a query without touching data or budget: ε (and δ), windows, error bound, reuse; whether it is
    released densely or sparsely, and a sparse answer's threshold."""
    kind = body.pop("query")
    q = service().quote(query_request(kind, body), current_client())
    unit = q.loss.unit  # "epsilon" or "rho", by the dataset's accounting
    return {
        "accounting": q.accounting, unit: q.loss, f"{unit}_charged": q.charged,
        **({"delta": q.loss.delta_as_float(), "delta_charged": q.charged.delta_as_float(),
            "release": "dense" if q.threshold is None else "sparse"} if isinstance(q.loss, ApproxDP) else {}),
        **({"threshold": q.threshold} if q.threshold is not None else {}),
        "epsilon_derived_from_max_error": q.loss_from_max_error, "error_bound_95": q.error_bound_95,
        "confidence": q.confidence, "windows": renderers.window_charges(q.windows, q.charged),
        "reused": q.reused, "privacy_unit": q.privacy_unit, "count_unit": q.count_unit,
        **({"derived_from": q.derived_from} if q.derived_from else {}),
        "mechanism": {"name": q.mechanism, "noise_scale": q.noise_scale, "sensitivity": q.sensitivity,
                      **({"threshold": q.threshold, "contribution": q.contribution}
                         if q.threshold is not None else {})},
    }


# -- account: budget, datasets, zonings ------------------------------------------------------------

@account_blp.route("/budget", methods=["GET"])
@require()
@account_blp.arguments(schemas.BudgetQuerySchema, location="query")
@account_blp.response(200, schemas.BudgetSchema)
@_document_errors(account_blp, 401, 404, 422, 429, 503)
@account_blp.doc(security=BEARER)
def budget(args: dict[str, Any]) -> Any:
    """Your caps, spending and remaining budget in every window of a dataset."""
    client = current_client()
    status = service().budget_status(client, args["dataset"])
    with_delta = accounting(service().dataset(args["dataset"]).metadata.accounting).loss_type.carries_delta
    return {
        "dataset": args["dataset"], "client": client.name,
        "privacy_unit": service().dataset(args["dataset"]).metadata.privacy_unit,
        "accounting": service().dataset(args["dataset"]).metadata.accounting,
        # Never the global cap, the pool or their spending: other groups' queries would show (issue 17).
        "windows": [{"window": w.window, "start": w.start, "end": w.end, "cap": w.budget.client_cap,
                     "spent": w.budget.client_spent, "group": w.budget.group, "group_cap": w.budget.group_cap,
                     "group_spent": None if w.budget.group_cap is None else w.budget.group_spent,
                     "group_unit": None if w.budget.group_cap is None else w.budget.unit,
                     "remaining": w.remaining,
                     **({"spent_approx_dp": w.spent_approx_dp} if w.spent_approx_dp is not None else {}),
                     **(_delta_budget(w) if with_delta else {})}
                    for w in status],
    }


@account_blp.route("/datasets", methods=["GET"])
@require()
@account_blp.response(200, schemas.DatasetSchema(many=True))
@_document_errors(account_blp, 401, 429, 503)
@account_blp.doc(security=BEARER)
def datasets() -> Any:
    """Datasets with their time span, windows, bounds and zonings (all public)."""
    return current_app.extensions["dpflows"].catalog.datasets()


@account_blp.route("/datasets/<string:dataset>/bounding-report", methods=["GET"])
@require("admin", "planner")
@account_blp.response(200, schemas.BoundingReportSchema)
@_document_errors(account_blp, 401, 403, 404, 409, 429, 503)
@account_blp.doc(security=BEARER)
def bounding_report(dataset: str) -> Any:
    """How much contribution bounding drops and a suggested bound, from the dataset's noisy bounding report.

    The report was released once at ingestion; its ε is charged against the global cap in every
    window before it (or any answer) is served, so reading it costs nothing (409 until it can be charged).
    """
    return service().bounding_report(dataset, current_client())


@account_blp.route("/datasets/<string:dataset>/zonings/<string:zoning>", methods=["GET"])
@require()
@account_blp.response(200, schemas.ZoningSchema)
@_document_errors(account_blp, 401, 404, 429, 503)
@account_blp.doc(security=BEARER)
def zoning(dataset: str, zoning: str) -> Any:
    """A zoning's zones (cells per zone, centroid), the public cell catalog, and geometry if loaded."""
    return current_app.extensions["dpflows"].catalog.zoning(dataset, zoning)


def _delta_budget(status: Any) -> dict[str, Any]:
    """An approximate-DP window's δ: your cap, what you spent, what remains (your group's allocation too)."""
    budget = status.budget
    return {"delta_cap": None if budget.client_cap is None else budget.client_cap.delta_as_float(),
            "delta_spent": budget.client_spent.delta_as_float(),
            "delta_remaining": status.remaining.delta_as_float(),
            **({"group_delta_cap": budget.group_cap.delta_as_float(),
                "group_delta_spent": budget.group_spent.delta_as_float()} if budget.group_cap is not None else {})}


# -- health -----------------------------------------------------------------------------------------

@health_blp.route("/healthz", methods=["GET"])
@health_blp.response(200, schemas.HealthSchema)
def healthz() -> Any:
    """The process is up."""
    return {"status": "ok", "checks": {}}


@account_blp.route("/errors", methods=["GET"])
@account_blp.response(200, ErrorTableSchema)
def errors() -> Any:
    """Every error code with its HTTP status and family: clients and the page map errors from this table."""
    return {"errors": error_table()}


@health_blp.route("/readyz", methods=["GET"])
@health_blp.response(200, schemas.HealthSchema)
@_document_errors(health_blp, 503)
def readyz() -> Any:
    """The ledger answers and the data root is readable."""
    return {"status": "ok", "checks": service().readiness()}
