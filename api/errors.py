"""One place that turns every error into one JSON shape.

    {"error": {"code": "<machine code>", "message": "<names field, value and fix>",
               "field": "<field>"?, "details": {...}?}}

`dpflows.errors.DpflowsError` codes map to HTTP statuses here and nowhere else. Anything else
becomes a 500 whose body says nothing of the exception: messages of unexpected exceptions can
carry data, and rule 4 says nothing exact ever reaches a client.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import marshmallow as ma
from flask import Flask, Response, g, jsonify, request
from werkzeug.exceptions import HTTPException

from dpflows.errors import (
    AuthenticationFailed,
    BudgetExceeded,
    Conflict,
    DpflowsError,
    InvalidInput,
    NotFound,
    PolicyViolation,
    RateLimited,
    Unavailable,
)

log = logging.getLogger("dpflows.api")

#: The one table from error classes to HTTP statuses; a subclass takes its nearest ancestor's.
STATUS_BY_CLASS: dict[type[DpflowsError], int] = {
    InvalidInput: 422,
    NotFound: 404,
    AuthenticationFailed: 401,
    PolicyViolation: 403,
    BudgetExceeded: 409,
    Conflict: 409,
    RateLimited: 429,
    Unavailable: 503,
}


def status_of(cls: type[DpflowsError]) -> int:
    return next((STATUS_BY_CLASS[c] for c in cls.__mro__ if c in STATUS_BY_CLASS), 422)


def family_of(cls: type[DpflowsError]) -> str:
    """The error family a client maps to its own exception class: the class right under DpflowsError."""
    return next(c.__name__ for c in cls.__mro__ if DpflowsError in c.__bases__)


def _subclasses(cls: type[DpflowsError]) -> list[type[DpflowsError]]:
    found = []
    for sub in cls.__subclasses__():
        found.append(sub)
        found.extend(_subclasses(sub))
    return found


def error_table() -> list[dict[str, Any]]:
    """Every error code the service sends, its HTTP status and family: `GET /v1/errors`, for clients and the page."""
    rows: dict[str, dict[str, Any]] = {}
    for cls in _subclasses(DpflowsError):
        rows.setdefault(cls.code, {"code": cls.code, "status": status_of(cls), "family": family_of(cls),
                                   "description": (cls.__doc__ or "").strip().split("\n")[0]})
    for status, code in HTTP_CODES.items():
        rows.setdefault(code, {"code": code, "status": status, "family": _FAMILY_BY_STATUS.get(status, "Error"),
                               "description": f"HTTP {status}"})
    return sorted(rows.values(), key=lambda r: (r["status"], r["code"]))

HTTP_CODES = {
    400: "bad_request", 401: "unauthenticated", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
    406: "not_acceptable", 409: "conflict", 413: "payload_too_large", 415: "unsupported_media_type",
    422: "invalid_input", 429: "rate_limited", 500: "internal_error", 503: "unavailable",
}


_FAMILY_BY_STATUS = {400: "InvalidInput", 413: "InvalidInput", 415: "InvalidInput", 422: "InvalidInput",
                     401: "AuthenticationFailed", 403: "PolicyViolation", 404: "NotFound", 409: "Conflict",
                     429: "RateLimited", 503: "Unavailable"}


INTERNAL_MESSAGE = (
    "internal error; no answer was sent. Retry the same query: if it was charged, the stored answer "
    "comes back at no cost"
)


class ErrorBodySchema(ma.Schema):
    code = ma.fields.String(required=True, metadata={"description": "machine-readable error code"})
    message = ma.fields.String(required=True, metadata={"description": "names the field, the value and the fix"})
    field = ma.fields.String(metadata={"description": "the request field at fault, when there is one"})
    details = ma.fields.Raw(metadata={"description": "structured extras, e.g. the remaining budget"})


class ErrorSchema(ma.Schema):
    error = ma.fields.Nested(ErrorBodySchema, required=True)


class ErrorCodeSchema(ma.Schema):
    code = ma.fields.String(required=True)
    status = ma.fields.Integer(required=True, metadata={"description": "the HTTP status sent with this code"})
    family = ma.fields.String(required=True, metadata={"description": "the kind of error: clients map families "
                                                                      "to their exception classes"})
    description = ma.fields.String(required=True)


class ErrorTableSchema(ma.Schema):
    errors = ma.fields.List(ma.fields.Nested(ErrorCodeSchema), required=True)


def error_response(status: int, code: str, message: str, *, field: str | None = None,
                   details: Any = None, headers: dict[str, str] | None = None) -> Response:
    body: dict[str, Any] = {"code": code, "message": message}
    if field is not None:
        body["field"] = field
    if details is not None:
        body["details"] = details
    response = jsonify({"error": body})
    response.status_code = status
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="dpflows"'
    for name, value in (headers or {}).items():
        response.headers[name] = value
    g.error_code = code
    return response


def handle_dpflows_error(exc: DpflowsError) -> Response:
    status = status_of(type(exc))
    headers = {}
    if status == 429 and isinstance(exc.details, dict) and "retry_after" in exc.details:
        headers["Retry-After"] = str(exc.details["retry_after"])
    return error_response(status, exc.code, exc.message, field=exc.field, details=exc.details, headers=headers)


def _shown(value: Any) -> str:
    """The client's own value, short, for an error message (it came from the request, not the data)."""
    text = "NaN" if isinstance(value, float) and value != value else json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def _sent_values(location: str) -> dict[str, Any]:
    if location == "json":
        body = request.get_json(silent=True)
        return body if isinstance(body, dict) else {}
    if location in ("query", "querystring"):
        return request.args.to_dict()
    return {}


