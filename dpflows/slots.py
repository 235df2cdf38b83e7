"""Presence sensitivity from day-hour slots: one place per person-hour makes it min(L_presence, S).

Ingestion (issue 14) gives each person-hour exactly one cell, so one person has at most one
presence record per (day, hour) slot, and at most L_presence per window (bounding.py). A
presence or patterns query counts the records of the slots it covers: the days in
[start, end) on its weekdays, times its hours. Within one window w covering S_w of those
slots, one person adds at most min(L_presence, S_w) records in all, each to one key: that is
the ℓ1 sensitivity. Neighbouring datasets differ in one person-window, so a query spanning
windows has the largest over the windows it touches (and is charged in each, as before).

A key sums the slots of its hour on every counted day (presence: zone × hour) or on every
counted day of its weekday (patterns: weekday × hour); one person adds at most one per slot to
it, so the most one person-window adds to one key (zCDP's per-key cap) is the number of such
slots in one window, never above the ℓ1 bound. With ℓ1 and that cap, `l2_sensitivity` gives
the Gaussian's ℓ2.

Datasets written before (presence_rule ``cells_per_person_hour``: every cell of an hour) keep
the old bounds: ℓ1 = L_presence, and the per-key cap of `key_contribution_cap`.

Everything here is computed from public facts only: the dataset's window grid and bound, and
the query's dates, weekdays and hours; never from the data.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dpflows.aggregates import DatasetMetadata
from dpflows.mechanisms import l2_sensitivity

if TYPE_CHECKING:
    from dpflows.aggregates import Dataset
    from dpflows.queries import QuerySpec

#: count_unit of an answer: distinct people when each key covers one (day, hour) slot.
PEOPLE = "people"
PERSON_HOURS = "person-hours"
#: datasets written before one place per person-hour: a person counts once per cell seen in an hour
PERSON_CELL_HOURS = "person-cell-hours"


@dataclass(frozen=True)
class PresenceSensitivity:
    """What one person-window can add to a presence or patterns answer, and what its counts count."""

    #: S: the most (day, hour) slots the query covers within one window
    slots: int
    #: the ℓ1 sensitivity: min(L_presence, S) with one place per person-hour, L_presence before
    l1: int
    #: the most one person-window adds to one released key (≤ l1)
    key_cap: int
    #: "people" (each key covers one day-hour), "person-hours", or "person-cell-hours" (old datasets)
    count_unit: str

    @property
    def l2(self) -> float:
        """The ℓ2 sensitivity for zCDP datasets: from ℓ1 and the per-key cap, rounded up."""
        return l2_sensitivity(self.l1, self.key_cap)


def counted_days(meta: DatasetMetadata, start: dt.date, end: dt.date, weekdays: Iterable[int]) -> list[dt.date]:
    """The days in [start, end) on `weekdays` (0 = Monday) that a query counts."""
    wanted = set(weekdays)
    return [start + dt.timedelta(days=d) for d in range((end - start).days)
            if (start + dt.timedelta(days=d)).weekday() in wanted and meta.holds(start + dt.timedelta(days=d))]


def slots_per_window(meta: DatasetMetadata, start: dt.date, end: dt.date, hours: Iterable[int],
                     weekdays: Iterable[int]) -> dict[int, int]:
    """window index -> S_w, the (day, hour) slots of that window the query covers (touched windows only)."""
    n_hours = len(set(hours))
    per_window: dict[int, int] = {}
    for day in counted_days(meta, start, end, weekdays):
        window = meta.window_of(day)
        per_window[window] = per_window.get(window, 0) + n_hours
    return per_window


def presence_sensitivity(meta: DatasetMetadata, *, start: dt.date, end: dt.date, hours: Iterable[int],
                         weekdays: Iterable[int], by_weekday: bool,
                         legacy_key_cap: int | None = None) -> PresenceSensitivity:
    """Sensitivity and count unit of presence counts over [start, end), `hours`, `weekdays`.

    `by_weekday`: keys split days by weekday (patterns: weekday × hour) rather than summing all
    counted days (presence: zone × hour). `legacy_key_cap` is the per-key cap to use for a
    dataset without one place per person-hour (it depends on the zoning: see
    key_contribution_cap); 1 if not given.
    """
    hour_list = sorted(set(hours))
    days = counted_days(meta, start, end, weekdays)
    per_window = slots_per_window(meta, start, end, hour_list, weekdays)
    slots = max(per_window.values(), default=0)
    bound = meta.bound_presence
    if not meta.one_place_per_hour:
        return PresenceSensitivity(slots, bound, max(1, min(bound, legacy_key_cap or 1)), PERSON_CELL_HOURS)
    # a key sums one hour of every counted day (of its weekday, for patterns): its days, per window and in all
    in_window: dict[tuple[int, int], int] = {}
    in_all: dict[int, int] = {}
    for day in days:
        group = day.weekday() if by_weekday else 0
        in_window[(meta.window_of(day), group)] = in_window.get((meta.window_of(day), group), 0) + 1
        in_all[group] = in_all.get(group, 0) + 1
    l1 = max(1, min(bound, slots))
    # one person adds at most 1 per (day, hour) slot: to one key at most its days in one window
    key_cap = max(1, min(l1, max(in_window.values(), default=1)))
    # a key of one day is one slot: at most one record per person, so its count is of distinct people
    unit = PEOPLE if max(in_all.values(), default=0) <= 1 else PERSON_HOURS
    return PresenceSensitivity(slots, l1, key_cap, unit)


def query_presence_sensitivity(spec: QuerySpec, data: Dataset) -> PresenceSensitivity:
    """`presence_sensitivity` of a presence query, or of patterns of presence, on `data` (what the service calls)."""
    if spec.counted_measure != "presence":
        raise ValueError(f"{spec.kind} of {spec.counted_measure} does not count presence")
    legacy_cap = None
    if not data.metadata.one_place_per_hour:
        legacy_cap = key_contribution_cap(spec, data)
    return presence_sensitivity(data.metadata, start=spec.start, end=spec.end, hours=spec.hours,
                                weekdays=spec.weekdays, by_weekday=spec.kind == "patterns",
                                legacy_key_cap=legacy_cap)


def key_contribution_cap(spec: QuerySpec, data: Dataset) -> int:
    """The most one person-window can add to one released key of `spec` (zCDP's per-key cap).

    Ingestion caps each person at C per aggregate row of a measure (`DatasetMetadata.key_cap`:
    trips rows (day, hour, origin, dest), presence rows (day, hour, cell), where C = 1), so a key
    that sums R rows of one window gets at most C·R from one person, and never more than L.
    R counts public facts only: the query's days in one window (per weekday for patterns), the
    hours a key spans, and the cells a key's zones hold.
    """
    meta = data.metadata
    measure = spec.counted_measure
    bound = meta.bound(measure)
    zoning = data.zoning(spec.zoning)
    first, stop = (spec.start - meta.first_day).days, (spec.end - meta.first_day).days
    per_window: dict[tuple[int, int], int] = {}
    for d in range(first, stop):
        weekday = (meta.first_day + dt.timedelta(days=d)).weekday()
        if weekday in spec.weekdays:
            slot = (d // meta.window_days, weekday if spec.kind == "patterns" else 0)
            per_window[slot] = per_window.get(slot, 0) + 1
    days = max(per_window.values(), default=0)
    largest_zone = int(zoning.cells_per_zone().max())
    n_cells = len(data.catalog)
    if spec.kind == "flows":
        rows = days * len(spec.hours) * largest_zone * largest_zone
    elif spec.kind in ("inflows", "outflows"):
        rows = days * len(spec.hours) * largest_zone * n_cells
    elif spec.kind == "presence":
        rows = days * largest_zone
    else:
        cells = int(zoning.cells_per_zone()[zoning.zone_index(spec.zone)]) if spec.zone is not None else n_cells
        rows = days * cells * (n_cells if measure == "trips" else 1)
    return max(1, min(bound, meta.key_cap(measure) * rows))

