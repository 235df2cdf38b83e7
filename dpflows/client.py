"""A Python client for the dpflows HTTP API: typed calls, answers as Polars frames, typed errors.

The one place in ``dpflows`` that speaks HTTP, as a client only: it uses the standard
library's ``urllib.request`` and imports neither Flask nor ``api``. Every answer keeps what
the service said about its cost and accuracy next to the values::

    client = DpflowsClient("http://127.0.0.1:8000", api_key)
    quote = client.quote("flows", "city", "districts", "2024-03-04", "2024-03-11", epsilon=0.25)
    answer = client.flows("city", "districts", "2024-03-04", "2024-03-11", epsilon=0.25)
    answer.values          # polars: origin, destination, count, error_bound_95, lower, upper
    answer.budget_remaining, answer.reused, answer.windows
    answer.to_geojson()    # for GIS tools (see dpflows.geo)

Errors mirror the API's error codes (``{"error": {"code", "message", "field"}}``)::

    DpflowsClientError                 .code .status .field .message
    ├── InvalidInputError              invalid_input, domain_too_large, invalid_data (422), bad JSON (400)
    ├── AuthenticationError            unauthenticated (401)
    ├── ForbiddenError                 forbidden (403)
    ├── NotFoundError                  not_found (404)
    ├── BudgetExceededError            budget_exceeded (409): nothing was charged
    ├── ConflictError                  conflict (409)
    ├── RateLimitedError               rate_limited (429), .retry_after seconds if given
    └── UnavailableError               unavailable, data_unavailable (503)
        └── ConnectionFailedError      the service could not be reached at all
"""

from __future__ import annotations

import datetime as dt
import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import polars as pl

from dpflows import geo

QUERY_KINDS = ("flows", "presence", "patterns")
KEY_FIELDS = {"flows": ("origin", "destination"), "presence": ("zone", "hour"), "patterns": ("weekday", "hour")}
_KEY_DTYPES = {"origin": pl.String, "destination": pl.String, "zone": pl.String, "hour": pl.Int64,
               "weekday": pl.Int64}

# -- errors ------------------------------------------------------------------------------------


class DpflowsClientError(Exception):
    """An error answer from the service (or no answer at all), with the API's code and field."""

    def __init__(self, message: str, *, code: str = "error", status: int | None = None,
                 field: str | None = None, details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status
        self.field = field
        self.details = details

    def __str__(self) -> str:
        where = f" (field {self.field})" if self.field else ""
        status = f"HTTP {self.status} " if self.status else ""
        return f"{status}{self.code}: {self.message}{where}"


class InvalidInputError(DpflowsClientError):
    """The request was malformed or named something impossible; fix the field it names."""


class AuthenticationError(DpflowsClientError):
    """Missing, unknown or revoked API key."""


class ForbiddenError(DpflowsClientError):
    """The key's role or a per-query ε cap forbids this query."""


class NotFoundError(DpflowsClientError):
    """Unknown dataset, zoning, client or key."""


class BudgetExceededError(DpflowsClientError):
    """A budget cap would be exceeded; nothing was charged and nothing released."""


class ConflictError(DpflowsClientError):
    """A name is already taken."""


class RateLimitedError(DpflowsClientError):
    """Too many requests for this key; wait ``retry_after`` seconds (if the service said)."""

    retry_after: float | None = None


class UnavailableError(DpflowsClientError):
    """The service cannot answer now (ledger or data unavailable); nothing was charged."""


class ConnectionFailedError(UnavailableError):
    """No HTTP answer at all: connection refused, DNS failure or timeout."""


ERRORS_BY_CODE: dict[str, type[DpflowsClientError]] = {
    "invalid_input": InvalidInputError,
    "domain_too_large": InvalidInputError,
    "invalid_data": InvalidInputError,
    "mechanism_error": InvalidInputError,
    "bad_request": InvalidInputError,  # malformed JSON
    "payload_too_large": InvalidInputError,
    "unsupported_media_type": InvalidInputError,
    "unauthenticated": AuthenticationError,
    "forbidden": ForbiddenError,
    "not_found": NotFoundError,
    "budget_exceeded": BudgetExceededError,
    "conflict": ConflictError,
    "rate_limited": RateLimitedError,
    "unavailable": UnavailableError,
    "data_unavailable": UnavailableError,
}
ERRORS_BY_STATUS: dict[int, type[DpflowsClientError]] = {
    400: InvalidInputError, 401: AuthenticationError, 403: ForbiddenError, 404: NotFoundError,
    409: ConflictError, 422: InvalidInputError, 429: RateLimitedError, 503: UnavailableError,
}


def error_from_response(status: int, body: Any, headers: Any = None) -> DpflowsClientError:
    """The typed exception for an error answer: by the API's code, else by HTTP status.

    ``headers`` is anything with ``.get(name, default)`` (a dict or an ``email.message.Message``).
    """
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict):
        code = str(err.get("code", "error"))
        message = str(err.get("message", "")) or f"HTTP {status}"
        cls = ERRORS_BY_CODE.get(code) or ERRORS_BY_STATUS.get(status, DpflowsClientError)
        exc = cls(message, code=code, status=status, field=err.get("field"), details=err.get("details"))
    else:
        cls = ERRORS_BY_STATUS.get(status, DpflowsClientError)
        exc = cls(f"HTTP {status} without a dpflows error body", code=f"http_{status}", status=status)
    if isinstance(exc, RateLimitedError) and headers is not None:
        try:
            exc.retry_after = float(headers.get("Retry-After", ""))
        except ValueError:
            exc.retry_after = None
    return exc


