"""The HTTP skin over dpflows: `create_app(config)` builds the Flask app.

Configuration (keys of `config`, else environment variables of the same name):
DPFLOWS_DATA_DIR (aggregate store root, default ./var/data), DPFLOWS_LEDGER_URL (default
sqlite:///./var/ledger.db), DPFLOWS_PLANNER_MAX_EPSILON (1), DPFLOWS_ANALYST_MAX_EPSILON (0.25),
DPFLOWS_RATE_LIMIT (requests per second per key, shared by all workers of a host, 50),
DPFLOWS_RATE_BURST (100), DPFLOWS_AUTH_FAILURE_LIMIT (failed authentications per second per
client address, 1), DPFLOWS_AUTH_FAILURE_BURST (20), DPFLOWS_TRUSTED_PROXIES (peers whose
X-Real-IP / X-Forwarded-For name the client address: 127.0.0.1,::1,unix), DPFLOWS_RATE_LIMIT_DB
(the limiter's SQLite file; default beside a SQLite ledger). See api/ratelimit.py.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import orjson
from flask import Flask, Response
from flask.json.provider import DefaultJSONProvider
from flask_smorest import Api

from api.errors import ErrorSchema, register_error_handlers
from api.logs import init_request_logging
from api.ratelimit import Bucket, RateLimits, SharedBuckets, default_path
from dpflows.aggregates import AggregateStore
from dpflows.budget import Epsilon
from dpflows.errors import InvalidInput
from dpflows.ledger import open_ledger
from dpflows.service import Catalog, Policy, Service

DEFAULTS = {
    "DPFLOWS_DATA_DIR": "./var/data",
    "DPFLOWS_LEDGER_URL": "sqlite:///./var/ledger.db",
    "DPFLOWS_PLANNER_MAX_EPSILON": "1",
    "DPFLOWS_ANALYST_MAX_EPSILON": "0.25",
    "DPFLOWS_RATE_LIMIT": "50",
    "DPFLOWS_RATE_BURST": "100",
    "DPFLOWS_AUTH_FAILURE_LIMIT": "1",
    "DPFLOWS_AUTH_FAILURE_BURST": "20",
    "DPFLOWS_TRUSTED_PROXIES": "127.0.0.1,::1,unix",
    "DPFLOWS_RATE_LIMIT_DB": "",
}


class OrjsonProvider(DefaultJSONProvider):
    """orjson for responses: answers with 10,000 keys encode ~10× faster than with the stdlib.
    Integers beyond 64 bits (only ever echoed from a client's bad input) fall back to the stdlib."""

    def _encode(self, obj: Any, option: int = 0) -> bytes:
        try:
            return orjson.dumps(obj, default=self.default, option=orjson.OPT_NON_STR_KEYS | option)
        except TypeError:
            return super().dumps(obj).encode() + (b"\n" if option & orjson.OPT_APPEND_NEWLINE else b"")

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        return self._encode(obj).decode()

    def response(self, *args: Any, **kwargs: Any) -> Response:
        obj = self._prepare_response_obj(args, kwargs)
        return self._app.response_class(self._encode(obj, orjson.OPT_APPEND_NEWLINE), mimetype=self.mimetype)


class DpflowsApi(Api):
    """flask-smorest's Api, documenting dpflows' one error shape as the default error."""

    ERROR_SCHEMA = ErrorSchema


@dataclass
class DpflowsExtension:
    """What views reach through `current_app.extensions["dpflows"]`."""

    service: Service
    catalog: Catalog
    rate_limits: RateLimits

    @classmethod
    def init_app(cls, app: Flask) -> DpflowsExtension:
        cfg = app.config
        if str(cfg["DPFLOWS_LEDGER_URL"]).strip() == "memory://":
            # One ledger per worker, empty after every restart: budgets would not hold.
            raise InvalidInput("DPFLOWS_LEDGER_URL=memory:// keeps no budget across workers or restarts; the service "
                               "needs a durable ledger: sqlite:///PATH or postgresql://...", field="ledger_url")
        store = AggregateStore(cfg["DPFLOWS_DATA_DIR"])
        policy = Policy(planner_max_epsilon=Epsilon.parse(cfg["DPFLOWS_PLANNER_MAX_EPSILON"]),
                        analyst_max_epsilon=Epsilon.parse(cfg["DPFLOWS_ANALYST_MAX_EPSILON"]))
        limits = RateLimits(
            SharedBuckets(cfg["DPFLOWS_RATE_LIMIT_DB"] or default_path(cfg["DPFLOWS_LEDGER_URL"],
                                                                       cfg["DPFLOWS_DATA_DIR"])),
            per_key=Bucket(float(cfg["DPFLOWS_RATE_LIMIT"]), float(cfg["DPFLOWS_RATE_BURST"])),
            auth_failures=Bucket(float(cfg["DPFLOWS_AUTH_FAILURE_LIMIT"]), float(cfg["DPFLOWS_AUTH_FAILURE_BURST"])),
            trusted_proxies=cfg["DPFLOWS_TRUSTED_PROXIES"])
        ext = cls(Service(store, open_ledger(cfg["DPFLOWS_LEDGER_URL"]), policy), Catalog(store), limits)
        app.extensions["dpflows"] = ext
        return ext


def create_app(config: dict[str, Any] | None = None) -> Flask:
    app = Flask(__name__)
    app.json = OrjsonProvider(app)
    for key, default in DEFAULTS.items():
        app.config[key] = os.environ.get(key, default)
    app.config.update(
        API_TITLE="dpflows",
        API_VERSION="1",
        OPENAPI_VERSION="3.0.3",
        OPENAPI_URL_PREFIX="/",
        OPENAPI_JSON_PATH="openapi.json",
        OPENAPI_REDOC_PATH="/docs",
        OPENAPI_REDOC_URL="/static/vendor/redoc.standalone.js",
        MAX_CONTENT_LENGTH=1024 * 1024,
        JSON_SORT_KEYS=False,
        API_SPEC_OPTIONS={
            "info": {"description": "Differentially private mobility statistics. Every answer states its cost, "
                                    "remaining budget, privacy unit and 95% error bound."},
            "components": {"securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer"}}},
        },
    )
    app.config.update(config or {})
    init_request_logging(app)
    DpflowsExtension.init_app(app)
    api = DpflowsApi(app)
    from api.views import account_blp, admin_blp, health_blp, queries_blp

    for blp in (queries_blp, account_blp, admin_blp, health_blp):
        api.register_blueprint(blp)
    register_error_handlers(app)
    from api.planner import register_planner

    register_planner(app)
    return app
