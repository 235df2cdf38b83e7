"""Presence and trips derived from hand-made event sequences."""

from __future__ import annotations

import datetime as dt

import polars as pl

from dpflows.ingest import derive

T0 = dt.datetime(2024, 3, 4, 7, 0)


def events(rows: list[tuple[int, int, int]]) -> pl.LazyFrame:
    """(person, minutes after 07:00, cell)"""
    return pl.DataFrame({
        "person": [p for p, _, _ in rows],
        "timestamp": [T0 + dt.timedelta(minutes=m) for _, m, _ in rows],
        "cell": pl.Series([c for _, _, c in rows], dtype=pl.UInt32),
    }).lazy()


def trip_list(frame: pl.LazyFrame) -> list[tuple[int, int, int]]:
    out = frame.collect().sort("person", "timestamp")
    return [(p, o, d) for p, o, d in zip(out["person"], out["origin"], out["dest"], strict=True)]


def test_stay_rule_drops_handover_ping_pong() -> None:
    # home(1) for an hour, handovers 2,3,2 within minutes, work(4) for hours
    ev = events([(1, 0, 1), (1, 55, 1), (1, 60, 2), (1, 62, 3), (1, 63, 2), (1, 70, 4), (1, 300, 4)])
    assert trip_list(derive.trips(ev, rule="stay")) == [(1, 1, 4)]
    assert trip_list(derive.trips(ev, rule="consecutive")) == [(1, 1, 2), (1, 2, 3), (1, 3, 2), (1, 2, 4)]


def test_trip_time_is_first_event_at_destination_and_days_do_not_link() -> None:
    ev = events([(5, 0, 1), (5, 90, 2), (5, 200, 2), (5, 60 * 20, 3), (5, 60 * 26, 1)])
    out = derive.trips(ev, rule="stay").collect().sort("timestamp")
    # day 1: 1 -> 2 at 08:30; day 2 (03:00 in 3, 09:00 in 1): 3 -> 1 at 09:00; never 2 -> 3 across midnight
    assert out["timestamp"].to_list() == [T0 + dt.timedelta(minutes=90), T0 + dt.timedelta(hours=26)]
    assert trip_list(derive.trips(ev, rule="stay")) == [(5, 1, 2), (5, 3, 1)]


def test_returning_to_the_same_cell_after_a_pass_through_is_not_a_trip() -> None:
    ev = events([(2, 0, 1), (2, 40, 1), (2, 45, 9), (2, 50, 1), (2, 120, 1)])
    assert trip_list(derive.trips(ev, rule="stay")) == []


def test_presence_is_one_cell_per_person_hour_the_one_with_most_events() -> None:
    ev = events([(1, 0, 1), (1, 10, 1), (1, 20, 2), (1, 70, 1), (2, 5, 1), (2, 6, 3), (2, 7, 3)])
    out = derive.presence(ev, seed=1).collect().sort("person", "hour", "cell")
    # 07:00 person 1: two events in cell 1, one in cell 2 -> cell 1; person 2: cell 3 (two) over cell 1 (one)
    assert out.select("person", "hour", "cell").rows() == [(1, 7, 1), (1, 8, 1), (2, 7, 3)]