# -- answers -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class WindowCharge:
    """One privacy window a query touched: what it cost there and what is left there."""

    window: int
    start: dt.date
    end: dt.date  # exclusive
    epsilon_charged: float | None  # ρ on datasets accounted in zCDP (the answer's `accounting` says)
    budget_remaining: float

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> WindowCharge:
        charged = doc.get("epsilon_charged", doc.get("rho_charged"))
        return cls(int(doc["window"]), _date(doc["start"]), _date(doc["end"]),
                   None if charged is None else float(charged),
                   float(doc.get("budget_remaining", doc.get("remaining", 0.0))))


@dataclass(frozen=True)
class Mechanism:
    name: str
    noise_scale: float
    sensitivity: float | None  # ℓ1 (an integer, discrete Laplace) or ℓ2 (discrete Gaussian)


@dataclass(frozen=True)
class QueryAnswer:
    """A released answer: values with per-value error bounds, and what the release cost."""

    kind: str
    answer_id: str
    query: dict[str, Any]
    values: pl.DataFrame  # key columns, count, error_bound_95, lower, upper
    epsilon_charged: float | None  # None on datasets accounted in zCDP: see rho_charged
    windows: list[WindowCharge]
    budget_remaining: float
    privacy_unit: str
    mechanism: Mechanism
    error_bound_95: float
    confidence: float
    reused: bool
    postprocessing: list[Any]
    raw: dict[str, Any] = field(repr=False)
    _zoning_loader: Callable[[], dict[str, Any]] | None = field(default=None, repr=False, compare=False)
    accounting: str = "pure_dp"  # or "zcdp": charges and budgets are then ρ
    rho_charged: float | None = None
    approx_dp: dict[str, float] | None = None  # zCDP: this release's ρ as (ε, δ), for display
    #: with consistent=True or clamp_negative=True: the unbiased noisy values (sum these)
    raw_values: list[int] | None = None
    totals: dict[str, Any] | None = None  # consistent=True: totals of `values`, which agree
    raw_totals: dict[str, Any] | None = None  # consistent=True: totals of raw_values, with their bounds
    derived_from: str | None = None  # derive=True: the released answer this one sums, at no cost

    def to_pandas(self) -> Any:
        """The values as a pandas DataFrame (needs pandas and pyarrow installed)."""
        return self.values.to_pandas()

    def to_geojson(self, zoning: Mapping[str, Any] | None = None, **options: Any) -> dict[str, Any]:
        """A GeoJSON FeatureCollection of this answer on its zoning (fetched if not given)."""
        if zoning is None:
            if self._zoning_loader is None:
                raise ValueError("pass the zoning document (DpflowsClient.zoning(dataset, zoning))")
            zoning = self._zoning_loader()
        meta = {"answer_id": self.answer_id, "query": self.query, "epsilon_charged": self.epsilon_charged,
                "privacy_unit": self.privacy_unit, "confidence": self.confidence, "reused": self.reused,
                "postprocessing": self.postprocessing}
        rows = self.values.select([*KEY_FIELDS[self.kind], "count"]).to_dicts()
        return geo.answer_geojson(self.kind, rows, zoning, self.error_bound_95, metadata=meta, **options)


