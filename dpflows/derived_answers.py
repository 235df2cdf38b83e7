"""Free derived answers: a coarser question answered by summing a finer released answer.

If a released answer's keys partition into groups whose sums are exactly the keys of a new
question, the new answer is post-processing of the old release: it costs nothing and
releases nothing new (design §3). Only **exact sums of released keys** qualify:

- same kind, dataset, ingestion (data version), dates, and the same filters that are not
  keys: weekdays for flows and presence, hours for flows, measure and zone for patterns;
- zones: the requested zoning's zones must be unions of the released zoning's zones (every
  released zone lies inside exactly one requested zone), e.g. ``sectors`` from ``districts``
  or any zoning from ``cell``;
- hours (presence, patterns) and weekdays (patterns) are keys, so a subset of them is a
  selection of released keys. A presence answer's hours are *not* summed into a coarser hour
  grouping because no query asks for that; flows do not key by hour, so flows hours must match.

The error of a derived value that sums k released values is a sum of k independent discrete
Laplace noises (each key of the vector got its own draw), so its stated bound is
`mechanisms.sum_error_bound(scale, k)`: exact convolution of the pmf (or a Chernoff bound
for very long sums). k can differ between keys (zones of different sizes); every value's bound
is given, and the answer's single ``error_bound_95`` is the largest, valid for every value.

Policy: a derived answer never carries more privacy loss per query than the requester's role
may spend (source ε ≤ the role's per-query cap), and when the client asked by accuracy
(`max_error`), a source qualifies only if the derived bound meets it.

Bounded cost (issue 18): sources are found by their *shape* (kind, data version, dates, zoning,
hour and weekday masks, loss, scale), which the ledger indexes when it stores an answer
(`Ledger.find_answer_shapes`), never by reading stored payloads. `shape_filter` states what
qualifies, with the zonings that can be summed into the asked one; the ledger returns the
smallest noise scale of each such zoning (the best source of that zoning: every source of one
zoning sums the same number of values per key), at most `limit` in all; `best_derivation`
ranks them by their derived error bound and reads the payload of the best only (of the next
ones only if a payload fails the full check of `derive_from`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from dpflows.aggregates import Dataset
from dpflows.budget import Epsilon, PrivacyLoss, Rho
from dpflows.errors import DpflowsError
from dpflows.ledger import StoredAnswer
from dpflows.ledger.base import AnswerShape, ShapeFilter, bit_mask
from dpflows.mechanisms import DISCRETE_GAUSSIAN, DISCRETE_LAPLACE, sum_error_bound
from dpflows.queries import QuerySpec, touched_windows


@dataclass(frozen=True)
class Derivation:
    """A derived answer: the source release, the summed values, and how many terms each sums."""

    source: StoredAnswer
    payload: dict[str, Any]  # the source payload with values, keys and terms of the new answer
    max_error_bound: float

    @property
    def answer_id(self) -> str:
        """Deterministic: deriving the same question from the same release gives the same id."""
        spec_key = self.payload["query"]
        text = f"derived|{self.source.answer_id}|{sorted(spec_key.items())}"
        return hashlib.sha256(text.encode()).hexdigest()[:32]


#: (dataset path, data version, fine, coarse) -> zone map or None; zonings never change under a name.
_ZONE_MAPS: dict[tuple[str, str, str, str], dict[str, int] | None] = {}


def _zone_map(data: Dataset, fine: str, coarse: str) -> dict[str, int] | None:
    """fine zone label -> coarse zone index, when every fine zone lies inside one coarse zone."""
    key = (str(data.path), data.version, fine, coarse)
    if key in _ZONE_MAPS:
        return _ZONE_MAPS[key]
    try:
        f, c = data.zoning(fine), data.zoning(coarse)
    except DpflowsError:
        return None  # not cached: the zoning may be added later
    # distinct (fine zone, coarse zone) pairs over all cells: one per fine zone iff it refines
    pairs = np.unique(np.stack([f.zone_of_cell, c.zone_of_cell], axis=1), axis=0)
    out: dict[str, int] | None = None
    if len(pairs) == len(f.zone_ids):
        out = {str(f.zone_ids[fi]): int(ci) for fi, ci in pairs}
    if len(_ZONE_MAPS) >= 4096:
        _ZONE_MAPS.clear()
    _ZONE_MAPS[key] = out
    return out


def _max_terms(zone_map: dict[str, int], kind: str) -> int:
    """Released values summed into one asked value, at most: flows n_o·n_d, presence n_z."""
    most = int(np.bincount(np.fromiter(zone_map.values(), dtype=np.int64)).max())
    return most * most if kind in ("flows", "commuting") else most


def _out_index(spec: QuerySpec, data: Dataset, source_query: dict[str, Any],
               keys: dict[str, list[Any]]) -> tuple[np.ndarray, dict[str, list[Any]]] | None:
    """For each released key, the index of the new key it sums into (-1: not used), and the new keys."""
    hours = list(spec.hours)
    hour_pos = np.full(24, -1, dtype=np.int64)
    hour_pos[hours] = np.arange(len(hours))
    if spec.kind == "patterns":
        days = list(spec.weekdays)
        day_pos = np.full(7, -1, dtype=np.int64)
        day_pos[days] = np.arange(len(days))
        d = day_pos[np.asarray(keys["weekday"], dtype=np.int64)]
        h = hour_pos[np.asarray(keys["hour"], dtype=np.int64)]
        out = np.where((d >= 0) & (h >= 0), d * len(hours) + h, -1)
        return out, {"weekday": [dd for dd in days for _ in hours], "hour": hours * len(days)}
    zone_map = _zone_map(data, source_query["zoning"], spec.zoning)
    if zone_map is None:
        return None
    zones = list(data.zoning(spec.zoning).zone_ids)
    nz = len(zones)

    def zone_index(labels: list[Any]) -> np.ndarray:
        return np.array([zone_map.get(str(z), -1) for z in labels], dtype=np.int64)

    if spec.kind == "flows":
        origin, dest = zone_index(keys["origin"]), zone_index(keys["destination"])
        if (origin < 0).any() or (dest < 0).any():
            return None
        return origin * nz + dest, {"origin": [z for z in zones for _ in zones], "destination": zones * nz}
    if spec.kind in ("inflows", "outflows"):
        zone = zone_index(keys["zone"])
        return (None if (zone < 0).any() else (zone, {"zone": zones}))
    if spec.kind in ("residents", "commuting"):  # the same windows, zones summed into coarser ones
        windows = sorted(set(keys["window"]))
        pos = {w: i for i, w in enumerate(windows)}
        w = np.array([pos[x] for x in keys["window"]], dtype=np.int64)
        if spec.kind == "residents":
            zone = zone_index(keys["zone"])
            if (zone < 0).any():
                return None
            return zone * len(windows) + w, {"zone": [z for z in zones for _ in windows], "window": windows * nz}
        home, work = zone_index(keys["home"]), zone_index(keys["work"])
        if (home < 0).any() or (work < 0).any():
            return None
        return ((home * nz + work) * len(windows) + w,
                {"home": [h for h in zones for _ in zones for _ in windows],
                 "work": [k for _ in zones for k in zones for _ in windows], "window": windows * nz * nz})
    zone = zone_index(keys["zone"])
    if (zone < 0).any():
        return None
    h = hour_pos[np.asarray(keys["hour"], dtype=np.int64)]
    out = np.where(h >= 0, zone * len(hours) + h, -1)
    return out, {"zone": [z for z in zones for _ in hours], "hour": hours * nz}


def _filters_allow(spec: QuerySpec, q: dict[str, Any]) -> bool:
    """Non-key filters equal; key filters (hours, weekdays) a subset where they are keys."""
    if (q.get("kind"), q.get("dataset"), q.get("start"), q.get("end")) != (
        spec.kind, spec.dataset, spec.start.isoformat(), spec.end.isoformat()
    ):
        return False
    hours, days = set(q.get("hours", ())), set(q.get("weekdays", ()))
    if spec.kind != q.get("kind"):
        return False
    if spec.kind in ("flows", "inflows", "outflows"):
        return list(q["hours"]) == list(spec.hours) and list(q["weekdays"]) == list(spec.weekdays)
    if spec.kind in ("residents", "commuting"):
        return q.get("place") == spec.place
    if spec.kind == "presence":
        return list(q["weekdays"]) == list(spec.weekdays) and set(spec.hours) <= hours
    return (q.get("measure"), q.get("zone"), q.get("zoning")) == (spec.measure, spec.zone, spec.zoning) and (
        set(spec.hours) <= hours and set(spec.weekdays) <= days
    )


def derive_from(spec: QuerySpec, data: Dataset, source: StoredAnswer, confidence: float) -> Derivation | None:
    """The answer to `spec` as exact sums of `source`'s released values, or None if not derivable."""
    p = source.payload
    if (p.get("mechanism") not in (DISCRETE_LAPLACE, DISCRETE_GAUSSIAN)
            or p.get("data_version") != data.data_version(touched_windows(spec, data))):
        return None
    q = p.get("query") or {}
    if not _filters_allow(spec, q):
        return None
    mapped = _out_index(spec, data, q, p["keys"])
    if mapped is None:
        return None
    out_idx, new_keys = mapped
    n_out = len(next(iter(new_keys.values())))
    used = out_idx >= 0
    source_terms = np.asarray(p.get("terms") or [1] * len(out_idx), dtype=np.int64)
    values = np.zeros(n_out, dtype=np.int64)
    terms = np.zeros(n_out, dtype=np.int64)
    np.add.at(values, out_idx[used], np.asarray(p["values"], dtype=np.int64)[used])
    np.add.at(terms, out_idx[used], source_terms[used])
    if (terms < 1).any():  # a requested key no released key sums into: not derivable
        return None
    scale = float(p["scale"])
    payload = {
        **p,
        "values": [int(v) for v in values],
        "key_fields": list(new_keys),
        "keys": new_keys,
        "terms": [int(k) for k in terms],
        "query": spec.canonical(),
        "derived_from": source.answer_id,
    }
    return Derivation(source, payload, sum_error_bound(scale, int(terms.max()), confidence, str(p["mechanism"])))


