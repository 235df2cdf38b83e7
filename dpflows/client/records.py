"""What the client returns: answers as Polars frames with their cost and error, budgets, clients, keys."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from dpflows import geo
from dpflows.query_kinds import KEY_FIELDS

_KEY_DTYPES = {"origin": pl.String, "destination": pl.String, "zone": pl.String, "hour": pl.Int64,
               "weekday": pl.Int64, "window": pl.String, "home": pl.String, "work": pl.String}


# -- answers -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class WindowCharge:
    """One privacy window a query touched: what it cost there and what is left there."""

    window: int
    start: dt.date
    end: dt.date  # exclusive
    epsilon_charged: float | None  # ρ on datasets accounted in zCDP (the answer's `accounting` says)
    budget_remaining: float
    delta_charged: float | None = None  # approximate-DP datasets: δ charged here (0 for a dense answer)
    delta_remaining: float | None = None

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> WindowCharge:
        charged = doc.get("epsilon_charged", doc.get("rho_charged"))
        return cls(int(doc["window"]), _date(doc["start"]), _date(doc["end"]),
                   None if charged is None else float(charged),
                   float(doc.get("budget_remaining", doc.get("remaining", 0.0))),
                   _opt_float(doc.get("delta_charged")), _opt_float(doc.get("delta_remaining")))


@dataclass(frozen=True)
class Mechanism:
    name: str
    noise_scale: float
    sensitivity: float | None  # ℓ1 (an integer, discrete Laplace) or ℓ2 (discrete Gaussian)
    threshold: int | None = None  # sparse answers: the noisy count a key had to reach
    contribution: dict[str, int] | None = None  # sparse answers: one person-window's (l0, l1, linf)


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
    #: approximate-DP datasets: δ charged (0 when dense or reused), the δ released at, and what remains
    delta_charged: float | None = None
    delta: float | None = None
    #: "dense" (every key, zeros noised) or "sparse" (only keys whose noisy count reached `threshold`)
    release: str = "dense"
    threshold: int | None = None
    #: sparse: [0, threshold + error_bound_95], where the true count of a key that is not in `values` lies
    below_threshold_interval: list[float] | None = None

    @property
    def sparse(self) -> bool:
        """Only keys above the threshold were released: a missing key is below it, never a zero."""
        return self.release == "sparse"

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
                "postprocessing": self.postprocessing,
                **({"release": "sparse", "threshold": self.threshold,
                    "below_threshold_interval": self.below_threshold_interval} if self.sparse else {})}
        rows = self.values.select([*KEY_FIELDS[self.kind], "count"]).to_dicts()
        return geo.answer_geojson(self.kind, rows, zoning, self.error_bound_95, metadata=meta, **options)


@dataclass(frozen=True)
class Quote:
    """What a query would cost, without spending: ε (ρ on zCDP datasets), accuracy, windows, and whether it is free."""

    epsilon: float  # ρ on datasets accounted in zCDP (raw then has "rho")
    epsilon_charged: float  # 0 when an identical answer exists and would be reused
    error_bound_95: float
    reused: bool
    windows: list[WindowCharge]
    raw: dict[str, Any] = field(repr=False)
    delta: float | None = None  # approximate-DP datasets: the δ it would be released at
    delta_charged: float | None = None
    release: str = "dense"  # or "sparse": decided from public facts (the domain's size, the dataset's limit)
    threshold: int | None = None  # sparse: the threshold it would use


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
    group: str | None  # the client's sharing group; None: alone
    group_cap: float | None  # the group's allocation; None: none (the unallocated pool, not shown)
    group_spent: float | None
    budget_remaining: float  # the tighter of the client's cap and its group's allocation
    #: approximate-DP datasets: the δ cap, spent and remaining (None elsewhere)
    delta_cap: float | None = None
    delta_spent: float | None = None
    delta_remaining: float | None = None

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> BudgetWindow:
        def opt(key: str) -> float | None:
            return None if doc.get(key) is None else float(doc[key])

        return cls(int(doc["window"]), _date(doc["start"]), _date(doc["end"]), opt("cap"),
                   float(doc.get("spent") or 0.0), doc.get("group"), opt("group_cap"), opt("group_spent"),
                   float(doc.get("remaining", doc.get("budget_remaining", 0.0))), opt("delta_cap"),
                   opt("delta_spent"), opt("delta_remaining"))


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
    population: str  # datasets of one population share its global caps ("" from servers before issue 17)
    raw: dict[str, Any] = field(repr=False)

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> DatasetInfo:
        return cls(str(doc["name"]), _date(doc["first_day"]), _date(doc["end_day"]), int(doc.get("window_days", 0)),
                   int(doc.get("windows", 0)), {k: int(v) for k, v in (doc.get("bounds") or {}).items()},
                   str(doc.get("privacy_unit", "")), list(doc.get("zonings") or []), str(doc.get("population", "")),
                   dict(doc))


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


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


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
                            None if mech.get("sensitivity") is None else float(mech["sensitivity"]),
                            None if mech.get("threshold") is None else int(mech["threshold"]),
                            mech.get("contribution")),
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
        delta_charged=_opt_float(doc.get("delta_charged")),
        delta=_opt_float(doc.get("delta")),
        release=str(doc.get("release", "dense")),
        threshold=None if doc.get("threshold") is None else int(doc["threshold"]),
        below_threshold_interval=(None if doc.get("below_threshold_interval") is None
                                  else [float(v) for v in doc["below_threshold_interval"]]),
    )