@dataclass(frozen=True)
class Quote:
    """What a query would cost, without spending: ε (ρ on zCDP datasets), accuracy, windows, and whether it is free."""

    epsilon: float  # ρ when raw["accounting"] == "zcdp"
    epsilon_charged: float  # 0 when an identical answer exists and would be reused
    error_bound_95: float
    reused: bool
    windows: list[WindowCharge]
    raw: dict[str, Any] = field(repr=False)


_ZONE_CHANGE_SCHEMA = {"zone": pl.String, "current_per_day": pl.Float64, "baseline_per_day": pl.Float64,
                       "change_pct": pl.Float64, "change_pct_low": pl.Float64, "change_pct_high": pl.Float64,
                       "current_error_bound": pl.Float64, "baseline_error_bound": pl.Float64}


@dataclass(frozen=True)
class RelativeChangeAnswer:
    """Per-zone % change with its interval, what the pair cost per window, and both answers."""

    zones: pl.DataFrame  # zone, current_per_day, baseline_per_day, change_pct, change_pct_low/high, bounds
    confidence: float  # of each zone's interval (not simultaneous over zones)
    windows: list[WindowCharge]
    budget_remaining: float
    current: QueryAnswer
    baseline: QueryAnswer
    raw: dict[str, Any] = field(repr=False)


@dataclass(frozen=True)
class BudgetWindow:
    """One window of a client's budget: its cap, what it spent, and what it can still spend."""

    window: int
    start: dt.date
    end: dt.date  # exclusive
    cap: float | None  # None: no cap set, nothing to spend
    spent: float
    global_cap: float | None
    global_spent: float
    budget_remaining: float  # the tighter of the client's and the global cap

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> BudgetWindow:
        def opt(key: str) -> float | None:
            return None if doc.get(key) is None else float(doc[key])

        return cls(int(doc["window"]), _date(doc["start"]), _date(doc["end"]), opt("cap"),
                   float(doc.get("spent") or 0.0), opt("global_cap"), float(doc.get("global_spent") or 0.0),
                   float(doc.get("remaining", doc.get("budget_remaining", 0.0))))


@dataclass(frozen=True)
class Budget:
    """A client's budget on one dataset, per window."""

    dataset: str
    windows: list[BudgetWindow]
    raw: dict[str, Any] = field(repr=False)

    @property
    def budget_remaining(self) -> float:
        """The least left in any window (what a query over the whole span could still spend)."""
        value = self.raw.get("budget_remaining")
        if value is not None:
            return float(value)
        return min((w.budget_remaining for w in self.windows), default=0.0)


@dataclass(frozen=True)
class DatasetInfo:
    """Public facts about a dataset: span, privacy windows, contribution bounds, zonings."""

    name: str
    first_day: dt.date
    end_day: dt.date  # exclusive
    window_days: int
    windows: int
    bounds: dict[str, int]  # the sensitivity of every count: {"trips": L_trips, "presence": L_presence}
    privacy_unit: str
    zonings: list[dict[str, Any]]  # {name, zones, coarse}
    raw: dict[str, Any] = field(repr=False)

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> DatasetInfo:
        return cls(str(doc["name"]), _date(doc["first_day"]), _date(doc["end_day"]), int(doc.get("window_days", 0)),
                   int(doc.get("windows", 0)), {k: int(v) for k, v in (doc.get("bounds") or {}).items()},
                   str(doc.get("privacy_unit", "")), list(doc.get("zonings") or []), dict(doc))


