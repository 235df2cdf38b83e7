"""Ingestion with PySpark: the Polars pipeline's semantics for inputs beyond one host (design §7).

    events (person, timestamp, cell_id)            secret; read by Spark, never collected
      → presence (person, day, hour, cell), one cell per person-hour,
        and trips (person, time, origin, dest)                                     as derive.py
      → at most L per (person, window), uniform sampling by keyed hash             as bounding.py
      → counts per (day, hour, cell) and (day, hour, origin, dest)   collected (small, public
        after noise) and written by the same `write_aggregates` as the Polars path
    presence before the L bound → one home and one work cell per (person, window)  as derive.py
      → residents per (window, place, cell) and commuting per (window, home, work), collected

What matches the Polars path (`pipeline.ingest_events`) exactly:

- presence is one cell per (person, day, hour), the one of most events; days and hours are
  those of the timestamps as given (naive timestamps; a UTC-adjusted Parquet timestamp is
  read in UTC, as Polars does, whatever the Spark session time zone);
- homes and work cells per (person, window) from those hour cells, by the same `PlaceRule`;
- trips by the stay rule or the consecutive rule, with events of a (person, day) ordered by
  (timestamp, cell) (the cell index breaks ties, as in derive.py);
- windows ``(day - first_day) // window_days``, first_day and end_day declared (never measured);
- the bound: each (person, window)'s records ranked by a keyed 64-bit hash of the record's
  content with a secret seed, the `bound` smallest kept; trips use ``seed ^ 0x5A5A5A5A``;
- the dataset directory: metadata, cells, trips, presence and zonings, through
  `write_aggregates` and `_load_zonings`, so `load_dataset` reads it unchanged.

Where the engines necessarily differ: the hash functions (Polars' struct hash vs Spark's
xxhash64), so with an active bound the *same* seed keeps different records in the two
engines; both are uniform samples of L records per person-window, i.e. equal in
distribution, and the kept total is Σ min(n, L) in both (tests/ingest/test_spark_equivalence.py).
Ties between cells (an hour's, a home's, a work cell's) are broken by the same hashes with the
masks of derive.py, so where a tie exists the engines may pick different tied cells, each
uniformly; without ties their outputs are identical.
Error messages name the file and the column, but not row numbers (a Spark dataset has no stable
row order), nor how many rows (an exact figure over secret records); like the Polars path they
never name a person. Several inputs (daily files, CSV and Parquet alike) are read together, each
parsed on its own, and checked in the same one pass, grouped by file.

Cluster-ready: the session is the caller's or ``SparkSession.builder.getOrCreate()``, so the
master and resources come from spark-submit. `events_path` may be any path Spark reads
(s3a://, hdfs://, a directory of Parquet files); the cell catalog and zonings are small public
files read locally with Polars, and the aggregates are written locally (or to a mounted share),
see docs/scale.md.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl

from dpflows.accounting import accounting as accounting_of
from dpflows.aggregates import PlaceRule, write_aggregates
from dpflows.contribution_report import BIN_UPPER
from dpflows.errors import InvalidData
from dpflows.ingest import derive
from dpflows.ingest.appending import AppendDrops, AppendPlan, append_arguments, begin_append, check_catalog
from dpflows.ingest.contribution_histograms import ContributionHistograms, release_bounding_report
from dpflows.ingest.options import IngestOptions
from dpflows.ingest.pipeline import Progress, _cell_names, _cells_frame, _load_zonings
from dpflows.ingest.spark_inputs import (  # re-exported: the Spark engine's reading half
    SparkEvents,
    _name,
    _spark,
    read_events_spark,
    spark_paths,
)

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

TRIP_SEED_MASK = 0x5A5A5A5A  # the Polars path bounds trips with seed ^ this mask too


def _with_window(frame: DataFrame, first_day: dt.date, window_days: int) -> DataFrame:
    from pyspark.sql import functions as F

    days = F.datediff(F.col("day"), F.lit(first_day))
    return frame.withColumn("window", F.floor(days / F.lit(window_days)).cast("int"))


def presence_records(events: DataFrame, first_day: dt.date, window_days: int, *, seed: int) -> DataFrame:
    """(person, day, hour, cell, window), one cell per (person, day, hour), the one of most events: derive.presence."""
    from pyspark.sql import functions as F

    rows = events.select("person", F.to_date("timestamp").alias("day"), F.hour("timestamp").alias("hour"), "cell")
    # (person, day, hour, cell) -> n events
    per_cell = rows.groupBy("person", "day", "hour", "cell").agg(F.count(F.lit(1)).alias("_n"))
    # (person, day, hour) -> exactly one cell: most events, then smallest keyed hash
    one = _modal_spark(per_cell, ["person", "day", "hour"], seed ^ derive.HOUR_TIE_MASK)
    return _with_window(one, first_day, window_days)


def _modal_spark(per_cell: DataFrame, group: list[str], seed: int) -> DataFrame:
    """`group` + cell, with counts `_n` -> the cell of largest count per group; ties by keyed hash (derive._modal)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    tie = F.xxhash64(*group, "cell", F.lit(seed).cast("long"))
    order = Window.partitionBy(*group).orderBy(F.desc("_n"), tie, "cell")
    return (per_cell.withColumn("_r", F.row_number().over(order)).filter(F.col("_r") == 1)
            .select(*group, "cell"))