def shape_filter(spec: QuerySpec, data: Dataset, zonings: Iterable[str], *, max_loss: PrivacyLoss,
                 limit: int) -> tuple[ShapeFilter, dict[str, int]]:
    """What a source of `spec` must look like (`_filters_allow` and `_out_index` as a filter on shapes),
    and per admissible zoning the most released values any asked value sums."""
    if spec.kind == "patterns":
        terms = {spec.zoning: 1}  # keys are selected, never summed
    else:
        terms = {}
        for name in sorted({*zonings, spec.zoning}):
            zone_map = _zone_map(data, name, spec.zoning)
            if zone_map is not None:
                terms[name] = _max_terms(zone_map, spec.kind)
    hours, weekdays = bit_mask(spec.hours, 24), bit_mask(spec.weekdays, 7)
    assert hours is not None and weekdays is not None  # a QuerySpec's hours and weekdays are valid
    where = ShapeFilter(
        kind=spec.kind, data_version=data.data_version(touched_windows(spec, data)), start=spec.start.isoformat(),
        end=spec.end.isoformat(),
        zonings=tuple(terms), unit=max_loss.unit, max_loss_nanos=max_loss.nanos,
        mechanisms=(DISCRETE_LAPLACE, DISCRETE_GAUSSIAN),
        # only presence and patterns key by hour: elsewhere the hours must match
        hours_mask=hours, hours_exact=spec.kind not in ("presence", "patterns"),
        weekdays_mask=weekdays, weekdays_exact=spec.kind != "patterns",
        pattern=((spec.measure, spec.zone or "") if spec.kind == "patterns"
                 else (spec.measure, spec.place or "") if spec.kind == "residents" else None),
        limit=limit,
    )
    return where, terms


def best_derivation(spec: QuerySpec, data: Dataset, shapes: list[AnswerShape], terms: dict[str, int],
                    load: Callable[[str], StoredAnswer | None], *, confidence: float,
                    max_error: float | None) -> Derivation | None:
    """The most accurate derivation among the ledger's candidate `shapes` (already within the
    requester's policy); only the chosen source's payload is read, through `load`."""
    ranked = sorted(
        ((sum_error_bound(s.scale, terms[s.zoning], confidence, s.mechanism), s.created_at, s.answer_id)
         for s in shapes if s.zoning in terms),
    )
    for bound, _, answer_id in ranked:
        if max_error is not None and bound > max_error:
            break  # ranked by bound: none further meets it
        source = load(answer_id)
        if source is None:
            continue
        found = derive_from(spec, data, source, confidence)
        if found is not None and (max_error is None or found.max_error_bound <= max_error):
            return found
    return None


def release_loss(payload: dict[str, Any]) -> PrivacyLoss:
    """The ε or ρ a stored answer was released at (payloads name the measure in the key)."""
    if "rho_nanos" in payload:
        return Rho(int(payload["rho_nanos"]))
    return Epsilon(int(payload["epsilon_nanos"]))
