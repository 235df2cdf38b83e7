"""One bucket's events → its bounded counts, from one sort of the events: the Polars engine's fast path.

derive.py and bounding.py say which records exist and which survive the bound; they stay the
reference (and the Spark engine mirrors them). This module computes the very same records and
keeps the very same ones, record for record and for any seed (tests/ingest/test_sorted_bucket.py
compares the two on inputs full of ties, duplicates and bounds that bind), only with fewer passes:

- the events are sorted once, by one integer key packing (person, time, cell), the order the
  trips rule reads them in (sorted_events.py); persons become dense numbers (`pid`) and every
  later grouping is a run of that order, found by comparing neighbours, not by hash group-bys;
- presence: a person-hour whose events all lie in one cell (most of them) takes that cell; only
  hours of several cells count events per cell and break ties by derive's keyed hash;
- homes and work cells (sorted_places.py): per person-window counts by sorting one packed key,
  the modal cell by segmented maxima, derive's keyed hash only where cells tie;
- the bound: a person-window of at most L records keeps all of them whatever their ranks, so
  only person-windows above L are ranked: their records are rebuilt with the reference's columns
  and types, hashed by `bounding.record_hash` (the reference's rank key) and the L smallest kept,
  equal hashes in row order as Polars' ordinal rank keeps them;
- counts per key by `np.bincount` over dense integer keys, or one sort where the key space is large.

The person column never leaves this module but as those records; nothing here is logged.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import polars as pl

from dpflows.aggregates import PlaceRule
from dpflows.ingest import derive
from dpflows.ingest.bounding import cap_per_person_key, record_hash
from dpflows.ingest.contribution_histograms import ContributionHistograms
from dpflows.ingest.sorted_events import Grid, SortedEvents, Unsupported, lookup, modal, run_sizes, sort_events, starts
from dpflows.ingest.sorted_places import homes_and_works, place_counts

__all__ = ["Counts", "Unsupported", "bucket_counts"]

TRIP_SEED_MASK = 0x5A5A5A5A  # the trips' bounding seed is seed ^ this, as in the Spark engine


@dataclass(frozen=True)
class Counts:
    """One bucket's bounded counts, keyed by cell index."""

    trips: pl.DataFrame  # (day, hour, origin, dest) -> count
    presence: pl.DataFrame  # (day, hour, cell) -> count
    residents: pl.DataFrame  # (window, place, cell) -> count
    commuting: pl.DataFrame  # (window, home, work) -> count


def bucket_counts(events: pl.DataFrame, *, first_day: dt.date, window_days: int, n_cells: int,
                  bound_presence: int, bound_trips: int, trip_rule: str, min_dwell: dt.timedelta,
                  places: PlaceRule, key_cap: int | None, seed: int,
                  histograms: ContributionHistograms) -> Counts:
    """(person, timestamp, cell) of whole persons → bounded counts, exactly as derive + bounding make them.

    The exact contribution histograms of the bucket's person-windows are added to `histograms`.
    Raises Unsupported, before touching `histograms`, for input it does not pack.
    """
    grid = Grid(first_day, window_days, n_cells)
    ev = sort_events(events, grid)
    # trips in a second thread, presence and places in this one: both read the sorted events only,
    # and their array work releases the GIL, so the two cores share the derivation
    with ThreadPoolExecutor(max_workers=1) as pool:
        trips_job = pool.submit(_trip_counts, ev, grid, trip_rule=trip_rule, min_dwell=min_dwell, key_cap=key_cap,
                                bound=bound_trips, seed=seed ^ TRIP_SEED_MASK)
        hours = _presence(ev, grid, seed)  # (pid, hour index, cell): one per person-hour, in (pid, hour) order
        home, work = homes_and_works(ev, grid, hours, places, seed)
        residents, commuting = place_counts(grid, home, work)
        hour_keys = hours["hour"].astype(np.uint64) * np.uint64(n_cells) + hours["cell"]
        presence, presence_sizes = _bounded_counts(grid, hour_keys, hours["pid"], hours["window"], bound_presence,
                                                   records=_presence_records(ev, grid, hours), cells=["cell"],
                                                   seed=seed)
        trip_counts, trip_sizes = trips_job.result()
    histograms.add_sizes("presence", presence_sizes)  # exact, before the bound; released with noise only
    histograms.add_sizes("trips", trip_sizes)
    return Counts(trip_counts, presence, residents, commuting)


def _trip_counts(ev: SortedEvents, grid: Grid, *, trip_rule: str, min_dwell: dt.timedelta, key_cap: int | None,
                 bound: int, seed: int) -> tuple[pl.DataFrame, np.ndarray]:
    """Trips derived, capped per key (zCDP), bounded per person-window and counted; and each person-window's trips."""
    trips = _trips(ev, trip_rule, min_dwell)
    if key_cap is not None:
        trips = _cap_per_key(ev, trips, key_cap)
    hour = trips["t"] // ev.per_hour
    n = np.uint64(grid.n_cells)
    keys = (hour.astype(np.uint64) * n + trips["origin"]) * n + trips["dest"]  # (day, hour, origin, dest)
    return _bounded_counts(grid, keys, trips["pid"], lookup(hour, grid.window_of_hour), bound,
                           records=_trip_records(ev, grid, trips), cells=["origin", "dest"], seed=seed)


