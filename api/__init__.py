"""The HTTP skin over dpflows: `create_app(config)` builds the Flask app.

Configuration: the settings of dpflows.settings (``DPFLOWS_*`` keys of `config`, else
environment variables of the same name, else defaults), read and validated once here; the rate
limits are api/ratelimit.py's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from flask import Flask, Response
from flask.json.provider import DefaultJSONProvider
from flask_smorest import Api

from api.body_cache import BodyCache
from api.errors import ErrorSchema, register_error_handlers
from api.logs import init_request_logging
from api.ratelimit import Bucket, RateLimits, SharedBuckets, default_path
from dpflows.aggregates import AggregateStore
from dpflows.counting import warm_flow_keys
from dpflows.errors import InvalidInput
from dpflows.ledger import open_ledger
from dpflows.ledger.high_water import HighWaterMark
from dpflows.ledger.high_water import default_path as default_high_water
from dpflows.service import Catalog, Policy, Service
from dpflows.settings import Settings, load_settings


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
    #: rendered answer bodies of this worker (api/body_cache.py)
    bodies: BodyCache

    @classmethod
    def init_app(cls, app: Flask, settings: Settings) -> DpflowsExtension:
        if str(settings.ledger_url).strip() == "memory://":
            # One ledger per worker, empty after every restart: budgets would not hold.
            raise InvalidInput("DPFLOWS_LEDGER_URL=memory:// keeps no budget across workers or restarts; the service "
                               "needs a durable ledger: sqlite:///PATH or postgresql://...", field="ledger_url")
        store = AggregateStore(settings.data_dir)
        policy = Policy.from_settings(settings)
        limits = RateLimits(
            SharedBuckets(settings.rate_limit_db or default_path(settings.ledger_url, settings.data_dir)),
            per_key=Bucket(settings.rate_limit, float(settings.rate_burst)),
            auth_failures=Bucket(settings.auth_failure_limit, float(settings.auth_failure_burst)),
            trusted_proxies=settings.trusted_proxies)
        ledger = open_ledger(settings.ledger_url)
        ledger.configure_audit_queue(window_s=settings.audit_flush_ms / 1000, max_rows=settings.audit_queue_rows)
        mark = HighWaterMark(settings.high_water_file or default_high_water(settings.ledger_url, settings.data_dir),
                             ledger)
        mark.check()  # a ledger restored from an older backup is refused here, before any request
        ext = cls(Service(store, ledger, policy, mark), Catalog(store), limits, BodyCache(settings.answer_cache_bytes))
        # After fork: gunicorn builds the app in each worker (preload_app = False), so each worker
        # pre-draws its own noise (dpflows/noise_pool.py); 0 turns the pool off.
        ext.service.start_noise_pool(settings.noise_pool_values)
        # Also after fork: map every dataset's windows in the background (shared pages, see
        # dpflows.aggregates); requests never wait for it, a window a request needs first is mapped then.
        # Then each trip row's flow key per zoning (dpflows.counting.warm_flow_keys), in a fixed order.
        flow_key_bytes = settings.flow_keys_bytes
        store.warm_in_background(lambda datasets: warm_flow_keys(datasets, flow_key_bytes) if flow_key_bytes else 0)
        app.extensions["dpflows"] = ext
        return ext


def create_app(config: dict[str, Any] | None = None) -> Flask:
    app = Flask(__name__)
    app.json = OrjsonProvider(app)
    settings = load_settings({k: v for k, v in (config or {}).items() if k.startswith("DPFLOWS_")})
    app.config.update(settings.as_config())
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
    app.config.update({k: v for k, v in (config or {}).items() if not k.startswith("DPFLOWS_")})
    init_request_logging(app)
    DpflowsExtension.init_app(app, settings)
    smorest = DpflowsApi(app)
    from api.admin_views import admin_blp  # importing it registers the admin routes on the blueprint
    from api.views import account_blp, health_blp, queries_blp

    for blp in (queries_blp, account_blp, admin_blp, health_blp):
        smorest.register_blueprint(blp)
    register_error_handlers(app)
    from api.planner import register_planner

    register_planner(app)
    return app
