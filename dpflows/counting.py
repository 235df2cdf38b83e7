"""The exact count per public key of a checked query, read from the slots it asks for and nothing else.

A window's rows are sorted by slot (day · 24 + hour) with offsets per slot
(dpflows.window_files), so a query over one day reads that day's rows, and four weeks read four
weeks' rows: the work follows the days and hours asked, never the dataset's whole span. Rows
are read in pieces of at most CHUNK_ROWS (one slot at least), each counted with one bincount
into the answer's vector, so the memory a query takes is bounded whatever its span. Nothing
here leaves the process: `queries.prepare` turns the vector into the true counts that noise
is added to.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import numpy as np

from dpflows.aggregates import Dataset
from dpflows.cells import Zoning
from dpflows.query_kinds import PLACES
from dpflows.window_files import HOURS, SlotTable, WindowData

#: Rows counted per bincount: 1 M rows take ~20 MB of temporary arrays.
CHUNK_ROWS = 1 << 20


def _runs(values: tuple[int, ...]) -> list[tuple[int, int]]:
    """Sorted distinct integers as [from, to) runs of consecutive values."""
    runs: list[tuple[int, int]] = []
    for v in values:
        if runs and runs[-1][1] == v:
            runs[-1] = (runs[-1][0], v + 1)
        else:
            runs.append((v, v + 1))
    return runs


def slot_runs(start: dt.date, end: dt.date, hours: tuple[int, ...], weekdays: tuple[int, ...],
              window: WindowData) -> list[tuple[int, int]]:
    """[from, to) runs of this window's slots the query counts: its dates on its weekdays, at its hours."""
    hour_runs = _runs(hours)
    runs: list[tuple[int, int]] = []
    for i in range(window.days):
        day = window.first_day + dt.timedelta(days=i)
        if not start <= day < end or day.weekday() not in weekdays:
            continue
        for h0, h1 in hour_runs:
            lo, hi = i * HOURS + h0, i * HOURS + h1
            if runs and runs[-1][1] == lo:
                runs[-1] = (runs[-1][0], hi)
            else:
                runs.append((lo, hi))
    return runs


def _pieces(table: SlotTable, runs: list[tuple[int, int]]) -> Iterator[tuple[int, int]]:
    """The runs cut into [from, to) slot ranges of at most CHUNK_ROWS rows (one slot at least)."""
    offsets = table.offsets
    for lo, hi in runs:
        s = lo
        while s < hi:
            fits = int(np.searchsorted(offsets, offsets[s] + CHUNK_ROWS, side="right")) - 1
            e = min(hi, max(s + 1, fits))
            if offsets[e] > offsets[s]:
                yield s, e
            s = e


def slot_counts(kind: str, measure: str, start: dt.date, end: dt.date, hours: tuple[int, ...],
                weekdays: tuple[int, ...], zone: int | None, data: Dataset, zoning: Zoning,
                windows: tuple[int, ...]) -> np.ndarray:
    """flows, inflows, outflows, presence or patterns: the count per key, in the key domain's order."""
    n, zone_of = zoning.zone_count, zoning.zone_of_cell
    n_hours = len(hours)
    hour_pos = np.full(HOURS, -1, dtype=np.int64)
    hour_pos[list(hours)] = np.arange(n_hours)
    day_pos = np.full(7, -1, dtype=np.int64)
    day_pos[list(weekdays)] = np.arange(len(weekdays))
    size = {"flows": n * n, "inflows": n, "outflows": n, "presence": n * n_hours,
            "patterns": len(weekdays) * n_hours}[kind]
    total = np.zeros(size, dtype=np.float64)
    for w in windows:
        window = data.window(w)
        table = window.slots(measure)
        for s, e in _pieces(table, slot_runs(start, end, hours, weekdays, window)):
            lo, hi = int(table.offsets[s]), int(table.offsets[e])
            cols = {c: v[lo:hi] for c, v in table.columns.items()}
            count = cols["count"]
            if kind == "flows":
                keys = zone_of[cols["origin"]] * n + zone_of[cols["dest"]]
            elif kind in ("inflows", "outflows"):
                # a trip within one zone leaves it and arrives in it: it counts in both answers (docs/planner.md)
                keys = zone_of[cols["dest" if kind == "inflows" else "origin"]]
            else:
                slot = np.repeat(np.arange(s, e), np.diff(table.offsets[s:e + 1]))
                hour = hour_pos[slot % HOURS]
                cells = cols["origin" if measure == "trips" else "cell"]
                if kind == "presence":
                    keys = zone_of[cells] * n_hours + hour
                else:
                    weekday = day_pos[(slot // HOURS + window.first_day.weekday()) % 7]
                    keys = weekday * n_hours + hour
                    if zone is not None:
                        inside = zone_of[cells] == zone
                        keys, count = keys[inside], count[inside]
            total += np.bincount(keys, weights=count, minlength=size)
    return total


def window_counts(kind: str, place: str | None, data: Dataset, zoning: Zoning,
                  windows: tuple[int, ...]) -> np.ndarray:
    """Residents per (zone, window) or home zone → work zone per window: each person-window adds at most 1."""
    n, zone_of, k = zoning.zone_count, zoning.zone_of_cell, len(windows)
    size = n * k if kind == "residents" else n * n * k
    total = np.zeros(size, dtype=np.float64)
    for pos, w in enumerate(windows):
        table = data.window(w).places(kind)
        cols = table.columns
        if kind == "residents":
            keep = cols["place"] == PLACES.index(place or "")
            keys = zone_of[cols["cell"][keep]] * k + pos
            total += np.bincount(keys, weights=cols["count"][keep], minlength=size)
        else:
            keys = (zone_of[cols["home"]] * n + zone_of[cols["work"]]) * k + pos
            total += np.bincount(keys, weights=cols["count"], minlength=size)
    return total
