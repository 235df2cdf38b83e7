"""The HTTP skin over dpflows: `create_app(config)` builds the Flask app.

Configuration (keys of `config`, else environment variables of the same name):
DPFLOWS_DATA_DIR (aggregate store root, default ./var/data), DPFLOWS_LEDGER_URL (default
sqlite:///./var/ledger.db), DPFLOWS_PLANNER_MAX_EPSILON (1), DPFLOWS_ANALYST_MAX_EPSILON (0.25),
DPFLOWS_RATE_LIMIT (requests per second per key and worker, 50), DPFLOWS_RATE_BURST (100),
DPFLOWS_MAX_UPLOAD_BYTES (largest body of an admin zoning upload, which may carry GeoJSON polygons:
32 MiB; every other request is limited to 1 MiB).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import orjson
from flask import Flask, Response
from flask.json.provider import DefaultJSONProvider
from flask_smorest import Api
from werkzeug.exceptions import BadRequest

from api.auth import RateLimiter
from api.errors import ErrorSchema, register_error_handlers
from api.logs import init_request_logging
from dpflows.aggregates import AggregateStore
from dpflows.budget import Epsilon
from dpflows.ledger import open_ledger
from dpflows.service import Catalog, Policy, Service

DEFAULTS = {
    "DPFLOWS_DATA_DIR": "./var/data",
    "DPFLOWS_LEDGER_URL": "sqlite:///./var/ledger.db",
    "DPFLOWS_PLANNER_MAX_EPSILON": "1",
    "DPFLOWS_ANALYST_MAX_EPSILON": "0.25",
    "DPFLOWS_RATE_LIMIT": "50",
    "DPFLOWS_RATE_BURST": "100",
    "DPFLOWS_MAX_UPLOAD_BYTES": str(32 * 1024 * 1024),
}
#: Endpoints whose bodies may exceed MAX_CONTENT_LENGTH, up to DPFLOWS_MAX_UPLOAD_BYTES.
UPLOAD_ENDPOINTS = frozenset({"admin.add_zoning"})


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


def allow_uploads() -> None:
    """Zoning uploads carry polygons (census tracts run to megabytes): a larger body limit for those
    admin endpoints, set before anything reads the body, and only for a valid admin key, so that
    nobody else can make a worker parse a large body (the view authenticates again, as always)."""
    from flask import current_app, request

    from api.auth import bearer_key
    from dpflows.errors import DpflowsError

    if request.endpoint not in UPLOAD_ENDPOINTS:
        return
    try:
        client = current_app.extensions["dpflows"].service.authenticate(bearer_key())
    except DpflowsError:
        return  # refused by the view's own check, with the body at the ordinary limit
    if client.role == "admin":
        request.max_content_length = int(current_app.config["DPFLOWS_MAX_UPLOAD_BYTES"])


def reject_deep_json() -> None:
    """webargs parses bodies with json.loads, which raises RecursionError (a 500) on very deep
    nesting; parse once here so such a body is a 400 like any other malformed JSON."""
    from flask import request

    if request.is_json and request.content_length:
        try:
            json.loads(request.get_data(cache=True))
        except RecursionError:
            raise BadRequest("JSON nested too deeply") from None
        except ValueError:
            pass  # webargs reports ordinary malformed JSON itself


class DpflowsApi(Api):
    """flask-smorest's Api, documenting dpflows' one error shape as the default error."""

    ERROR_SCHEMA = ErrorSchema


@dataclass
class DpflowsExtension:
    """What views reach through `current_app.extensions["dpflows"]`."""

    service: Service
    catalog: Catalog
    rate_limiter: RateLimiter

    @classmethod
    def init_app(cls, app: Flask) -> DpflowsExtension:
        cfg = app.config
        store = AggregateStore(cfg["DPFLOWS_DATA_DIR"])
        policy = Policy(planner_max_epsilon=Epsilon.parse(cfg["DPFLOWS_PLANNER_MAX_EPSILON"]),
                        analyst_max_epsilon=Epsilon.parse(cfg["DPFLOWS_ANALYST_MAX_EPSILON"]))
        ext = cls(Service(store, open_ledger(cfg["DPFLOWS_LEDGER_URL"]), policy), Catalog(store),
                  RateLimiter(float(cfg["DPFLOWS_RATE_LIMIT"]), int(cfg["DPFLOWS_RATE_BURST"])))
        app.extensions["dpflows"] = ext
        return ext


def create_app(config: dict[str, Any] | None = None) -> Flask:
    app = Flask(__name__)
    app.json = OrjsonProvider(app)
    app.before_request(allow_uploads)
    app.before_request(reject_deep_json)
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
