"""Presence sensitivity from day-hour slots: min(L_presence, S) with one place per person-hour, exactly.

A table of queries against the sensitivities and units they must get, then the real thing:
ingest a city twice, with and without one person, and check through the query path that the
answer moves by no more than the stated ℓ1 in all and the stated cap per key.
"""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from dpflows.aggregates import CELLS_PER_PERSON_HOUR, ONE_PLACE_PER_PERSON_HOUR, DatasetMetadata, load_dataset
from dpflows.mechanisms import l2_sensitivity
from dpflows.queries import key_contribution_cap, make_spec, prepare
from dpflows.slots import (
    PEOPLE,
    PERSON_CELL_HOURS,
    PERSON_HOURS,
    PresenceSensitivity,
    presence_sensitivity,
    query_presence_sensitivity,
    slots_per_window,
)

MON = dt.date(2024, 3, 4)
ALL = tuple(range(24))
WEEK = tuple(range(7))


def meta(bound: int = 100, rule: str = ONE_PLACE_PER_PERSON_HOUR, window_days: int = 7) -> DatasetMetadata:
    return DatasetMetadata("m", MON, MON + dt.timedelta(days=28), window_days, 20, bound, presence_rule=rule)


def day(n: int) -> dt.date:
    return MON + dt.timedelta(days=n)


# (start, end, hours, weekdays, patterns?) -> (S, ℓ1, per-key cap, unit), L_presence = 100, 7-day windows
CASES = [
    ((day(0), day(1), (8,), WEEK, False), (1, 1, 1, PEOPLE)),  # one hour of one day: calibrated to 1, not 100
    ((day(0), day(1), ALL, WEEK, False), (24, 24, 1, PEOPLE)),  # each key (zone, hour) one day-hour
    ((day(0), day(1), (22, 23, 0, 1), WEEK, False), (4, 4, 1, PEOPLE)),  # hours wrapping past midnight
    ((day(0), day(7), (7, 8, 9), (0, 1, 2, 3, 4), False), (15, 15, 5, PERSON_HOURS)),  # morning peaks of a week
    ((day(0), day(7), ALL, WEEK, False), (168, 100, 7, PERSON_HOURS)),  # the whole week: L binds
    ((day(5), day(8), (8,), WEEK, False), (2, 2, 2, PERSON_HOURS)),  # Sat, Sun | Mon: the larger window, 2
    ((day(0), day(28), (8,), (0,), False), (1, 1, 1, PERSON_HOURS)),  # four Mondays, one per window
    ((day(0), day(7), ALL, WEEK, True), (168, 100, 1, PEOPLE)),  # patterns of one week: each key one day-hour
    ((day(0), day(7), (8,), WEEK, True), (7, 7, 1, PEOPLE)),
    ((day(0), day(28), ALL, WEEK, True), (168, 100, 1, PERSON_HOURS)),  # four weeks: each key four days
    ((day(0), day(28), (17, 18), (0, 1, 2, 3, 4), True), (10, 10, 1, PERSON_HOURS)),
]


@pytest.mark.parametrize(("query", "expected"), CASES)
def test_sensitivity_table(query: tuple, expected: tuple) -> None:
    start, end, hours, weekdays, patterns = query
    got = presence_sensitivity(meta(), start=start, end=end, hours=hours, weekdays=weekdays, by_weekday=patterns)
    assert (got.slots, got.l1, got.key_cap, got.count_unit) == expected


def test_l_binds_below_s_and_windows_of_other_lengths() -> None:
    one_day = dict(start=day(0), end=day(1), hours=ALL, weekdays=WEEK, by_weekday=False)
    assert presence_sensitivity(meta(bound=5), **one_day) == PresenceSensitivity(24, 5, 1, PEOPLE)
    # 1-day windows: a week of one hour touches 7 windows of 1 slot each
    week = dict(start=day(0), end=day(7), hours=(8,), weekdays=WEEK, by_weekday=False)
    assert presence_sensitivity(meta(window_days=1), **week) == PresenceSensitivity(1, 1, 1, PERSON_HOURS)
    assert slots_per_window(meta(window_days=1), day(0), day(7), (8,), WEEK) == {w: 1 for w in range(7)}
    assert slots_per_window(meta(), day(5), day(8), (7, 8, 9), WEEK) == {0: 6, 1: 3}


