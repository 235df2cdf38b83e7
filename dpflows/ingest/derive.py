"""Per-person derivations from events (design §1, §9): presence, places and trips. Secret; ingestion only.

Input columns: person, timestamp (datetime), cell (integer cell index). Days are calendar
days of the timestamps as given (local time of the operator's data).

- presence, one place per person-hour: for each (person, day, hour) with at least one event,
  the one cell holding most of that person's events in that hour. A person is then present in
  exactly one place per hour, so a count per (day, hour, zone) counts people, and one person
  adds at most one record per (day, hour) slot: the tight sensitivity min(L_presence, S) of a
  query covering S slots of a window rests on this.
- places (`homes`, `works`), from those hour cells of one person-window: the home is the cell
  of most night hours; the work cell is the cell of most weekday daytime hours among cells
  seen then on at least `min_work_days` distinct days, unless that cell is the home (a person
  who spends the working day at home has no work cell, rather than the café of a few visits).
  At most one of each per person-window. Hours belong to the window of their own calendar
  day, so a night across a window boundary is cut at it and windows stay disjoint.
- trips, stay rule (default): consecutive events in one cell form a visit; a visit is a *stay*
  if the time from its first event to the first event of the next visit that day is at least
  `min_dwell`, or if it is the last visit of the day. A trip links two consecutive stays of
  one person in one day with different cells, timed at the first event of the destination
  stay. Handovers between neighbouring cells (short visits) therefore make no false trips.
- trips, consecutive rule: every change of cell within a day is a trip.

Events of one person with equal timestamps are ordered by cell index, so the derivation does
not depend on the input's row order (and the Spark path, ingest/spark.py, matches it exactly).

Ties (two cells with as many events in one hour, as many night hours, ...) are broken by a
keyed hash of the candidate record with the ingestion's secret seed, as bounding ranks records
(bounding.py): uniformly among the tied cells, independently per person-hour or person-window,
never by order (the first or smallest cell would bias every count towards it) and unpredictable
without the seed. Each choice uses its own mask of the seed, apart from the bounding's.
"""

from __future__ import annotations

import datetime as dt

import polars as pl

from dpflows.aggregates import PlaceRule

TRIP_RULES = ("stay", "consecutive")
HOUR_TIE_MASK = 0x0F0F0F0F  # seed ^ mask: the hour cell's tie-break
HOME_TIE_MASK = 0x33333333  # the home's
WORK_TIE_MASK = 0x55555555  # the work cell's


def presence(events: pl.LazyFrame, *, seed: int) -> pl.LazyFrame:
    """(person, day, hour, cell): one cell per person-hour, the one with most of its events (ties by keyed hash)."""
    rows = events.select(
        "person", pl.col("timestamp").dt.date().alias("day"), pl.col("timestamp").dt.hour().cast(pl.Int8).alias("hour"),
        "cell",
    )
    # (person, day, hour, cell) -> n events
    per_cell = rows.group_by("person", "day", "hour", "cell").agg(pl.len().alias("_n"))
    tie = pl.struct("person", "day", "hour", "cell").hash(seed ^ HOUR_TIE_MASK)
    # (person, day, hour) -> exactly one cell: most events, then smallest keyed hash (cell: only if hashes collide)
    return per_cell.group_by("person", "day", "hour").agg(
        pl.col("cell").sort_by([pl.col("_n"), tie, pl.col("cell")], descending=[True, False, False]).first())


def homes(hour_cells: pl.LazyFrame, rule: PlaceRule, *, seed: int) -> pl.LazyFrame:
    """(person, window, cell): at most one home per person-window, its cell of most night hours."""
    night = hour_cells.filter(pl.col("hour").is_in(rule.home_hour_set))
    # (person, window, cell) -> night hours there
    per_cell = night.group_by("person", "window", "cell").agg(pl.len().alias("_n"))
    # (person, window) -> at most one home cell
    return _modal(per_cell, seed ^ HOME_TIE_MASK)


def works(hour_cells: pl.LazyFrame, home: pl.LazyFrame, rule: PlaceRule, *, seed: int) -> pl.LazyFrame:
    """(person, window, cell): at most one work cell per person-window, never its home.

    The cell of most weekday daytime hours among those seen in daytime on at least
    `rule.min_work_days` distinct days of the window; none when that cell is the home.
    """
    weekday = pl.col("day").dt.weekday() - 1  # polars counts Monday as 1
    daytime = hour_cells.filter(pl.col("hour").is_in(rule.work_hour_set) & weekday.is_in(rule.work_weekdays))
    # (person, window, cell) -> daytime hours and distinct days there
    per_cell = daytime.group_by("person", "window", "cell").agg(
        pl.len().alias("_n"), pl.col("day").n_unique().alias("_days"))
    # (person, window, cell) -> only cells of enough days
    eligible = per_cell.filter(pl.col("_days") >= rule.min_work_days)
    # (person, window) -> at most one work cell: the modal one, unless it is the home
    return _modal(eligible, seed ^ WORK_TIE_MASK).join(
        home.select("person", "window", "cell"), on=["person", "window", "cell"], how="anti")


def _modal(per_cell: pl.LazyFrame, seed: int) -> pl.LazyFrame:
    """(person, window, cell) with counts `_n` -> the cell of largest count per (person, window); ties by keyed hash."""
    tie = pl.struct("person", "window", "cell").hash(seed)
    return per_cell.group_by("person", "window").agg(
        pl.col("cell").sort_by([pl.col("_n"), tie, pl.col("cell")], descending=[True, False, False]).first())


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
