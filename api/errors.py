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

from dpflows.errors import DpflowsError

log = logging.getLogger("dpflows.api")

STATUS_BY_CODE = {
    "invalid_input": 422,
    "domain_too_large": 422,
    "invalid_data": 422,
    "mechanism_error": 422,
    "not_found": 404,
    "unauthenticated": 401,
    "forbidden": 403,
    "budget_exceeded": 409,
    "conflict": 409,
    "rate_limited": 429,
    "unavailable": 503,
    "data_unavailable": 503,
}

HTTP_CODES = {
    400: "bad_request", 401: "unauthenticated", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
    406: "not_acceptable", 409: "conflict", 413: "payload_too_large", 415: "unsupported_media_type",
    422: "invalid_input", 429: "rate_limited", 500: "internal_error", 503: "unavailable",
}


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
    status = STATUS_BY_CODE.get(exc.code, 422)
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
