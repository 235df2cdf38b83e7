"""A plain reference for the hour-cell, home and work rules, to check either engine's records against.

Written apart from dpflows.ingest.derive (dicts and loops, no hashes): it cannot say which of
several tied cells an engine must pick, only that the pick is one of them, that every key has
exactly one pick, and that a place exists exactly when the rule says it does.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable
from typing import Any

import polars as pl

from dpflows.aggregates import PlaceRule


def _argmax(counts: dict[Any, int]) -> set[Any]:
    top = max(counts.values())
    return {k for k, v in counts.items() if v == top}


def assert_not_by_order(picks: list[tuple[int, set[int]]]) -> None:
    """Tied picks go to the smallest tied cell as often as a uniform choice would (5 sd), not always or never."""
    tied = [(pick, best) for pick, best in picks if len(best) > 1]
    smallest = sum(pick == min(best) for pick, best in tied)
    expected = sum(1 / len(best) for _, best in tied)
    sd = math.sqrt(sum((1 / len(best)) * (1 - 1 / len(best)) for _, best in tied))
    assert abs(smallest - expected) < 5 * sd + 1, (smallest, expected, sd)


def check_hour_cells(events: pl.DataFrame, hour_cells: pl.DataFrame) -> int:
    """Each (person, day, hour) with events has one cell, one of those with most events; returns how many were tied.

    With ties, also checks that they are not broken by order (`assert_not_by_order`).
    """
    per_hour: dict[tuple[Any, Any, int], Counter[int]] = defaultdict(Counter)
    for person, ts, cell in events.select("person", "timestamp", "cell").iter_rows():
        per_hour[(person, ts.date(), ts.hour)][int(cell)] += 1
    picked: dict[tuple[Any, Any, int], int] = {}
    for person, day, hour, cell in hour_cells.select("person", "day", "hour", "cell").iter_rows():
        key = (person, day, int(hour))
        assert key not in picked, "two cells for one person-hour"
        picked[key] = int(cell)
    assert picked.keys() == per_hour.keys()
    picks = []
    for key, counts in per_hour.items():
        best = _argmax(counts)
        assert picked[key] in best
        picks.append((picked[key], best))
    assert_not_by_order(picks)
    return sum(len(best) > 1 for _, best in picks)


def _per_window(rows: Iterable[tuple[Any, ...]]) -> dict[tuple[Any, int], Any]:
    out: dict[tuple[Any, int], Any] = {}
    for person, window, cell in rows:
        key = (person, int(window))
        assert key not in out, "two places of one kind for one person-window"
        out[key] = int(cell)
    return out


def check_places(hour_cells: pl.DataFrame, homes: pl.DataFrame, works: pl.DataFrame, rule: PlaceRule) -> dict[str, int]:
    """Homes and work cells follow the rule from these hour cells (with a window column); returns counts of cases."""
    night: dict[tuple[Any, int], Counter[int]] = defaultdict(Counter)
    hours: dict[tuple[Any, int], Counter[int]] = defaultdict(Counter)
    days: dict[tuple[Any, int], dict[int, set[Any]]] = defaultdict(lambda: defaultdict(set))
    for person, day, hour, cell, window in hour_cells.select("person", "day", "hour", "cell", "window").iter_rows():
        key = (person, int(window))
        if hour in rule.home_hour_set:
            night[key][int(cell)] += 1
        if hour in rule.work_hour_set and day.weekday() in rule.work_weekdays:
            hours[key][int(cell)] += 1
            days[key][int(cell)].add(day)
    home = _per_window(homes.select("person", "window", "cell").iter_rows())
    work = _per_window(works.select("person", "window", "cell").iter_rows())
    assert home.keys() == night.keys(), "a home exactly for person-windows with night hours"
    seen = Counter[str]()
    picks = []
    for key, counts in night.items():
        best = _argmax(counts)
        assert home[key] in best
        seen["home tied"] += len(best) > 1
        picks.append((home[key], best))
    assert_not_by_order(picks)
    for key, counts in hours.items():
        eligible = {c: n for c, n in counts.items() if len(days[key][c]) >= rule.min_work_days}
        if not eligible:
            assert key not in work, "a work cell without enough days"
            continue
        best = _argmax(eligible)
        if key in work:
            assert work[key] in best and work[key] != home.get(key)
            seen["work"] += 1
        else:
            assert home.get(key) in best, "no work cell although the modal daytime cell is not the home"
            seen["home is the modal daytime cell"] += 1
    assert work.keys() <= hours.keys()
    seen["homes"] = len(home)
    return dict(seen)
