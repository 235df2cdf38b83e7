"""Structured request logs: one JSON line per request, never a value, key or person id.

Logged: request id, worker pid, client id (a number), method, route pattern, status, error code, ε
charged (queries only), duration. Not logged: bodies, query strings, headers, answer values, exception texts.
"""

from __future__ import annotations

import itertools
import logging
import os
import sys
import time
import uuid

import orjson
from flask import Flask, Response, g, request


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {"ts": round(record.created, 3), "level": record.levelname, "logger": record.name,
               "msg": record.getMessage()}
        extra = getattr(record, "fields", None)
        if isinstance(extra, dict):
            doc.update(extra)
        return orjson.dumps(doc, default=str).decode()  # compact, as json.dumps(separators=(",", ":")) wrote


def configure_logging() -> None:
    root = logging.getLogger("dpflows")
    if not any(isinstance(h.formatter, JsonFormatter) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        root.propagate = False


def _epsilon(value: object) -> str | None:
    return None if value is None else str(value)


_ids: tuple[int, str, itertools.count[int]] | None = None


def _new_request_id() -> str:
    """32 hex digits unique per request: a random prefix per process (drawn again after a fork) and a counter,
    instead of a uuid4 (a getrandom call) per request. Not a secret: clients may send their own."""
    global _ids
    if _ids is None or _ids[0] != os.getpid():
        _ids = (os.getpid(), uuid.uuid4().hex[:20], itertools.count())
    return f"{_ids[1]}{next(_ids[2]):012x}"


def init_request_logging(app: Flask) -> None:
    configure_logging()
    log = logging.getLogger("dpflows.api.request")

    @app.before_request
    def _start() -> None:
        g.request_id = request.headers.get("X-Request-Id", "")[:64] or _new_request_id()
        g.started = time.perf_counter()

    @app.after_request
    def _log(response: Response) -> Response:
        client = getattr(g, "client", None)
        fields = {
            "request_id": getattr(g, "request_id", None),
            "pid": os.getpid(),  # which gunicorn worker answered
            "client_id": None if client is None else client.id,
            "method": request.method,
            "route": request.url_rule.rule if request.url_rule else None,
            "status": response.status_code,
            "error": getattr(g, "error_code", None),
            "epsilon_charged": _epsilon(getattr(g, "epsilon_charged", None)),
            "ms": round((time.perf_counter() - getattr(g, "started", time.perf_counter())) * 1000, 2),
        }
        rho = getattr(g, "rho_charged", None)
        if rho is not None:  # zCDP datasets charge ρ, logged under its own name
            fields["rho_charged"] = _epsilon(rho)
        charged = getattr(g, "epsilon_charged", None)
        if charged is not None and charged.delta_attos:  # approximate DP: ε and δ apart
            fields["epsilon_charged"] = _epsilon(type(charged)(charged.nanos))
            fields["delta_charged"] = charged.delta_as_float()
        response.headers["X-Request-Id"] = fields["request_id"] or ""
        log.info("request", extra={"fields": fields})
        return response
