"""Flows, presence and patterns: a public key domain and the true count vector over it.

A query spec is normalized first (sorted weekdays, explicit hours) so that two requests that
mean the same thing share one stored answer. The key domain is built from public facts only
(the zoning's zones, the hours and weekdays asked for), never from the data, and every key is
present in the true vector, zeros included (rule 5).

Sensitivity: after bounding, one person contributes at most L records of a measure per
window, and each record falls into at most one key of any of these queries, so the ℓ1
sensitivity of the vector is L whatever zoning, filter or grouping is used (design §2).
Presence counts person-cell-hours: a person seen in two cells of one zone in one hour counts
twice at zone level, which the bound L_presence already covers.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from dpflows.aggregates import NO_PRESENCE, Dataset
from dpflows.cells import Zoning
from dpflows.counting import slot_counts, slot_rows, window_counts, window_rows
from dpflows.dataset_metadata import DEFAULT_DENSE_LIMIT
from dpflows.errors import DomainTooLarge, InvalidInput
from dpflows.query_kinds import COUNTED_MEASURE, KEY_FIELDS, PLACES, QUERY_KINDS, WINDOW_KINDS

QueryKind = Literal["flows", "presence", "patterns"]
ALL_HOURS = tuple(range(24))
ALL_WEEKDAYS = tuple(range(7))
WEEKDAY_NAMES = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
#: The default dense limit of a dataset (DatasetMetadata.dense_limit); kept under its old name.
MAX_DENSE_KEYS = DEFAULT_DENSE_LIMIT


@dataclass(frozen=True)
class QuerySpec:
    """What a client asks, normalized. Hours and weekdays are explicit sorted tuples."""

    kind: str
    dataset: str
    zoning: str
    start: dt.date
    end: dt.date  # exclusive
    hours: tuple[int, ...] = ALL_HOURS
    weekdays: tuple[int, ...] = ALL_WEEKDAYS
    measure: str = "trips"  # patterns only: trips (departures) or presence
    zone: str | None = None  # patterns only: one zone, or None for the whole area
    place: str | None = None  # residents only: "home" or "work"

    def canonical(self) -> dict[str, Any]:
        """The spec as JSON-ready fields, in declaration order (what answers echo as `query`); a new dict
        each call. Built field by field: dataclasses.asdict deep-copies and took ~0.1 ms a call."""
        doc = {"kind": self.kind, "dataset": self.dataset, "zoning": self.zoning, "start": self.start.isoformat(),
               "end": self.end.isoformat(), "hours": list(self.hours), "weekdays": list(self.weekdays),
               "measure": self.measure, "zone": self.zone}
        if self.place is not None:  # absent otherwise: the reuse keys and audit rows of the first kinds stay
            doc["place"] = self.place
        return doc

    def key(self) -> str:
        """Stable digest of the normalized query, the basis of answer reuse."""
        text = json.dumps(self.canonical(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    @property
    def counted_measure(self) -> str:
        return COUNTED_MEASURE.get(self.kind, self.measure)


def hour_range(hours: tuple[int, int] | list[int] | None) -> tuple[int, ...]:
    """[from, to) hours of day; from > to wraps past midnight (22, 2 means 22, 23, 0, 1)."""
    if hours is None:
        return ALL_HOURS
    if len(hours) != 2 or not all(isinstance(h, int) and not isinstance(h, bool) for h in hours):
        raise InvalidInput(f"hours={hours!r} must be two integers [from, to), such as [7, 10]", field="hours")
    start, stop = hours
    if not (0 <= start <= 23 and 1 <= stop <= 24) or start == stop:
        raise InvalidInput(
            f"hours={list(hours)!r} must be [from, to) with 0 <= from <= 23, 1 <= to <= 24 and from != to, "
            "such as [7, 10]",
            field="hours",
        )
    if start < stop:
        return tuple(range(start, stop))
    return tuple(range(start, 24)) + tuple(range(0, stop))


def make_spec(
    kind: str,
    *,
    dataset: str,
    zoning: str,
    start: dt.date,
    end: dt.date,
    hours: tuple[int, int] | list[int] | None = None,
    weekdays: list[int] | tuple[int, ...] | None = None,
    measure: str | None = None,
    zone: str | None = None,
    place: str | None = None,
) -> QuerySpec:
    """Validate and normalize a query; every message names the field, the value and the fix."""
    if kind not in QUERY_KINDS:
        raise InvalidInput(f"kind={kind!r} is not a query; use one of {list(QUERY_KINDS)}", field="kind")
    if end <= start:
        raise InvalidInput(
            f"end={end.isoformat()} must be after start={start.isoformat()} (end is exclusive)", field="end"
        )
    if weekdays is None:
        days: tuple[int, ...] = ALL_WEEKDAYS
    else:
        bad = [d for d in weekdays if not isinstance(d, int) or isinstance(d, bool) or not 0 <= d <= 6]
        if bad or not weekdays:
            raise InvalidInput(
                f"weekdays={list(weekdays)!r} must be a non-empty list of integers 0..6 (0=Monday)",
                field="weekdays",
            )
        days = tuple(sorted(set(weekdays)))
    if kind == "patterns":
        measure = measure or "trips"
        if measure not in ("trips", "presence"):
            raise InvalidInput(f"measure={measure!r} must be 'trips' or 'presence'", field="measure")
    else:
        if measure is not None and measure != COUNTED_MEASURE[kind]:
            raise InvalidInput(f"measure={measure!r} applies to patterns only; leave it out", field="measure")
        if zone is not None:
            raise InvalidInput(f"zone={zone!r} applies to patterns only; leave it out", field="zone")
        measure = "trips"
    if kind == "residents":
        if place not in PLACES:
            raise InvalidInput(f"place={place!r} must be 'home' or 'work' (one place per answer: both at once would "
                               "count a person twice)", field="place")
    elif place is not None:
        raise InvalidInput(f"place={place!r} applies to residents only; leave it out", field="place")
    if kind in WINDOW_KINDS and (hours is not None or weekdays is not None):
        raise InvalidInput(f"{kind} counts whole windows (one home and one work cell per person-window); leave out "
                           "hours and weekdays", field="hours" if hours is not None else "weekdays")
    return QuerySpec(kind, dataset, zoning, start, end, hour_range(hours), days, measure, zone, place)


@dataclass(frozen=True)
class KeyDomain:
    """The public keys of an answer, in release order, as named columns."""

    fields: tuple[str, ...]
    columns: dict[str, list[Any]] = field(hash=False)

    def __len__(self) -> int:
        return len(next(iter(self.columns.values()))) if self.columns else 0

    def rows(self) -> list[dict[str, Any]]:
        cols = [self.columns[f] for f in self.fields]
        return [dict(zip(self.fields, vals, strict=True)) for vals in zip(*cols, strict=True)]


@dataclass(frozen=True)
class PreparedQuery:
    """A checked query against one dataset: its keys, true counts, sensitivity and windows."""

    spec: QuerySpec
    domain: KeyDomain
    true_counts: np.ndarray
    sensitivity: int
    windows: tuple[int, ...]


def _check_span(spec: QuerySpec, data: Dataset) -> tuple[int, int]:
    meta = data.metadata
    if spec.start < meta.first_day or spec.end > meta.end_day:
        raise InvalidInput(
            f"dates [{spec.start.isoformat()}, {spec.end.isoformat()}) fall outside dataset "
            f"{meta.name!r}, which covers [{meta.first_day.isoformat()}, {meta.end_day.isoformat()}); "
            "choose start and end inside it",
            field="start" if spec.start < meta.first_day else "end",
        )
    return (spec.start - meta.first_day).days, (spec.end - meta.first_day).days


def touched_windows(spec: QuerySpec, data: Dataset) -> tuple[int, ...]:
    """Windows holding at least one day the query counts; each is charged the full ε."""
    first, stop = _check_span(spec, data)
    meta = data.metadata
    if spec.counted_measure == "presence" and meta.presence_rule == NO_PRESENCE:
        raise InvalidInput(f"dataset {meta.name!r} was ingested from a trips table: it holds no presence (no events "
                           f"per person and hour); ask flows, inflows, outflows or patterns of trips", field="kind")
    if spec.kind in WINDOW_KINDS:
        return _not_retired(_whole_windows(spec, data, first, stop), data)
    # weekday by arithmetic, not one date per day: every query and reuse runs this, often twice
    first_weekday, weekdays = meta.first_day.weekday(), frozenset(spec.weekdays)
    days = [d for d in range(first, stop) if (first_weekday + d) % 7 in weekdays]
    if not days:
        raise InvalidInput(
            f"weekdays={list(spec.weekdays)} never occur between {spec.start.isoformat()} and "
            f"{spec.end.isoformat()}; widen the dates or the weekdays",
            field="weekdays",
        )
    if meta.missing_days:  # else every day of the span is held (_check_span kept the dates inside it)
        days = [d for d in days if meta.holds(meta.first_day + dt.timedelta(days=d))]
    if not days:  # decided from the declaration before anything is charged: no window is paid for nothing
        raise InvalidInput(
            f"dataset {meta.name!r} holds none of the days asked: the admin declared "
            f"{', '.join(d.isoformat() for d in uncovered_days(spec, data))} missing; choose other dates",
            field="start",
        )
    return _not_retired(tuple(sorted({d // meta.window_days for d in days})), data)


def _not_retired(windows: tuple[int, ...], data: Dataset) -> tuple[int, ...]:
    """Refused before any charge: a retired window's counts are gone (dpflows.retirement)."""
    gone = [w for w in windows if w in data.retired]
    if gone:
        meta = data.metadata
        resume = meta.window_start(max(data.retired) + 1)
        raise InvalidInput(f"dataset {meta.name!r} has retired window(s) {gone} (from {meta.window_start(gone[0])}): "
                           f"their counts were deleted; ask about days from {resume.isoformat()}", field="start")
    return windows


