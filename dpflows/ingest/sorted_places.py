"""Homes and work cells of person-windows over the sorted hour cells: derive.homes and derive.works, faster.

Counts per (person-window, cell) by sorting one packed integer key; the modal cell by segmented
maxima (`sorted_events.modal`), derive's keyed hash (its masks, its columns) only where cells tie.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import polars as pl

from dpflows.aggregates import PlaceRule
from dpflows.ingest import derive
from dpflows.ingest.sorted_events import Grid, SortedEvents, lookup, modal, starts


def homes_and_works(ev: SortedEvents, grid: Grid, hours: dict[str, np.ndarray], rule: PlaceRule,
            seed: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(unit's pid, window, cell) of each person-window's home and work cell: derive.homes and derive.works."""
    day, window = lookup(hours["hour"], lambda h: h // 24), hours["window"]
    first = starts(hours["pid"], window)
    unit = np.cumsum(first) - 1
    unit_pid, unit_window = hours["pid"][first], window[first]

    def tie_hash(mask: int) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
        def hashed(units: np.ndarray, cells: np.ndarray) -> np.ndarray:
            frame = pl.DataFrame([ev.persons.gather(unit_pid[units]), pl.Series("window", unit_window[units]),
                                  pl.Series("cell", cells)])
            return frame.select(pl.struct("person", "window", "cell").hash(seed ^ mask)).to_series().to_numpy()
        return hashed

    hour_of_day = lookup(hours["hour"], lambda h: h % 24)
    night = np.flatnonzero(_member_of(rule.home_hour_set, 24)[hour_of_day])
    units, cells, n = _per_unit_cell(unit[night], hours["cell"][night], grid.n_cells)
    home_unit, home_cell = _modal_places(units, cells, n, tie_hash(derive.HOME_TIE_MASK))
    weekday = lookup(day, lambda d: (grid.first_day.weekday() + d) % 7)
    daytime = np.flatnonzero(_member_of(rule.work_hour_set, 24)[hour_of_day]
                             & _member_of(rule.work_weekdays, 7)[weekday])
    # (unit, cell, day) -> hours; then per (unit, cell): hours and distinct days
    span = int(day.max(initial=0)) + 1
    per_day, n_day = np.unique((unit[daytime].astype(np.uint64) * np.uint64(grid.n_cells)
                                + hours["cell"][daytime].astype(np.uint64)) * np.uint64(span)
                               + day[daytime].astype(np.uint64), return_counts=True)
    unit_cell = per_day // np.uint64(span)
    at = np.flatnonzero(starts(unit_cell))
    units = (unit_cell[at] // np.uint64(grid.n_cells)).astype(np.int64)
    cells = (unit_cell[at] % np.uint64(grid.n_cells)).astype(np.uint32)
    n = np.add.reduceat(n_day, at) if len(at) else n_day
    days = np.diff(np.append(at, len(n_day)))
    enough = days >= rule.min_work_days
    work_unit, work_cell = _modal_places(units[enough], cells[enough], n[enough], tie_hash(derive.WORK_TIE_MASK))
    home_of = np.full(len(unit_pid), -1, dtype=np.int64)
    home_of[home_unit] = home_cell
    not_home = home_of[work_unit] != work_cell
    work_unit, work_cell = work_unit[not_home], work_cell[not_home]
    return ({"unit": home_unit, "window": unit_window[home_unit], "cell": home_cell},
            {"unit": work_unit, "window": unit_window[work_unit], "cell": work_cell})


def _member_of(values: tuple[int, ...], size: int) -> np.ndarray:
    """A lookup table: table[x] is whether x is one of `values` (0 <= x < size)."""
    table = np.zeros(size, dtype=bool)
    table[list(values)] = True
    return table


def _per_unit_cell(units: np.ndarray, cells: np.ndarray, n_cells: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows of (unit, cell) → (unit, cell, rows) sorted by unit then cell."""
    keys, n = np.unique(units.astype(np.uint64) * np.uint64(n_cells) + cells.astype(np.uint64), return_counts=True)
    return (keys // np.uint64(n_cells)).astype(np.int64), (keys % np.uint64(n_cells)).astype(np.uint32), n


def _modal_places(units: np.ndarray, cells: np.ndarray, n: np.ndarray,
                  tie_hash: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    return modal(units, cells, n, lambda i: tie_hash(units[i], cells[i]))


def place_counts(grid: Grid, home: dict[str, np.ndarray],
                  work: dict[str, np.ndarray]) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Homes and work cells (at most one each per person-window) → residents and commuting counts."""
    parts = []
    for place, found in (("home", home), ("work", work)):
        keys, count = np.unique(found["window"].astype(np.uint64) * np.uint64(grid.n_cells)
                                + found["cell"].astype(np.uint64), return_counts=True)
        parts.append(pl.DataFrame([pl.Series("window", (keys // np.uint64(grid.n_cells)).astype(np.int64)),
                                   pl.Series("place", [place] * len(keys), dtype=pl.String),
                                   pl.Series("cell", (keys % np.uint64(grid.n_cells)).astype(np.uint32)),
                                   pl.Series("count", count.astype(np.int64))]))
    both = np.intersect1d(home["unit"], work["unit"], assume_unique=True)
    h = home["cell"][np.searchsorted(home["unit"], both)].astype(np.uint64)
    w = work["cell"][np.searchsorted(work["unit"], both)].astype(np.uint64)
    window = home["window"][np.searchsorted(home["unit"], both)].astype(np.uint64)
    keys, count = np.unique((window * np.uint64(grid.n_cells) + h) * np.uint64(grid.n_cells) + w, return_counts=True)
    commuting = pl.DataFrame([pl.Series("window", (keys // np.uint64(grid.n_cells ** 2)).astype(np.int64)),
                              pl.Series("home", (keys // np.uint64(grid.n_cells) % np.uint64(grid.n_cells))
                                        .astype(np.uint32)),
                              pl.Series("work", (keys % np.uint64(grid.n_cells)).astype(np.uint32)),
                              pl.Series("count", count.astype(np.int64))])
    return pl.concat(parts), commuting
