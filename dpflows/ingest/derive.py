"""Per-person derivations from events (design §1): presence and trips. Secret; ingestion only.

Input columns: person, timestamp (datetime), cell (integer cell index). Days are calendar
days of the timestamps as given (local time of the operator's data).

- presence: the distinct (person, day, hour, cell) in which the person had at least one event;
- trips, stay rule (default): consecutive events in one cell form a visit; a visit is a *stay*
  if the time from its first event to the first event of the next visit that day is at least
  `min_dwell`, or if it is the last visit of the day. A trip links two consecutive stays of
  one person in one day with different cells, timed at the first event of the destination
  stay. Handovers between neighbouring cells (short visits) therefore make no false trips.
- trips, consecutive rule: every change of cell within a day is a trip.

Events of one person with equal timestamps are ordered by cell index, so the derivation does
not depend on the input's row order (and the Spark path, ingest/spark.py, matches it exactly).
"""

from __future__ import annotations

import datetime as dt

import polars as pl

TRIP_RULES = ("stay", "consecutive")


def presence(events: pl.LazyFrame) -> pl.LazyFrame:
    """(person, day, hour, cell), distinct."""
    return events.select(
        "person", pl.col("timestamp").dt.date().alias("day"), pl.col("timestamp").dt.hour().cast(pl.Int8).alias("hour"),
        "cell",
    ).unique()


def trips(
    events: pl.LazyFrame, *, rule: str = "stay", min_dwell: dt.timedelta = dt.timedelta(minutes=30)
) -> pl.LazyFrame:
    """(person, timestamp, origin, dest) for each derived trip."""
    if rule not in TRIP_RULES:
        raise ValueError(f"trip rule {rule!r} is not one of {TRIP_RULES}")
    # One sort, then shifts compare each row with its neighbours: rows are "in the same
    # (person, day)" when both match, which is what window functions would compute, faster.
    ordered = events.select("person", "timestamp", "cell").with_columns(
        pl.col("timestamp").dt.date().alias("day")
    ).sort(["person", "timestamp", "cell"])  # cell breaks timestamp ties: deterministic visits
    # (person, day) -> visits: runs of consecutive events in one cell, timed at their first event
    visits = ordered.filter(~_same_day(1) | (pl.col("cell") != pl.col("cell").shift(1)))
    if rule == "stay":
        # (person, day) -> stays: visits lasting min_dwell until the next visit, or the day's last
        visits = visits.filter(
            ~_same_day(-1) | ((pl.col("timestamp").shift(-1) - pl.col("timestamp")) >= pl.lit(min_dwell))
        )
    # (person, day) -> trips between consecutive stays in different cells
    return (
        visits.with_columns(pl.col("cell").shift(1).alias("origin"), _same_day(1).alias("_linked"))
        .filter(pl.col("_linked") & (pl.col("origin") != pl.col("cell")))
        .select("person", "timestamp", "origin", pl.col("cell").alias("dest"))
    )


def _same_day(offset: int) -> pl.Expr:
    """The row `offset` away belongs to the same person and day (false at the frame's ends)."""
    return ((pl.col("person") == pl.col("person").shift(offset))
            & (pl.col("day") == pl.col("day").shift(offset))).fill_null(False)