def home_records(hour_cells: DataFrame, rule: PlaceRule, *, seed: int) -> DataFrame:
    """(person, window, cell): at most one home per person-window, its cell of most night hours: derive.homes."""
    from pyspark.sql import functions as F

    night = hour_cells.filter(F.col("hour").isin(list(rule.home_hour_set)))
    # (person, window, cell) -> night hours there
    per_cell = night.groupBy("person", "window", "cell").agg(F.count(F.lit(1)).alias("_n"))
    # (person, window) -> at most one home cell
    return _modal_spark(per_cell, ["person", "window"], seed ^ derive.HOME_TIE_MASK)


def work_records(hour_cells: DataFrame, home: DataFrame, rule: PlaceRule, *, seed: int) -> DataFrame:
    """(person, window, cell): at most one work cell per person-window, never its home: derive.works."""
    from pyspark.sql import functions as F

    weekday = (F.dayofweek("day") + 5) % 7  # Spark counts Sunday as 1; 0 = Monday here
    daytime = hour_cells.filter(F.col("hour").isin(list(rule.work_hour_set))
                                & weekday.isin(list(rule.work_weekdays)))
    # (person, window, cell) -> daytime hours and distinct days there
    per_cell = daytime.groupBy("person", "window", "cell").agg(F.count(F.lit(1)).alias("_n"),
                                                               F.countDistinct("day").alias("_days"))
    # (person, window, cell) -> only cells of enough days
    eligible = per_cell.filter(F.col("_days") >= rule.min_work_days)
    # (person, window) -> at most one work cell: the modal one, unless it is the home
    return _modal_spark(eligible, ["person", "window"], seed ^ derive.WORK_TIE_MASK).join(
        home.select("person", "window", "cell"), on=["person", "window", "cell"], how="left_anti")


