"""The events of one bucket sorted once by (person, time, cell), and the run primitives read over that order.

sorted_bucket.py derives everything from this order: a person's hours, days and windows are runs
of it, found by comparing neighbours (`starts`) instead of grouping by hashes. Secret; ingestion
only: the person column becomes dense numbers, kept apart with the persons themselves for the
keyed hashes that must see them as given.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import polars as pl

_UNITS_PER_SECOND = {"ns": 10**9, "us": 10**6, "ms": 10**3}


class Unsupported(Exception):
    """Input this path does not pack (a time zone other than UTC, persons neither integers nor strings,
    keys beyond 128 bits): use the reference."""


@dataclass(frozen=True)
class SortedEvents:
    """A bucket's events in (person, time, cell) order, as arrays: the one sort every step reads."""

    pid: np.ndarray  # int32: dense person number, increasing in this order
    t: np.ndarray  # int64: time since the first day's midnight, in the timestamps' own unit
    cell: np.ndarray  # uint32: cell index
    hour: np.ndarray  # int32: hours since the first day's midnight
    persons: pl.Series  # pid -> the person as given (for keyed hashes only)
    timestamp: pl.Datetime  # the timestamps' type, to rebuild them for the trips' hash
    unit: Literal["ns", "us", "ms"]  # its time unit
    per_hour: int  # time units per hour