@dataclass(frozen=True)
class KeyInfo:
    """An API key as listings show it: its id (for revoke_key) and first characters, never the key."""

    id: int
    prefix: str
    created_at: str
    revoked_at: str | None

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> KeyInfo:
        return cls(int(doc["id"]), str(doc.get("prefix", "")), str(doc.get("created_at", "")), doc.get("revoked_at"))


@dataclass(frozen=True)
class ClientInfo:
    id: int
    name: str
    role: str
    keys: list[KeyInfo]  # filled by list_clients; empty elsewhere
    raw: dict[str, Any] = field(repr=False)

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> ClientInfo:
        keys = [KeyInfo.from_json(k) for k in doc.get("keys") or []]
        return cls(int(doc["id"]), str(doc["name"]), str(doc["role"]), keys, dict(doc))


@dataclass(frozen=True)
class IssuedKey:
    """A new API key for a client, shown this once (its id for revoke_key is in list_clients)."""

    client: ClientInfo
    api_key: str = field(repr=False)

    @property
    def prefix(self) -> str:
        """The characters listings show for this key (``dpf_`` and six more)."""
        return self.api_key[:10]

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> IssuedKey:
        return cls(ClientInfo.from_json(doc["client"]), str(doc["api_key"]))


def _date(value: Any) -> dt.date:
    return value if isinstance(value, dt.date) else dt.date.fromisoformat(str(value)[:10])


def _iso(value: dt.date | str) -> str:
    return value.isoformat() if isinstance(value, dt.date) else str(value)


def values_frame(kind: str, values: list[Mapping[str, Any]], error_bound_95: float,
                 value_error_bounds: list[float] | None = None) -> pl.DataFrame:
    """Released values as a frame with each value's ± interval (lower clipped at 0).

    Derived answers state a bound per value (`value_error_bounds`); others one for all.
    """
    keys = KEY_FIELDS[kind]
    schema = {k: _KEY_DTYPES[k] for k in keys} | {"count": pl.Int64}
    frame = pl.DataFrame([{k: row[k] for k in schema} for row in values], schema=schema, orient="row")
    bound = (pl.Series("error_bound_95", [float(b) for b in value_error_bounds], dtype=pl.Float64)
             if value_error_bounds is not None else pl.lit(float(error_bound_95), dtype=pl.Float64))
    frame = frame.with_columns(bound.alias("error_bound_95"))
    return frame.with_columns(
        (pl.col("count") - pl.col("error_bound_95")).clip(lower_bound=0.0).alias("lower"),
        (pl.col("count") + pl.col("error_bound_95")).alias("upper"),
    )


# -- the client --------------------------------------------------------------------------------