def test_l2_from_l1_and_the_per_key_cap() -> None:
    week = presence_sensitivity(meta(), start=day(0), end=day(7), hours=ALL, weekdays=WEEK, by_weekday=False)
    # ℓ1 100 with at most 7 per key: 14 keys of 7 and one of 2, √(14·49 + 4) = √690
    assert week.l2 == l2_sensitivity(100, 7) and week.l2 >= math.sqrt(690) and week.l2 - math.sqrt(690) < 1e-9
    hour = presence_sensitivity(meta(), start=day(0), end=day(1), hours=(8,), weekdays=WEEK, by_weekday=False)
    assert hour.l2 == 1.0
    day_ = presence_sensitivity(meta(), start=day(0), end=day(1), hours=ALL, weekdays=WEEK, by_weekday=False)
    assert day_.l2 == l2_sensitivity(24, 1) and day_.l2 >= math.sqrt(24)


def test_datasets_written_before_keep_l_and_say_person_cell_hours() -> None:
    old = meta(rule=CELLS_PER_PERSON_HOUR)
    got = presence_sensitivity(old, start=day(0), end=day(1), hours=(8,), weekdays=WEEK, by_weekday=False,
                               legacy_key_cap=40)
    assert got == PresenceSensitivity(1, 100, 40, PERSON_CELL_HOURS)


def test_query_presence_sensitivity_on_a_dataset_of_each_rule(store, report_root: Path) -> None:
    old = store.get("small")  # written without a presence rule, L_presence 20
    spec = make_spec("presence", dataset="small", zoning="districts", start=day(0), end=day(1), hours=[8, 9])
    got = query_presence_sensitivity(spec, old)
    assert (got.l1, got.count_unit) == (20, PERSON_CELL_HOURS)
    assert got.key_cap == key_contribution_cap(spec, old)
    city = load_dataset(report_root / "datasets" / "city")
    spec = make_spec("patterns", dataset="city", zoning="districts", start=day(0), end=day(7), hours=[8, 10],
                     measure="presence")
    assert query_presence_sensitivity(spec, city) == PresenceSensitivity(14, 14, 1, PEOPLE)
    with pytest.raises(ValueError, match="does not count presence"):
        query_presence_sensitivity(make_spec("flows", dataset="city", zoning="districts", start=day(0), end=day(1)),
                                   city)


def test_one_person_moves_any_presence_answer_by_at_most_the_stated_sensitivity(tmp_path: Path) -> None:
    """Neighbouring datasets (one person-window apart) through the real query path: |Δ|₁ ≤ ℓ1, |Δ|∞ ≤ the cap."""
    from dpflows.demo import generate_city
    from dpflows.ingest.pipeline import IngestOptions, ZoningSpec, ingest_events

    city = generate_city(tmp_path / "city", persons=150, seed=8, days=14)
    events = pl.read_parquet(city.events)
    kw = dict(**city.span, bound_presence=40, seed=4, report_epsilon=0, zonings=[ZoningSpec("districts", city.districts)])
    full = load_dataset(ingest_events(city.events, city.cells, tmp_path / "full", IngestOptions(name="full", **kw)))
    queries = [
        ("presence", day(0), day(1), [8, 9], None), ("presence", day(0), day(1), [0, 24], None),
        ("presence", day(0), day(7), [7, 10], [0, 1, 2, 3, 4]), ("presence", day(0), day(14), [0, 24], None),
        ("presence", day(5), day(8), [17, 20], None), ("patterns", day(0), day(7), [0, 24], None),
        ("patterns", day(0), day(14), [6, 11], None),
    ]
    reached = {"l1": 0, "cap": 0}
    for n, target in enumerate(events["person"].unique().sort().to_list()[::30]):
        # neighbours differ in one person-window: the target's events of one week removed
        week = pl.col("timestamp").dt.date().is_between(day(7 * (n % 2)), day(7 * (n % 2) + 6))
        events.filter((pl.col("person") != target) | ~week).write_parquet(tmp_path / "without.parquet")
        without = load_dataset(ingest_events(tmp_path / "without.parquet", city.cells, tmp_path / "w",
                                             IngestOptions(name="w", **kw)))
        for kind, start, end, hours, weekdays in queries:
            for zoning in ("cell", "districts"):
                spec = make_spec(kind, dataset="x", zoning=zoning, start=start, end=end, hours=hours, weekdays=weekdays,
                                 measure="presence" if kind == "patterns" else None)
                bound = query_presence_sensitivity(spec, full)
                diff = np.abs(prepare(spec, full).true_counts - prepare(spec, without).true_counts)
                assert diff.sum() <= bound.l1 and diff.max() <= bound.key_cap, (kind, start, end, hours, zoning)
                reached["l1"] += diff.sum() == bound.l1
                reached["cap"] += diff.max() == bound.key_cap
    assert reached["l1"] > 5 and reached["cap"] > 5  # the bounds are tight, not just safe