def trip_records(events: DataFrame, first_day: dt.date, window_days: int, *, rule: str = "stay",
                 min_dwell_minutes: float = 30) -> DataFrame:
    """(person, timestamp, origin, dest, day, hour, window) for each trip: derive.trips."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    if rule not in derive.TRIP_RULES:
        raise InvalidData(f"trip_rule={rule!r} must be one of {list(derive.TRIP_RULES)}", field="trip_rule")
    by_day = Window.partitionBy("person", "day").orderBy("timestamp", "cell")
    ordered = events.select("person", "timestamp", "cell", F.to_date("timestamp").alias("day"))
    # (person, day) -> visits: runs of consecutive events in one cell, timed at their first event
    previous = F.lag("cell").over(by_day)
    visits = (ordered.withColumn("_prev", previous)
              .filter(F.col("_prev").isNull() | (F.col("_prev") != F.col("cell")))
              .select("person", "day", "timestamp", "cell"))
    if rule == "stay":
        # (person, day) -> stays: visits lasting min_dwell until the next visit, or the day's last
        dwell_us = int(dt.timedelta(minutes=min_dwell_minutes) / dt.timedelta(microseconds=1))
        after = F.expr("timestampdiff(MICROSECOND, timestamp, _next)")
        visits = (visits.withColumn("_next", F.lead("timestamp").over(by_day))
                  .filter(F.col("_next").isNull() | (after >= F.lit(dwell_us)))
                  .drop("_next"))
    # (person, day) -> trips between consecutive stays in different cells, at the destination's first event
    trips = (visits.withColumn("origin", F.lag("cell").over(by_day))
             .filter(F.col("origin").isNotNull() & (F.col("origin") != F.col("cell")))
             .select("person", "timestamp", "origin", F.col("cell").alias("dest"), "day",
                     F.hour("timestamp").alias("hour")))
    return _with_window(trips, first_day, window_days)


def bound_per_person_window_spark(records: DataFrame, bound: int, *, seed: int | Column,
                                  person: str = "person", window: str = "window",
                                  by: Sequence[str] = ()) -> DataFrame:
    """Keep at most `bound` records of each (person, window), chosen uniformly at random.

    Sampling for contribution bounding, not noise (bounding.py): every record is ranked by
    xxhash64 of its content and a secret seed, a pseudo-random permutation of its
    (person, window) group, and the `bound` smallest ranks are kept. `by` adds grouping columns
    that are not record content (tests bound many seeds at once, with `seed` a column).
    """
    from pyspark.sql import Column, Window
    from pyspark.sql import functions as F

    if bound < 1:
        raise ValueError(f"bound={bound} must be at least 1")
    content = [c for c in records.columns if c not in by]
    key = seed if isinstance(seed, Column) else F.lit(seed).cast("long")
    # (by, person, window) -> each record gets a rank in a random permutation of its group
    ranked = records.withColumn("_hash", F.xxhash64(*content, key)).withColumn(
        "_rank", F.row_number().over(Window.partitionBy(*by, person, window).orderBy("_hash")))
    # (by, person, window) -> at most `bound` records
    return ranked.filter(F.col("_rank") <= bound).drop("_hash", "_rank")


@dataclass
class SparkBounded:
    """Bounded per-record frames (person still present: secret, for aggregation and tests only)."""

    presence: DataFrame  # person, day, hour, cell, window
    trips: DataFrame  # person, timestamp, origin, dest, day, hour, window
    source: SparkEvents
    #: the same records before the per-window bound, for the bounding report's histograms
    presence_unbounded: DataFrame | None = None
    trips_unbounded: DataFrame | None = None
    #: at most one home and one work cell per (person, window): person, window, cell
    homes: DataFrame | None = None
    works: DataFrame | None = None


def bounded_records_spark(events_path: str | Path | Sequence[str | Path], cells_path: str | Path,
                          options: IngestOptions, *, seed: int, spark: SparkSession | None = None,
                          plan: AppendPlan | None = None) -> SparkBounded:
    """Checked events → derived records → at most L per (person, window), as lazy Spark frames.

    For zCDP datasets, first at most `key_cap_trips` trips per person and trips row
    (day, hour, origin, dest), as bounding.cap_per_person_key does. Homes and work cells are
    derived from the unbounded presence by the options' place rule (as the Polars path's).
    `seed` is the bounding's secret seed (`options.drawn_seed()`, drawn once by the caller).
    """
    options.check_engine("spark")
    first_day, end_day = options.span
    window_days, rule = options.window_days, options.place_rule
    key_cap_trips = accounting_of(options.accounting).key_cap_trips(options.events_metadata())
    if plan is None:
        source = read_events_spark(_spark(spark), events_path, cells_path, first_day, end_day,
                                   time_zone=options.time_zone)
    else:  # an append: rows of served windows (late) and of an incomplete one (held) are left out
        source = read_events_spark(_spark(spark), events_path, cells_path, first_day, plan.declared_end,
                                   time_zone=options.time_zone, keep=(plan.start, end_day))
    start = source.first_day
    # (person, window, day, hour, cell): one cell per (person, day, hour)
    presence_all = presence_records(source.events, start, window_days, seed=seed)
    # (person, window) -> at most L_presence of them
    presence = bound_per_person_window_spark(presence_all, options.bound_presence, seed=seed)
    # (person, window) -> at most one home, at most one work cell (never the home), from every hour
    homes = home_records(presence_all, rule, seed=seed)
    works = work_records(presence_all, homes, rule, seed=seed)
    trips = trip_records(source.events, start, window_days, rule=options.trip_rule,
                         min_dwell_minutes=options.min_dwell_minutes)
    if key_cap_trips is not None:
        from pyspark.sql import Window
        from pyspark.sql import functions as F

        per_key = Window.partitionBy("person", "day", "hour", "origin", "dest").orderBy("timestamp")
        # (person, day, hour, origin, dest) -> at most key_cap_trips trips
        trips = trips.withColumn("_k", F.row_number().over(per_key)).filter(F.col("_k") <= key_cap_trips).drop("_k")
    trips_all = trips
    trips = bound_per_person_window_spark(trips, options.trips_bound(), seed=seed ^ TRIP_SEED_MASK)
    return SparkBounded(presence, trips, source, presence_all, trips_all, homes, works)


def contribution_counts_spark(records: DataFrame) -> pl.DataFrame:
    """Exact (secret) person-windows per public bin of their record count, as the Polars engine counts them."""
    from pyspark.sql import functions as F

    # (person, window, ...) -> (person, window): n records
    per_unit = records.groupBy("person", "window").agg(F.count(F.lit(1)).alias("_n"))
    # (person, window) -> bin index: how many bin upper ends lie below n
    bins = F.lit(0)
    for upper in BIN_UPPER:
        bins = bins + (F.col("_n") > upper).cast("int")
    # bin -> person-windows (at most BIN_COUNT rows reach the driver)
    return _collect(per_unit.select(bins.alias("_bin")).groupBy("_bin").agg(F.count(F.lit(1)).alias("_units")))


def _collect(frame: DataFrame) -> pl.DataFrame:
    """A (small, aggregated) Spark frame on the driver as Polars, via Arrow where available."""
    if hasattr(frame, "toArrow"):  # pyspark >= 4
        result = pl.from_arrow(frame.toArrow())
        assert isinstance(result, pl.DataFrame)
        return result
    rows = frame.collect()  # pyspark 3.5: Rows; aggregates only, so this stays small
    return pl.DataFrame([tuple(r) for r in rows], schema=frame.columns, orient="row")


def _counts(frame: DataFrame, keys: list[str], cells: list[str], lookup: pl.DataFrame) -> pl.DataFrame:
    from pyspark.sql import functions as F

    counts = _collect(frame.groupBy(*keys).agg(F.count(F.lit(1)).alias("count")))
    counts = counts.with_columns([pl.col(c).cast(pl.UInt32) for c in cells])
    return _cell_names(counts.lazy(), lookup, cells).collect()


def _place_counts_spark(homes: DataFrame, works: DataFrame, lookup: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Homes and work cells (at most one each per person-window) → residents and commuting counts, cell ids, sorted."""
    from pyspark.sql import functions as F

    places = (homes.withColumn("place", F.lit("home"))
              .unionByName(works.withColumn("place", F.lit("work"))))
    # (window, place, cell) -> persons: each person-window at most 1 per place
    residents = _counts(places, ["window", "place", "cell"], ["cell"], lookup).sort("window", "place", "cell")
    # (person, window) -> (home, work) where both exist; (window, home, work) -> persons
    pairs = homes.join(works.withColumnRenamed("cell", "work"), on=["person", "window"], how="inner").select(
        "window", F.col("cell").alias("home"), "work")
    commuting = _counts(pairs, ["window", "home", "work"], ["home", "work"], lookup).sort("window", "home", "work")
    return residents, commuting