@dataclass(frozen=True)
class Grid:
    """Days, hours and windows as integers from the first day: the packing of every key."""

    first_day: dt.date
    window_days: int
    n_cells: int

    def window(self, day: np.ndarray) -> np.ndarray:
        """Window numbers as the reference's Int64 column holds them (the keyed hashes see the type)."""
        return (day // self.window_days).astype(np.int64)

    def window_of_hour(self, hour: np.ndarray) -> np.ndarray:
        return hour // 24 // self.window_days

    def days(self, day: np.ndarray) -> pl.Series:
        """Day numbers → the reference's Date column."""
        epoch = (self.first_day - dt.date(1970, 1, 1)).days
        return pl.Series("day", (day + epoch).astype(np.int32)).cast(pl.Date)


def sort_events(events: pl.DataFrame, grid: Grid) -> SortedEvents:
    """The events sorted by (person, timestamp, cell), as derive.trips orders them, through one integer key.

    The key packs (person, time, cell) into 64 bits where they fit (persons as offsets from the
    smallest or as dense ranks, times in the coarsest unit all of them are whole multiples of),
    else into 128 bits. Any order of persons will do: every later step works person by person.
    """
    ts_type = events.schema["timestamp"]
    if not isinstance(ts_type, pl.Datetime) or ts_type.time_zone not in (None, "UTC"):
        raise Unsupported("timestamps in a time zone other than UTC")
    unit = ts_type.time_unit or "us"
    per_second = _UNITS_PER_SECOND[unit]
    midnight = dt.datetime.combine(grid.first_day, dt.time())
    t = _array(events["timestamp"].to_physical())
    t -= pl.Series([midnight]).cast(pl.Datetime(unit)).to_physical()[0]
    cell = _array(events["cell"])
    step = next(d for d in (per_second, per_second // 1000, 1) if d >= 1 and not np.any(t % d))
    latest = int(t.max(initial=0))
    time_bits, cell_bits = max(1, (latest // step).bit_length()), max(1, (grid.n_cells - 1).bit_length())
    if grid.n_cells ** 2 * 24 * (latest // (3600 * per_second) + 1) >= 2**63:
        raise Unsupported("a span and catalog too large to pack trips into 64-bit keys")
    p, person_of = _person_keys(events["person"], 64 - time_bits - cell_bits)
    if int(p.max(initial=0)).bit_length() + time_bits + cell_bits <= 64:
        key = p  # (person, time, cell) packed in place, then sorted in place
        key <<= np.uint64(time_bits + cell_bits)
        quantum = (t // step if step > 1 else t).view(np.uint64)
        quantum <<= np.uint64(cell_bits)
        key |= quantum
        key |= cell
        del quantum, t, cell
        key.sort()
        high = key >> np.uint64(time_bits + cell_bits)
        first = starts(high)
        p = high[first]
        del high
        cell = key.astype(np.uint32)  # the low 32 bits
        cell &= np.uint32((1 << cell_bits) - 1)
        t = key >> np.uint64(cell_bits)
        del key
        t &= np.uint64((1 << time_bits) - 1)
        t = t.view(np.int64)
        if step > 1:
            t *= step
    elif 64 + time_bits + cell_bits <= 128:
        p, t, cell = _sort_wide(p, t // step, cell, time_bits, cell_bits)
        t = t * step
        first = starts(p)
        p = p[first]
    else:
        raise Unsupported("times and cells too wide to pack into 128-bit keys")
    pid = np.cumsum(first, dtype=np.int32)
    pid -= 1
    hour = (t // (3600 * per_second)).astype(np.int32)
    return SortedEvents(pid, t, cell, hour, person_of(p).alias("person"), ts_type, unit, 3600 * per_second)


def _person_keys(person: pl.Series, room: int) -> tuple[np.ndarray, Callable[[np.ndarray], pl.Series]]:
    """Persons as distinct non-negative integers (a fresh array), and the way back from keys to persons.

    Integers: offsets from the smallest when they fit in `room` bits, else ranks among the
    distinct persons. Strings: their categorical codes. Other types go to the reference path.
    """
    if person.dtype.is_integer():  # offsets are exact in 64 bits: int64 wraps, the difference fits
        values = _array(person.cast(pl.UInt64 if person.dtype == pl.UInt64 else pl.Int64))
        lowest = values.min()
        offsets = (values - lowest).view(np.uint64)
        if int(offsets.max()).bit_length() <= room:
            base = lowest.view(np.uint64)
            return offsets, lambda keys: pl.Series((keys + base).view(values.dtype)).cast(person.dtype)
        table = np.unique(values)
        return np.searchsorted(table, values).astype(np.uint64), lambda keys: pl.Series(table[keys]).cast(person.dtype)
    if person.dtype != pl.String:
        raise Unsupported(f"persons of type {person.dtype}")
    codes = _array(person.cast(pl.Categorical).to_physical())  # one code per distinct string
    row = np.zeros(int(codes.max(initial=0)) + 1, dtype=np.int64)
    row[codes] = np.arange(len(codes))  # a row of each person
    return codes.astype(np.uint64), lambda keys: person.gather(row[keys])


def _array(column: pl.Series) -> np.ndarray:
    """A numeric column as a NumPy array of its own, allocated by NumPy: one copy, in large pages.

    (Polars' own copy of a many-chunk column comes in small pages, each a page fault on first
    touch: at 5 M events, 10,000 faults per column instead of 300.)
    """
    chunks = [chunk.to_numpy() for chunk in column.get_chunks()]
    return np.concatenate(chunks) if chunks else column.to_numpy().copy()


def _sort_wide(p: np.ndarray, t: np.ndarray, cell: np.ndarray, time_bits: int,
               cell_bits: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(person, time, cell) sorted by one 128-bit key (Polars): for inputs 64 bits cannot hold."""
    lo, mid = pl.lit(1 << cell_bits, pl.UInt128), pl.lit(1 << (cell_bits + time_bits), pl.UInt128)
    frame = pl.DataFrame({"p": p, "t": t, "cell": cell})
    key = (pl.col("p").cast(pl.UInt128) * mid + pl.col("t").cast(pl.UInt128) * lo + pl.col("cell").cast(pl.UInt128))
    ordered = frame.select(key.alias("k")).sort("k")
    del frame
    k = ordered["k"]
    decoded = ordered.select((k // mid).cast(pl.UInt64).alias("p"),
                             ((k // lo) % pl.lit(1 << time_bits, pl.UInt128)).cast(pl.Int64).alias("t"),
                             (k % lo).cast(pl.UInt32).alias("cell"))
    return decoded["p"].to_numpy(), decoded["t"].to_numpy(), decoded["cell"].to_numpy()


def starts(*columns: np.ndarray) -> np.ndarray:
    """Row i begins a new run: some column differs from row i - 1 (rows sorted by those columns)."""
    n = len(columns[0])
    first = np.zeros(n, dtype=bool)
    if n:
        first[0] = True
        for column in columns:
            first[1:] |= column[1:] != column[:-1]
    return first


def lookup(values: np.ndarray, f: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """f(values) for small non-negative integers, through a table of f over 0..max: one gather, no arithmetic."""
    return f(np.arange(int(values.max(initial=0)) + 1))[values]


def run_sizes(first: np.ndarray) -> np.ndarray:
    """Length of each run, given its first rows."""
    at = np.flatnonzero(first)
    return np.diff(np.append(at, len(first)))


def modal(groups: np.ndarray, cells: np.ndarray, n: np.ndarray,
          tie_hash: Callable[[np.ndarray], np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Per group: the cell of largest n, then of smallest tie hash, then smallest cell (derive's order).

    Rows are sorted by group, then cell; `tie_hash(rows)` hashes only rows tied for the largest n.
    """
    if not len(groups):
        return groups, cells
    first = starts(groups)
    at = np.flatnonzero(first)
    member = np.cumsum(first) - 1
    top = np.maximum.reduceat(n, at)
    candidate = np.flatnonzero(n == top[member])  # rows of the largest n, in (group, cell) order
    lead = starts(member[candidate])
    choice = cells[candidate[lead]]  # every group has one: its smallest cell of the largest n
    tied_groups = np.zeros(len(at), dtype=bool)
    tied_groups[member[candidate[~lead]]] = True
    tied = candidate[tied_groups[member[candidate]]]
    if len(tied):
        h = tie_hash(tied)
        group = member[tied]
        heads = np.flatnonzero(starts(group))
        lowest = np.minimum.reduceat(h, heads)
        best = np.flatnonzero(h == lowest[np.cumsum(starts(group)) - 1])
        best = best[starts(group[best])]  # equal hashes (about 2^-64): the smallest cell, first in order
        choice[group[best]] = cells[tied[best]]
    return groups[at], choice