class DpflowsClient:
    """Calls the dpflows HTTP API with one key; every method is one request."""

    #: Admin endpoint paths, in one place so that they follow the API if it renames them.
    ADMIN_PATHS: ClassVar[dict[str, str]] = {
        "clients": "/v1/admin/clients",
        "client_keys": "/v1/admin/clients/{client_id}/keys",
        "key": "/v1/admin/keys/{key_id}",
        "caps": "/v1/admin/caps",
        "zonings": "/v1/admin/datasets/{dataset}/zonings",
        "audit": "/v1/admin/audit",
    }

    def __init__(self, base_url: str, api_key: str, timeout: float = 30.0) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url={base_url!r} must start with http:// or https://")
        self.base_url = base_url.rstrip("/")
        self._api_key = api_key
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"DpflowsClient({self.base_url!r}, api_key=<hidden>)"

    # -- transport ----------------------------------------------------------------------------

    def request(self, method: str, path: str, *, params: Mapping[str, Any] | None = None,
                body: Any = None) -> Any:
        """One JSON request; returns the decoded body or raises the matching DpflowsClientError."""
        url = self.base_url + path
        if params:
            query = {k: v for k, v in params.items() if v is not None}
            if query:
                url += "?" + urllib.parse.urlencode(query)
        data = None if body is None else json.dumps(body).encode()
        headers = {"Authorization": f"Bearer {self._api_key}", "Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(url, data=data, headers=headers, method=method)  # noqa: S310 (http(s) checked in __init__)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:  # noqa: S310
                raw = resp.read()
                status = resp.status
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                doc = json.loads(raw) if raw else None
            except ValueError:
                doc = None
            raise error_from_response(exc.code, doc, exc.headers) from None
        except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ConnectionFailedError(f"cannot reach {self.base_url}: {reason}", code="connection_failed") from exc
        if status == 204 or not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise DpflowsClientError(f"{method} {path} answered non-JSON", code="bad_response", status=status) from exc

    # -- queries ------------------------------------------------------------------------------

    @staticmethod
    def _query_body(dataset: str, zoning: str, start: dt.date | str, end: dt.date | str, *,
                    hours: tuple[int, int] | list[int] | None, weekdays: list[int] | tuple[int, ...] | None,
                    epsilon: float | str | None, max_error: float | None, confidence: float | None,
                    clamp_negative: bool | None, rho: float | str | None = None, consistent: bool | None = None,
                    derive: bool | None = None, **extra: Any) -> dict[str, Any]:
        if sum(x is not None for x in (epsilon, rho, max_error)) != 1:
            raise ValueError("pass exactly one of epsilon (pure-DP datasets), rho (zCDP datasets) or max_error")
        body: dict[str, Any] = {"dataset": dataset, "zoning": zoning, "start": _iso(start), "end": _iso(end)}
        optional = {"hours": None if hours is None else list(hours),
                    "weekdays": None if weekdays is None else list(weekdays),
                    # ε and ρ given as text ("0.5") go out as JSON numbers: the API refuses strings
                    "epsilon": None if epsilon is None else float(epsilon),
                    "rho": None if rho is None else float(rho),
                    "max_error": max_error, "confidence": confidence,
                    "clamp_negative": clamp_negative, "consistent": consistent, "derive": derive, **extra}
        body.update({k: v for k, v in optional.items() if v is not None})
        return body

    def _answer(self, kind: str, body: dict[str, Any]) -> QueryAnswer:
        doc = self.request("POST", f"/v1/{kind}", body=body)
        dataset, zoning = body["dataset"], body["zoning"]
        return parse_answer(kind, doc, zoning_loader=lambda: self.zoning(dataset, zoning))

    def flows(self, dataset: str, zoning: str, start: dt.date | str, end: dt.date | str, *,
              hours: tuple[int, int] | list[int] | None = None, weekdays: list[int] | None = None,
              epsilon: float | str | None = None, max_error: float | None = None,
              confidence: float | None = None, clamp_negative: bool | None = None,
              rho: float | str | None = None, consistent: bool | None = None,
              derive: bool | None = None) -> QueryAnswer:
        """Origin-destination trip counts between every pair of zones (spends budget)."""
        return self._answer("flows", self._query_body(
            dataset, zoning, start, end, hours=hours, weekdays=weekdays, epsilon=epsilon,
            max_error=max_error, confidence=confidence, clamp_negative=clamp_negative, rho=rho,
            consistent=consistent, derive=derive))

    def presence(self, dataset: str, zoning: str, start: dt.date | str, end: dt.date | str, *,
                 hours: tuple[int, int] | list[int] | None = None, weekdays: list[int] | None = None,
                 epsilon: float | str | None = None, max_error: float | None = None,
                 confidence: float | None = None, clamp_negative: bool | None = None,
                 rho: float | str | None = None, consistent: bool | None = None,
                 derive: bool | None = None) -> QueryAnswer:
        """Person-hours present per zone and hour of day (spends budget)."""
        return self._answer("presence", self._query_body(
            dataset, zoning, start, end, hours=hours, weekdays=weekdays, epsilon=epsilon,
            max_error=max_error, confidence=confidence, clamp_negative=clamp_negative, rho=rho,
            consistent=consistent, derive=derive))

    def patterns(self, dataset: str, zoning: str, start: dt.date | str, end: dt.date | str, *,
                 measure: str = "trips", zone: str | None = None,
                 hours: tuple[int, int] | list[int] | None = None, weekdays: list[int] | None = None,
                 epsilon: float | str | None = None, max_error: float | None = None,
                 confidence: float | None = None, clamp_negative: bool | None = None,
                 rho: float | str | None = None, consistent: bool | None = None,
                 derive: bool | None = None) -> QueryAnswer:
        """Trips or presence per weekday and hour, for one zone or the whole area (spends budget)."""
        return self._answer("patterns", self._query_body(
            dataset, zoning, start, end, hours=hours, weekdays=weekdays, epsilon=epsilon,
            max_error=max_error, confidence=confidence, clamp_negative=clamp_negative, rho=rho,
            consistent=consistent, derive=derive, measure=measure, zone=zone))

    def quote(self, query: str, dataset: str, zoning: str, start: dt.date | str, end: dt.date | str, *,
              hours: tuple[int, int] | list[int] | None = None, weekdays: list[int] | None = None,
              epsilon: float | str | None = None, max_error: float | None = None,
              confidence: float | None = None, measure: str | None = None, zone: str | None = None,
              rho: float | str | None = None, derive: bool | None = None) -> Quote:
        """What a query would cost and how accurate it would be; charges nothing."""
        if query not in QUERY_KINDS:
            raise ValueError(f"query={query!r} must be one of {QUERY_KINDS}")
        body = self._query_body(dataset, zoning, start, end, hours=hours, weekdays=weekdays, epsilon=epsilon,
                                max_error=max_error, confidence=confidence, clamp_negative=None, rho=rho,
                                derive=derive, measure=measure, zone=zone, query=query)
        doc = self.request("POST", "/v1/quote", body=body)
        unit = "rho" if doc.get("accounting") == "zcdp" else "epsilon"
        return Quote(
            epsilon=float(doc[unit]),
            epsilon_charged=float(doc.get(f"{unit}_charged", doc[unit])),
            error_bound_95=float(doc["error_bound_95"]),
            reused=bool(doc.get("reused", False)),
            windows=[WindowCharge.from_json(w) for w in doc.get("windows", [])],
            raw=doc,
        )

    def relative_change(self, dataset: str, zoning: str, start: dt.date | str, end: dt.date | str, *,
                        baseline_start: dt.date | str, baseline_end: dt.date | str,
                        hours: tuple[int, int] | list[int] | None = None, weekdays: list[int] | None = None,
                        epsilon: float | str | None = None, max_error: float | None = None,
                        confidence: float | None = None, rho: float | str | None = None,
                        derive: bool | None = None) -> RelativeChangeAnswer:
        """% change of presence per zone against the same weekdays and hours of a baseline (spends budget)."""
        body = self._query_body(dataset, zoning, start, end, hours=hours, weekdays=weekdays, epsilon=epsilon,
                                max_error=max_error, confidence=confidence, clamp_negative=None, rho=rho,
                                derive=derive, baseline_start=_iso(baseline_start), baseline_end=_iso(baseline_end))
        doc = self.request("POST", "/v1/relative-change", body=body)
        return RelativeChangeAnswer(
            zones=pl.DataFrame(doc["zones"], schema=_ZONE_CHANGE_SCHEMA, orient="row"),
            confidence=float(doc["confidence"]),
            windows=[WindowCharge.from_json(w) for w in doc.get("windows", [])],
            budget_remaining=float(doc["budget_remaining"]),
            current=parse_answer("presence", doc["current"]),
            baseline=parse_answer("presence", doc["baseline"]),
            raw=doc,
        )

    def budget(self, dataset: str) -> Budget:
        """This key's remaining budget on a dataset, per window."""
        doc = self.request("GET", "/v1/budget", params={"dataset": dataset})
        return Budget(dataset=dataset, windows=[BudgetWindow.from_json(w) for w in doc.get("windows", [])], raw=doc)

    def datasets(self) -> list[DatasetInfo]:
        """The datasets this service holds, with time span, windows, bounds and zonings."""
        doc = self.request("GET", "/v1/datasets")
        return [DatasetInfo.from_json(d) for d in (doc["datasets"] if isinstance(doc, dict) else doc)]

    def bounding_report(self, dataset: str) -> dict[str, Any]:
        """Share of records dropped by bounding, quantiles and a suggested bound (admin, planner); free to read."""
        return self.request("GET", f"/v1/datasets/{_seg(dataset)}/bounding-report")

    def zoning(self, dataset: str, zoning: str) -> dict[str, Any]:
        """A public zoning: zones, cells per zone, and geometry/centroids/cells for maps."""
        return dict(self.request("GET", f"/v1/datasets/{_seg(dataset)}/zonings/{_seg(zoning)}"))

    # -- admin --------------------------------------------------------------------------------

    def create_client(self, name: str, role: str) -> IssuedKey:
        """Register a planner, analyst or admin; the returned key is shown only this once."""
        return IssuedKey.from_json(self.request("POST", self.ADMIN_PATHS["clients"], body={"name": name, "role": role}))

    def list_clients(self) -> list[ClientInfo]:
        """Every client with its keys (ids and prefixes only)."""
        doc = self.request("GET", self.ADMIN_PATHS["clients"])
        rows = doc["clients"] if isinstance(doc, dict) else doc
        return [ClientInfo.from_json(r) for r in rows]

    def issue_key(self, client_id: int) -> IssuedKey:
        """A new key for a client (old keys stay valid until revoked)."""
        doc = self.request("POST", self.ADMIN_PATHS["client_keys"].format(client_id=int(client_id)))
        return IssuedKey.from_json(doc)

    def key_id(self, issued: IssuedKey) -> int:
        """The id of an issued key (what revoke_key takes), found by its prefix in list_clients."""
        for info in self.list_clients():
            if info.id == issued.client.id:
                ids = [k.id for k in info.keys if k.prefix == issued.prefix and k.revoked_at is None]
                if len(ids) == 1:
                    return ids[0]
        raise NotFoundError(f"no single active key with prefix {issued.prefix!r} for client {issued.client.id}",
                            code="not_found")

    def revoke_key(self, key_id: int) -> KeyInfo:
        """Revoke one key at once; the client's other keys keep working."""
        return KeyInfo.from_json(self.request("DELETE", self.ADMIN_PATHS["key"].format(key_id=int(key_id))))

    def set_cap(self, dataset: str, epsilon: float | str | None = None, *, client_id: int | None = None,
                window: int | None = None, rho: float | str | None = None) -> dict[str, Any]:
        """Cap a client's ε (or ρ, zCDP datasets) per window (client_id) or the global cap; all windows if None."""
        if (epsilon is None) == (rho is None):
            raise ValueError("pass exactly one of epsilon (pure-DP datasets) or rho (zCDP datasets)")
        body: dict[str, Any] = ({"dataset": dataset, "epsilon": float(epsilon)} if epsilon is not None
                                else {"dataset": dataset, "rho": float(rho)})  # type: ignore[arg-type]
        if client_id is not None:
            body["client_id"] = int(client_id)
        if window is not None:
            body["window"] = int(window)
        return dict(self.request("PUT", self.ADMIN_PATHS["caps"], body=body) or {})

    def add_zoning(self, dataset: str, name: str, csv_text: str, *, coarse: bool = False,
                   min_cells_per_zone: int = 1, geometry: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Load a public zoning from `cell_id,zone_id` CSV text (and optional GeoJSON polygons)."""
        body: dict[str, Any] = {"name": name, "csv": csv_text, "coarse": coarse,
                                "min_cells_per_zone": min_cells_per_zone}
        if geometry is not None:
            body["geojson"] = dict(geometry)
        return dict(self.request("POST", self.ADMIN_PATHS["zonings"].format(dataset=_seg(dataset)), body=body))

    def add_zoning_from_polygons(self, dataset: str, name: str, geojson: Mapping[str, Any], id_field: str, *,
                                 coarse: bool = False, min_cells_per_zone: int = 1) -> dict[str, Any]:
        """Load a zoning from GeoJSON polygons: each cell to the polygon covering it, else the nearest.

        The answer lists the cells sent to the nearest polygon (``assigned_to_nearest``, with the
        distance) and the polygons holding no cell (``empty_polygons``, not zones).
        """
        body = {"name": name, "geojson": dict(geojson), "id_field": id_field, "coarse": coarse,
                "min_cells_per_zone": min_cells_per_zone}
        return dict(self.request("POST", self.ADMIN_PATHS["zonings"].format(dataset=_seg(dataset)), body=body))

    def add_grid_zoning(self, dataset: str, name: str, km: float, *, coarse: bool = False,
                        min_cells_per_zone: int = 1) -> dict[str, Any]:
        """Load a square grid of side ``km`` over the cell catalog's extent (zones: squares holding a cell)."""
        body = {"name": name, "grid_km": km, "coarse": coarse, "min_cells_per_zone": min_cells_per_zone}
        return dict(self.request("POST", self.ADMIN_PATHS["zonings"].format(dataset=_seg(dataset)), body=body))

    def audit(self, *, after_id: int = 0, limit: int = 100) -> list[dict[str, Any]]:
        """Audit rows after ``after_id``, oldest first (who asked what, when, at what ε, outcome; never values)."""
        doc = self.request("GET", self.ADMIN_PATHS["audit"], params={"after_id": after_id, "limit": limit})
        return list(doc["entries"] if isinstance(doc, dict) else doc)

    def audit_all(self, *, page: int = 1000) -> list[dict[str, Any]]:
        """The whole audit log, page by page."""
        rows: list[dict[str, Any]] = []
        after = 0
        while True:
            doc = self.request("GET", self.ADMIN_PATHS["audit"], params={"after_id": after, "limit": page})
            rows.extend(doc["entries"])
            if doc.get("next_after_id") is None:
                return rows
            after = int(doc["next_after_id"])


def _seg(name: str) -> str:
    return urllib.parse.quote(str(name), safe="")


def parse_answer(kind: str, doc: Mapping[str, Any], *,
                 zoning_loader: Callable[[], dict[str, Any]] | None = None) -> QueryAnswer:
    """A QueryAnswer from the API's JSON answer."""
    mech = doc.get("mechanism") or {}
    bound = float(doc["error_bound_95"])
    return QueryAnswer(
        kind=kind,
        answer_id=str(doc["answer_id"]),
        query=dict(doc.get("query") or {}),
        values=values_frame(kind, list(doc["values"]), bound, doc.get("value_error_bounds")),
        epsilon_charged=None if doc.get("epsilon_charged") is None else float(doc["epsilon_charged"]),
        windows=[WindowCharge.from_json(w) for w in doc.get("windows", [])],
        budget_remaining=float(doc["budget_remaining"]),
        privacy_unit=str(doc.get("privacy_unit", "")),
        mechanism=Mechanism(str(mech.get("name", "")), float(mech.get("noise_scale", "nan")),
                            None if mech.get("sensitivity") is None else float(mech["sensitivity"])),
        error_bound_95=bound,
        confidence=float(doc.get("confidence", 0.95)),
        reused=bool(doc.get("reused", False)),
        postprocessing=list(doc.get("postprocessing") or []),
        raw=dict(doc),
        _zoning_loader=zoning_loader,
        accounting=str(doc.get("accounting", "pure_dp")),
        rho_charged=None if doc.get("rho_charged") is None else float(doc["rho_charged"]),
        approx_dp=None if doc.get("approx_dp") is None else dict(doc["approx_dp"]),
        raw_values=None if doc.get("raw_values") is None else [int(v) for v in doc["raw_values"]],
        totals=doc.get("totals"),
        raw_totals=doc.get("raw_totals"),
        derived_from=doc.get("derived_from"),
    )