def _validation_message(messages: Any) -> tuple[str, str | None]:
    """Flatten webargs' {"json": {"field": ["msg"]}} into 'field=value: msg; ...' and the first field."""
    parts: list[str] = []
    first: str | None = None

    def walk(prefix: str, node: Any, sent: dict[str, Any]) -> None:
        nonlocal first
        if isinstance(node, dict):
            for key, value in node.items():
                walk(f"{prefix}.{key}" if prefix else str(key), value, sent)
            return
        first = first or prefix
        top = prefix.split(".", 1)[0]
        name = f"{top}={_shown(sent[top])}" if top in sent else prefix
        text = " ".join(node) if isinstance(node, list) and all(isinstance(m, str) for m in node) else str(node)
        parts.append(f"{name}: {text}")

    if isinstance(messages, dict) and all(isinstance(v, dict) for v in messages.values()):
        for location, node in messages.items():
            walk("", node, _sent_values(location))
    else:
        walk("", messages, {})
    return "; ".join(parts) or "the request is not valid", first


def handle_http_exception(exc: HTTPException) -> Response:
    status = exc.code or 500
    code = HTTP_CODES.get(status, "error")
    data = getattr(exc, "data", None) or {}
    if status == 422 and "messages" in data:
        message, field = _validation_message(data["messages"])
        return error_response(422, "invalid_input", f"{message} (see /openapi.json for the request schema)",
                              field=field)
    if status == 413:
        return error_response(413, code, "request body too large; send at most 1 MiB")
    if status == 400:
        return error_response(400, code, "the body is not valid JSON; send a JSON object")
    if status == 500:
        return error_response(500, code, INTERNAL_MESSAGE)
    return error_response(status, code, exc.description or exc.name)


def handle_unexpected(exc: Exception) -> Response:
    # The exception text is never logged or sent: it could carry values from the data.
    log.error("unhandled %s in request %s", type(exc).__name__, getattr(g, "request_id", "-"))
    return error_response(500, "internal_error", INTERNAL_MESSAGE)


def register_error_handlers(app: Flask) -> None:
    app.register_error_handler(DpflowsError, handle_dpflows_error)
    app.register_error_handler(HTTPException, handle_http_exception)
    app.register_error_handler(Exception, handle_unexpected)
