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
from collections.abc import Iterable, Iterator

import numpy as np

from dpflows.aggregates import Dataset
from dpflows.cells import Zoning
from dpflows.query_kinds import PLACES
from dpflows.window_files import HOURS, SlotTable, WindowData

#: Rows counted per bincount: 1 M rows take ~20 MB of temporary arrays.
CHUNK_ROWS = 1 << 20


def warm_flow_keys(datasets: Iterable[Dataset], max_bytes: int) -> int:
    """Each trip row's flow key (origin zone · n + destination zone), per window and zoning, computed once
    after start so that a flows answer bins precomputed keys (one bincount) instead of mapping both cells
    of every row to zones per request: the true counts of 10,000 zone pairs over 4 weeks in a few ms
    instead of ~10. Held as 8 bytes a row, at most `max_bytes` per process (DPFLOWS_FLOW_KEYS_BYTES).

    Which keys are held follows public facts in a fixed order (the datasets served at start, their
    windows newest first, their zonings by name), never the queries asked: a request that finds none
    counts as before and stores nothing, so no answer's speed tells a client what another asked.
    Returns the bytes held."""
    held = 0
    for data in datasets:
        mapped = data.mapped_windows()  # what the start mapped; a window that failed to map is skipped here
        for index in sorted(mapped, reverse=True):
            window = mapped[index]
            for name in sorted(data.zonings):
                zoning = data.zonings[name]
                rows = len(window.trips.columns["count"])
                if held + rows * 8 > max_bytes:
                    return held
                keys = zoning.zone_of_cell[window.trips.columns["origin"]] * zoning.zone_count
                keys += zoning.zone_of_cell[window.trips.columns["dest"]]
                data.flow_keys[(index, name)] = (zoning, window, keys.astype(np.intp, copy=False))
                held += keys.nbytes
    return held


def _flow_keys(data: Dataset, index: int, zoning: Zoning, window: WindowData) -> np.ndarray | None:
    """The precomputed flow keys of this window version and zoning, if the warm-up made them."""
    found = data.flow_keys.get((index, zoning.name))
    return found[2] if found is not None and found[0] is zoning and found[1] is window else None


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


def slot_rows(kind: str, measure: str, start: dt.date, end: dt.date, hours: tuple[int, ...],
              weekdays: tuple[int, ...], zone: int | None, data: Dataset, zoning: Zoning,
              windows: tuple[int, ...]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """flows, inflows, outflows, presence or patterns: the rows asked, piece by piece, as (each row's key, in
    the key domain's order; its count). `slot_counts` bins them; a sparse answer keeps the keys they hit."""
    n, zone_of = zoning.zone_count, zoning.zone_of_cell
    n_hours = len(hours)
    hour_pos = np.full(HOURS, -1, dtype=np.int64)
    hour_pos[list(hours)] = np.arange(n_hours)
    day_pos = np.full(7, -1, dtype=np.int64)
    day_pos[list(weekdays)] = np.arange(len(weekdays))
    for w in windows:
        window = data.window(w)
        table = window.slots(measure)
        flow_keys = _flow_keys(data, w, zoning, window) if kind == "flows" else None
        for s, e in _pieces(table, slot_runs(start, end, hours, weekdays, window)):
            lo, hi = int(table.offsets[s]), int(table.offsets[e])
            cols = {c: v[lo:hi] for c, v in table.columns.items()}
            count = cols["count"]
            if flow_keys is not None:
                keys = flow_keys[lo:hi]
            elif kind == "flows":
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
            yield keys, count


def slot_counts(kind: str, measure: str, start: dt.date, end: dt.date, hours: tuple[int, ...],
                weekdays: tuple[int, ...], zone: int | None, data: Dataset, zoning: Zoning,
                windows: tuple[int, ...]) -> np.ndarray:
    """flows, inflows, outflows, presence or patterns: the count per key, in the key domain's order."""
    n = zoning.zone_count
    size = {"flows": n * n, "inflows": n, "outflows": n, "presence": n * len(hours),
            "patterns": len(weekdays) * len(hours)}[kind]
    total = np.zeros(size, dtype=np.float64)
    for keys, count in slot_rows(kind, measure, start, end, hours, weekdays, zone, data, zoning, windows):
        total += np.bincount(keys, weights=count, minlength=size)
    return total


def window_rows(kind: str, place: str | None, data: Dataset, zoning: Zoning,
                windows: tuple[int, ...]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """residents or commuting: each window's rows as (key, in the key domain's order; count)."""
    n, zone_of, k = zoning.zone_count, zoning.zone_of_cell, len(windows)
    for pos, w in enumerate(windows):
        table = data.window(w).places(kind)
        cols = table.columns
        if kind == "residents":
            keep = cols["place"] == PLACES.index(place or "")
            yield zone_of[cols["cell"][keep]] * k + pos, cols["count"][keep]
        else:
            yield (zone_of[cols["home"]] * n + zone_of[cols["work"]]) * k + pos, cols["count"]


def window_counts(kind: str, place: str | None, data: Dataset, zoning: Zoning,
                  windows: tuple[int, ...]) -> np.ndarray:
    """Residents per (zone, window) or home zone → work zone per window: each person-window adds at most 1."""
    n, k = zoning.zone_count, len(windows)
    size = n * k if kind == "residents" else n * n * k
    total = np.zeros(size, dtype=np.float64)
    for keys, count in window_rows(kind, place, data, zoning, windows):
        total += np.bincount(keys, weights=count, minlength=size)
    return total