def ingest_events_spark(events_path: str | Path | Sequence[str | Path], cells_path: str | Path, out_dir: str | Path,
                        options: IngestOptions, *, spark: SparkSession | None = None,
                        progress: Progress | None = None) -> Path:
    """Raw network events (one path or several: daily files) → bounded presence and trip counts with Spark; the
    same dataset directory.

    The bounding report is made as by the Polars engine: exact histograms counted by Spark,
    collected as at most a few dozen numbers, released once with OpenDP on the driver.
    """
    options.check_input(("events",), "ingest_events_spark")
    options.check_engine("spark")
    progress = progress or Progress()
    out = Path(out_dir)
    options, plan = begin_append(out, options)  # appending: the served grid, the new windows' span
    # name, span, window, bounds and the place rule were checked when the options were made, before Spark reads
    meta = options.events_metadata() if plan is None else plan.metadata
    names = ", ".join(_name(p) for p in spark_paths(events_path))
    progress.phase(f"reading {Path(cells_path).name} and checking {names} with Spark")
    bounded = bounded_records_spark(events_path, cells_path, options, seed=options.drawn_seed(), spark=spark,
                                    plan=plan)
    source = bounded.source
    check_catalog(plan, source.catalog, out)
    zonings = _load_zonings(options.zonings, source.catalog)
    if plan is not None:
        for line in AppendDrops(source.rows, source.late, source.held).lines(plan):
            progress.warn(line)
    try:
        progress.phase("deriving presence, bounding per person-window (Spark)")
        presence = _counts(bounded.presence, ["day", "hour", "cell"], ["cell"], source.lookup)
        progress.phase("deriving homes and work cells per person-window (Spark)")
        assert bounded.homes is not None and bounded.works is not None
        residents, commuting = _place_counts_spark(bounded.homes, bounded.works, source.lookup)
        progress.phase("deriving trips, bounding per person-window (Spark)")
        trips = _counts(bounded.trips, ["day", "hour", "origin", "dest"], ["origin", "dest"], source.lookup)
        histograms = ContributionHistograms(enabled=options.report_budget.nanos > 0)
        if histograms.enabled:
            progress.phase("counting contributions per person-window for the bounding report (Spark)")
            for measure, frame in (("presence", bounded.presence_unbounded), ("trips", bounded.trips_unbounded)):
                assert frame is not None
                histograms.add_counts(measure, contribution_counts_spark(frame))
        appended, windows, first_window = append_arguments(plan, meta.window_count)
        report = release_bounding_report(histograms, options.report_budget, windows, first_window)
    finally:
        source.events.unpersist()
    progress.phase("writing aggregates")
    write_aggregates(out, meta, _cells_frame(source.catalog), trips, presence, bounding_report=report,
                     residents=residents, commuting=commuting, zonings=zonings, **appended)
    progress.phase(f"done: dataset {options.name!r} in {out}")
    return out