def uncovered_days(spec: QuerySpec, data: Dataset) -> list[dt.date]:
    """Days asked (in the dates and on the weekdays) that the dataset is declared not to hold: they count nothing."""
    meta = data.metadata
    return [day for day in (spec.start + dt.timedelta(days=d) for d in range((spec.end - spec.start).days))
            if day.weekday() in spec.weekdays and day in meta.missing_days]


def _whole_windows(spec: QuerySpec, data: Dataset, first: int, stop: int) -> tuple[int, ...]:
    """Residents and commuting exist per window: start and end must fall on the window grid."""
    meta = data.metadata
    if meta.places is None:
        raise InvalidInput(f"dataset {meta.name!r} has no homes and work places (ingested before them, or from a "
                           f"trips table); {spec.kind} cannot be answered on it", field="kind")
    ends_ok = stop % meta.window_days == 0 or spec.end == meta.end_day
    if first % meta.window_days or not ends_ok:
        raise InvalidInput(
            f"{spec.kind} counts whole windows of {meta.window_days} days from {meta.first_day.isoformat()}: start "
            f"{spec.start.isoformat()} and end {spec.end.isoformat()} must fall on window starts (end may be "
            f"{meta.end_day.isoformat()})", field="start" if first % meta.window_days else "end")
    return tuple(range(first // meta.window_days, (stop - 1) // meta.window_days + 1))


def domain_factors(spec: QuerySpec, data: Dataset) -> list[list[Any]]:
    """The values of each key field of the answer's public domain, in release order: the domain is their
    product, the last field varying fastest (flows: origin × destination zones). Public facts only."""
    zoning = data.zoning(spec.zoning)
    if spec.zone is not None:
        zoning.zone_index(spec.zone)
    windows = touched_windows(spec, data)  # refuses what cannot be answered, before any count is read
    return _factors(spec, data, zoning, windows)


def _factors(spec: QuerySpec, data: Dataset, zoning: Zoning, windows: tuple[int, ...]) -> list[list[Any]]:
    zones = list(zoning.zone_ids)
    labels = [data.metadata.window_start(w).isoformat() for w in windows]
    factors: dict[str, list[list[Any]]] = {
        "flows": [zones, zones], "presence": [zones, list(spec.hours)], "inflows": [zones], "outflows": [zones],
        "patterns": [list(spec.weekdays), list(spec.hours)], "residents": [zones, labels],
        "commuting": [zones, zones, labels]}
    return factors[spec.kind]


def domain_size(spec: QuerySpec, data: Dataset) -> int:
    """How many keys the answer's public domain holds (zones, hours, weekdays, windows): never the data."""
    return math.prod(len(values) for values in domain_factors(spec, data))


def key_columns(spec: QuerySpec, data: Dataset, keys: np.ndarray) -> KeyDomain:
    """The key fields of domain indices `keys` (a sparse answer's released keys), as `key_domain` orders them."""
    factors = domain_factors(spec, data)
    shape = tuple(len(values) for values in factors)
    positions = np.unravel_index(keys, shape) if len(keys) else [np.zeros(0, dtype=np.int64)] * len(shape)
    return KeyDomain(KEY_FIELDS[spec.kind], {
        name: np.asarray(values, dtype=object)[pos].tolist()
        for name, values, pos in zip(KEY_FIELDS[spec.kind], factors, positions, strict=True)})


def check_answerable(spec: QuerySpec, data: Dataset, *, sparse: bool = False) -> None:
    """Everything `prepare` would refuse, checked from public facts only (no count is read): a quote
    refuses what the query would. A dense answer's domain must be within the dataset's dense_limit."""
    size = domain_size(spec, data)
    if not sparse:
        _check_domain_size(size, spec, data)


def _check_domain_size(size: int, spec: QuerySpec, data: Dataset) -> None:
    limit = data.metadata.dense_limit
    if size > limit:
        raise DomainTooLarge(
            f"{spec.kind} on zoning={spec.zoning!r} has {size} keys, above the dense-release limit of {limit} of "
            f"dataset {spec.dataset!r}; use a coarser zoning, fewer hours or windows, or a dataset accounted in "
            "approximate DP (ingest --accounting approx_dp), which releases such answers sparsely",
            field="zoning",
        )


def row_chunks(spec: QuerySpec, data: Dataset) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The counted aggregate rows of `spec`, piece by piece: each row's key (its index in the answer's public
    domain, `key_domain` order) and count. `prepare` bins them over the whole domain (dpflows.counting), a
    sparse answer over the keys they hit (dpflows.sparse); the same rows and indices, so a key means the same."""
    zoning = data.zoning(spec.zoning)
    windows = touched_windows(spec, data)
    if spec.kind in WINDOW_KINDS:
        return window_rows(spec.kind, spec.place, data, zoning, windows)
    zone = zoning.zone_index(spec.zone) if spec.zone is not None else None
    return slot_rows(spec.kind, spec.counted_measure, spec.start, spec.end, spec.hours, spec.weekdays, zone, data,
                     zoning, windows)


def row_keys(spec: QuerySpec, data: Dataset) -> tuple[np.ndarray, np.ndarray]:
    """Every counted row's key and count at once (tests and small queries: `row_chunks` bounds the memory)."""
    chunks = list(row_chunks(spec, data))
    if not chunks:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    return (np.concatenate([np.asarray(k, dtype=np.int64) for k, _ in chunks]),
            np.concatenate([np.asarray(c) for _, c in chunks]))


def prepare(spec: QuerySpec, data: Dataset) -> PreparedQuery:
    """Build the public key domain and the exact count per key (never leaves the process).

    Only the windows the query touches are read, and in them only the slots (days and hours)
    it asks for (dpflows.counting)."""
    zoning = data.zoning(spec.zoning)
    windows = touched_windows(spec, data)
    check_answerable(spec, data)
    if spec.kind in WINDOW_KINDS:
        true = window_counts(spec.kind, spec.place, data, zoning, windows)
    else:
        zone = zoning.zone_index(spec.zone) if spec.zone is not None else None
        true = slot_counts(spec.kind, spec.counted_measure, spec.start, spec.end, spec.hours, spec.weekdays, zone,
                           data, zoning, windows)
    return PreparedQuery(
        spec=spec,
        domain=key_domain(spec, data, zoning, windows),
        true_counts=np.rint(true).astype(np.int64),
        sensitivity=data.metadata.bound(spec.counted_measure),
        windows=windows,
    )


def key_domain(spec: QuerySpec, data: Dataset, zoning: Zoning, windows: tuple[int, ...]) -> KeyDomain:
    """The answer's public keys in release order: the product of `domain_factors`, the last field fastest."""
    factors = _factors(spec, data, zoning, windows)
    sizes = [len(values) for values in factors]
    columns: dict[str, list[Any]] = {}
    for i, (name, values) in enumerate(zip(KEY_FIELDS[spec.kind], factors, strict=True)):
        inner, outer = math.prod(sizes[i + 1:]), math.prod(sizes[:i])
        repeated = list(values) if inner == 1 else [v for v in values for _ in range(inner)]
        columns[name] = repeated * outer
    return KeyDomain(KEY_FIELDS[spec.kind], columns)