def _kept_by_rank(records: pl.DataFrame, units: np.ndarray, bound: int, seed: int) -> np.ndarray:
    """Rows of `records` that bound_per_person_window keeps: per unit, the `bound` of smallest record hash.

    Units are runs of rows (person-windows); equal hashes rank in row order, as Polars' ordinal
    rank does. The hash is bounding.record_hash, the very expression the reference ranks by.
    """
    h = records.select(record_hash(records.columns, seed)).to_series().to_numpy()
    unit = np.cumsum(starts(units)) - 1  # 0, 1, ... per run
    unit_bits = max(1, int(unit[-1]).bit_length())
    # one 64-bit key: the unit, then the hash's top bits; exact unless two of a unit's hashes share
    # those bits (about 2^-40 per pair), then by both in full, stably
    key = (unit.astype(np.uint64) << np.uint64(64 - unit_bits)) | (h >> np.uint64(unit_bits))
    order = np.argsort(key)
    ordered = key[order]
    if np.any(ordered[1:] == ordered[:-1]):
        order = np.lexsort((h, unit))
    first = starts(unit[order])
    rank = np.arange(len(order)) - np.repeat(np.flatnonzero(first), run_sizes(first))
    return np.sort(order[rank < bound])


def _presence(ev: SortedEvents, grid: Grid, seed: int) -> dict[str, np.ndarray]:
    """(pid, hour, cell) per person-hour: the cell of most events, ties by derive's keyed hash."""
    hour = ev.hour
    first = starts(ev.pid, hour)
    at = np.flatnonzero(first)
    pid, hour_of_run, cell = ev.pid[at], hour[at], ev.cell[at]  # a person-hour of one cell takes it
    # person-hours of several cells: a row's cell differs from the row before it, in the same hour
    change = np.flatnonzero(~first[1:] & (ev.cell[1:] != ev.cell[:-1])) + 1
    if len(change):
        mixed = np.searchsorted(at, change, side="right") - 1  # sorted: one entry per change
        mixed = mixed[starts(mixed)]
        lengths = np.diff(np.append(at, len(first)))[mixed]
        rows = np.arange(lengths.sum()) + np.repeat(at[mixed] - (np.cumsum(lengths) - lengths), lengths)
        # (mixed hour, cell) -> events, sorted by hour then cell
        keys, n = np.unique(np.repeat(np.arange(len(mixed), dtype=np.uint64), lengths) * np.uint64(grid.n_cells)
                            + ev.cell[rows].astype(np.uint64), return_counts=True)
        groups = (keys // np.uint64(grid.n_cells)).astype(np.int64)
        cells = (keys % np.uint64(grid.n_cells)).astype(np.uint32)
        runs = mixed[groups]

        def tie_hash(i: np.ndarray) -> np.ndarray:
            frame = pl.DataFrame([ev.persons.gather(pid[runs[i]]), grid.days(hour_of_run[runs[i]] // 24),
                                  pl.Series("hour", hour_of_run[runs[i]] % 24, dtype=pl.Int8),
                                  pl.Series("cell", cells[i])])
            return frame.select(pl.struct("person", "day", "hour", "cell").hash(seed ^ derive.HOUR_TIE_MASK)
                                ).to_series().to_numpy()

        chosen, chosen_cell = modal(groups, cells, n, tie_hash)
        cell[mixed[chosen]] = chosen_cell
    return {"pid": pid, "hour": hour_of_run, "cell": cell, "window": lookup(hour_of_run, grid.window_of_hour)}


def _presence_records(ev: SortedEvents, grid: Grid,
                      hours: dict[str, np.ndarray]) -> Callable[[np.ndarray], pl.DataFrame]:
    """Presence records (person, day, hour, cell, window) of some hour rows, with the reference's columns and types."""
    def build(i: np.ndarray) -> pl.DataFrame:
        day = hours["hour"][i] // 24
        return pl.DataFrame([ev.persons.gather(hours["pid"][i]), grid.days(day),
                             pl.Series("hour", hours["hour"][i] % 24, dtype=pl.Int8),
                             pl.Series("cell", hours["cell"][i]), pl.Series("window", grid.window(day))])
    return build


def _trip_records(ev: SortedEvents, grid: Grid, trips: dict[str, np.ndarray]) -> Callable[[np.ndarray], pl.DataFrame]:
    """Trip records (person, timestamp, origin, dest, day, hour, window), with the reference's columns and types."""
    midnight = pl.Series([dt.datetime.combine(grid.first_day, dt.time())]).cast(pl.Datetime(ev.unit))

    def build(i: np.ndarray) -> pl.DataFrame:
        hour = trips["t"][i] // ev.per_hour
        stamp = pl.Series("timestamp", trips["t"][i] + midnight.to_physical()[0]).cast(ev.timestamp)
        return pl.DataFrame([ev.persons.gather(trips["pid"][i]), stamp,
                             pl.Series("origin", trips["origin"][i]), pl.Series("dest", trips["dest"][i]),
                             grid.days(hour // 24), pl.Series("hour", hour % 24, dtype=pl.Int8),
                             pl.Series("window", grid.window(hour // 24))])
    return build


def _bounded_counts(grid: Grid, keys: np.ndarray, pid: np.ndarray, window: np.ndarray, bound: int, *,
                    records: Callable[[np.ndarray], pl.DataFrame], cells: list[str],
                    seed: int) -> tuple[pl.DataFrame, np.ndarray]:
    """Counts per key of the records `bound_per_person_window` keeps, and the records of each person-window.

    Rows are sorted by (pid, window). A person-window of at most `bound` records keeps them all
    whatever their ranks, so only the larger ones are ranked (`_kept_by_rank`).
    """
    first = starts(pid, window)
    sizes = run_sizes(first)
    large = sizes > bound
    over = np.repeat(large, sizes)
    kept = [keys[~over]]
    if large.any():
        rows = np.flatnonzero(over)
        units = np.repeat(np.flatnonzero(large), sizes[large])  # the person-window of each of those rows
        kept.append(keys[rows[_kept_by_rank(records(rows), units, bound, seed)]])
    return _counts(np.concatenate(kept), grid, cells), sizes


def _counts(keys: np.ndarray, grid: Grid, cells: list[str]) -> pl.DataFrame:
    """Packed keys → (day, hour, *cells, count), cell columns as indexes."""
    if len(keys) and int(keys.max()) < max(1 << 16, 4 * len(keys)):  # dense: one linear count
        tally = np.bincount(keys.view(np.int64))
        unique = np.flatnonzero(tally)
        count = tally[unique]
        unique = unique.astype(np.uint64)
    else:
        unique, count = np.unique(keys, return_counts=True)
    columns: list[pl.Series] = []
    for cell in reversed(cells):
        columns.insert(0, pl.Series(cell, (unique % np.uint64(grid.n_cells)).astype(np.uint32)))
        unique = unique // np.uint64(grid.n_cells)
    day = (unique // np.uint64(24)).astype(np.int64)
    return pl.DataFrame([grid.days(day), pl.Series("hour", (unique % np.uint64(24)).astype(np.int8)), *columns,
                         pl.Series("count", count.astype(np.int64))])


def _trips(ev: SortedEvents, rule: str, min_dwell: dt.timedelta) -> dict[str, np.ndarray]:
    """(pid, t, origin, dest) of each trip, in (pid, t) order: derive.trips on the sorted events."""
    day = lookup(ev.hour, lambda h: h // 24)
    new_day = starts(ev.pid, day)
    visit = new_day.copy()
    visit[1:] |= ev.cell[1:] != ev.cell[:-1]
    v = np.flatnonzero(visit)
    if rule == "stay":
        # a visit is a stay when the next visit of its person-day starts min_dwell later, or there is none
        last = np.ones(len(v), dtype=bool)
        last[:-1] = new_day[v[1:]]
        dwell = min_dwell // dt.timedelta(microseconds=1)  # exact: timedelta counts microseconds
        scale = {"ns": (1, 1000), "us": (1, 1), "ms": (1000, 1)}[ev.unit]  # compare in the finer of the two units
        gap = np.zeros(len(v), dtype=np.int64)
        gap[:-1] = ev.t[v[1:]] - ev.t[v[:-1]]
        v = v[last | (gap * scale[0] >= dwell * scale[1])]
    linked = np.zeros(len(v), dtype=bool)
    linked[1:] = (ev.pid[v[1:]] == ev.pid[v[:-1]]) & (day[v[1:]] == day[v[:-1]])
    origin = np.zeros(len(v), dtype=np.uint32)
    origin[1:] = ev.cell[v[:-1]]
    trip = linked & (origin != ev.cell[v])
    rows = v[trip]
    return {"pid": ev.pid[rows], "t": ev.t[rows], "origin": origin[trip], "dest": ev.cell[rows]}


def _cap_per_key(ev: SortedEvents, trips: dict[str, np.ndarray], cap: int) -> dict[str, np.ndarray]:
    """At most `cap` trips per (person, day, hour, origin, dest), the earliest: bounding.cap_per_person_key."""
    frame = pl.DataFrame({"pid": trips["pid"], "hour": trips["t"] // ev.per_hour, "origin": trips["origin"],
                          "dest": trips["dest"]}).with_row_index("_i")
    kept = cap_per_person_key(frame.lazy(), cap, keys=["hour", "origin", "dest"], person="pid").collect()
    rows = kept["_i"].to_numpy()
    return {name: column[rows] for name, column in trips.items()}
