"""The Spark ingestion against the Polars one (design §7: same bounding semantics, equal in distribution).

- bounds large enough to be inactive: both engines write the same trips, row for row, and the
  same presence per (day, hour) and homes per window; the engines' keyed hashes break ties
  between cells differently (each uniformly), so which tied cell an hour, a home or a work
  place gets may differ: on events without ties all five files are identical;
- hour cells, homes and work cells of either engine follow the rule (the plain reference in
  places_reference.py), and ties go to the smallest of the tied cells about as often as chance
  says, not always (never by order);
- bounds active: no (person, window) keeps more than L records, and the kept total is
  Σ min(n, L), exactly as in Polars;
- equal in distribution: which records survive depends on the engine's hash (xxhash64 vs
  Polars' struct hash), so the same seed keeps different records. Over many seeds, each
  record of a person-window with n records survives with probability min(1, L/n) in both
  engines, so per-key kept totals (per cell, hour and day of presence; per hour and origin of
  trips) have the same mean. For each key a Welch z-test compares the engines' means over
  the seeds (Bonferroni over all keys, family alpha 1e-6), and the sum of z² is compared with
  its χ² quantile; both engines' means are also checked against the exact expectation
  Σ min(1, L/n). A "first L by time" selection fails the same test (the test has power).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
from scipy import stats

from dpflows.aggregates import load_dataset, read_interchange, version_dir
from dpflows.demo import generate_city
from dpflows.errors import InvalidData
from dpflows.ingest import derive
from dpflows.ingest.bounding import bound_per_person_window
from dpflows.ingest.pipeline import IngestOptions, ZoningSpec, _index_cells, _with_window, ingest_events, read_cells

pytestmark = [pytest.mark.spark, pytest.mark.slow]

ALPHA = 1e-6
SEEDS = 200
L_PRESENCE = 6
L_TRIPS = 2
SECRET = 9876543210


@pytest.fixture(scope="session")
def spark() -> Iterator[Any]:
    if shutil.which("java") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("java is missing: the Spark tests need a JRE (scripts/bootstrap.sh installs one)")
        pytest.skip("java is missing: install a JRE (apt-get install default-jre-headless) to run the Spark tests")
    try:
        from pyspark.sql import SparkSession
    except ImportError:
        if os.environ.get("CI") == "true":
            pytest.fail("pyspark is missing: pip install -e '.[spark]'")
        pytest.skip("pyspark is missing: pip install -e '.[spark]'")
    session = (SparkSession.builder.master("local[2]").appName("dpflows-tests")
               .config("spark.sql.shuffle.partitions", "4")
               .config("spark.ui.enabled", "false")
               .config("spark.driver.host", "127.0.0.1")
               .config("spark.driver.bindAddress", "127.0.0.1")
               .getOrCreate())
    session.sparkContext.setLogLevel("ERROR")
    try:
        yield session
    finally:
        session.stop()


@pytest.fixture(scope="module")
def city(tmp_path_factory: pytest.TempPathFactory):
    return generate_city(tmp_path_factory.mktemp("spark-city"), persons=300, seed=5, days=7)


def _sorted(frame: pl.LazyFrame, keys: list[str]) -> pl.DataFrame:
    return frame.collect().sort(keys)


@pytest.mark.parametrize("rule", ["stay", "consecutive"])
def test_inactive_bounds_give_identical_aggregates(spark, city, tmp_path: Path, rule: str) -> None:
    from dpflows.ingest.spark import ingest_events_spark

    big = 10**6
    zonings = [ZoningSpec("districts", city.districts), ZoningSpec("sectors", city.sectors, True, 50)]
    kw: dict[str, Any] = dict(name="city", bound_trips=big, bound_presence=big, trip_rule=rule,
                              min_dwell_minutes=30, zonings=zonings)
    polars_out = ingest_events(city.events, city.cells, tmp_path / "polars", IngestOptions(**city.span, seed=1, **kw))
    spark_out = ingest_events_spark(city.events, city.cells, tmp_path / "spark",
                                    IngestOptions(**city.span, seed=2, **kw), spark=spark)
    for name, keys in (("trips", ["day", "hour", "origin", "dest"]), ("presence", ["day", "hour", "cell"]),
                       ("residents", ["window", "place", "cell"]), ("commuting", ["window", "home", "work"])):
        a, b = (_sorted(read_interchange(polars_out, name), keys),
                _sorted(read_interchange(spark_out, name), keys))
        assert a.schema == b.schema
        assert a.height > 100
        if name == "trips":
            assert a.equals(b), name
    # ties between cells are broken by each engine's hash: what ties cannot move is equal
    per_hour = [_sorted(read_interchange(out, "presence"), ["day", "hour"]).group_by("day", "hour").agg(
        pl.col("count").sum()).sort("day", "hour") for out in (polars_out, spark_out)]
    assert per_hour[0].equals(per_hour[1])
    homes = [read_interchange(out, "residents").collect().filter(pl.col("place") == "home").group_by(
        "window").agg(pl.col("count").sum()).sort("window") for out in (polars_out, spark_out)]
    assert homes[0].equals(homes[1])
    assert pl.read_parquet(version_dir(polars_out) / "cells.parquet").equals(
        pl.read_parquet(version_dir(spark_out) / "cells.parquet"))
    docs = [json.loads((version_dir(out) / "metadata.json").read_text()) for out in (polars_out, spark_out)]
    for doc in docs:
        doc.pop("ingestion_id")
        doc.pop("files")  # row order within a file differs between engines; the rows are compared above
        doc.pop("windows")  # fresh window version ids
    reports = [doc.pop("bounding_report") for doc in docs]
    assert docs[0] == docs[1]
    # Both engines release the report the same way; the values are noise draws, so they differ.
    for report in reports:
        report.pop("noisy_counts")
    assert reports[0] == reports[1]
    assert sorted(p.name for p in (spark_out / "zonings").iterdir()) == ["districts.json", "sectors.json"]
    data = load_dataset(spark_out)
    assert data.metadata.trip_rule["kind"] == rule and data.zoning("sectors").coarse


def _polars_records(city) -> tuple[pl.DataFrame, pl.DataFrame, dt.date]:
    """Unbounded presence and trip records with windows, as the Polars pipeline derives them."""
    _, lookup = read_cells(city.cells)
    events = _index_cells(pl.scan_parquet(city.events), lookup, Path(city.events), "cell_id", "cell")
    start = city.first_day
    presence = _with_window(derive.presence(events, seed=17), start, 7).collect()
    trips = derive.trips(events, rule="stay", min_dwell=dt.timedelta(minutes=30)).with_columns(
        pl.col("timestamp").dt.date().alias("day"), pl.col("timestamp").dt.hour().cast(pl.Int8).alias("hour"))
    return presence, _with_window(trips, start, 7).collect(), start


def _kept_total(records: pl.DataFrame, bound: int) -> int:
    sizes = records.group_by("person", "window").len()["len"]
    return int(np.minimum(sizes.to_numpy(), bound).sum())


def test_active_bounds_keep_at_most_l_and_sum_of_min_n_l(spark, city) -> None:
    from pyspark.sql import functions as F

    from dpflows.ingest.spark import bounded_records_spark

    presence, trips, _ = _polars_records(city)
    options = IngestOptions(name="city", **city.span, bound_trips=L_TRIPS, bound_presence=L_PRESENCE)
    bounded = bounded_records_spark(city.events, city.cells, options, seed=123, spark=spark)
    try:
        for frame, records, bound in ((bounded.presence, presence, L_PRESENCE), (bounded.trips, trips, L_TRIPS)):
            sizes = frame.groupBy("person", "window").count().agg(F.max("count"), F.sum("count")).collect()[0]
            largest, kept = sizes[0], sizes[1]
            assert largest == bound  # some person-window is at the bound, none above it
            assert records.group_by("person", "window").len()["len"].max() > bound  # bounding is active
            assert kept == _kept_total(records, bound)
            polars_kept = bound_per_person_window(records.lazy(), bound, seed=123).collect().height
            assert kept == polars_kept
    finally:
        bounded.source.events.unpersist()


def _welch(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-key z of the difference of means over seeds; rows are seeds, columns keys."""
    se = np.sqrt(a.var(axis=0, ddof=1) / a.shape[0] + b.var(axis=0, ddof=1) / b.shape[0])
    diff = a.mean(axis=0) - b.mean(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(se > 0, diff / np.where(se > 0, se, 1), np.where(diff == 0, 0.0, np.inf))


def _per_key_totals(kept: pl.DataFrame, key: str, domain: list[Any]) -> np.ndarray:
    """(seed × key) matrix of kept record counts."""
    counts = kept.group_by("seed", key).len()
    grid = np.zeros((SEEDS, len(domain)))
    index = {k: i for i, k in enumerate(domain)}
    for s, k, n in counts.iter_rows():
        grid[s, index[k]] = n
    return grid


def _expected(records: pl.DataFrame, bound: int, key: str, domain: list[Any]) -> np.ndarray:
    """Exact expected kept count per key: each record survives with probability min(1, L/n)."""
    p = records.with_columns((pl.lit(bound) / pl.len().over("person", "window")).clip(upper_bound=1.0).alias("p"))
    sums = dict(p.group_by(key).agg(pl.col("p").sum()).iter_rows())
    return np.array([sums.get(k, 0.0) for k in domain])


def _assert_same_distribution(a: np.ndarray, b: np.ndarray, expected: np.ndarray, what: str) -> None:
    keys = a.shape[1]
    z = _welch(a, b)
    bonferroni = stats.norm.isf(ALPHA / (2 * keys))
    assert np.all(np.abs(z) < bonferroni), f"{what}: max |z|={np.abs(z).max():.2f} ≥ {bonferroni:.2f}"
    varying = np.isfinite(z) & ((a.var(axis=0) > 0) | (b.var(axis=0) > 0))
    chi2 = float(np.sum(z[varying] ** 2))
    assert chi2 < stats.chi2.isf(ALPHA, int(varying.sum())), f"{what}: Σz²={chi2:.1f} over {varying.sum()} keys"
    for engine, m in (("polars", a), ("spark", b)):
        se = np.sqrt(m.var(axis=0, ddof=1) / m.shape[0])
        off = np.abs(m.mean(axis=0) - expected)
        ok = np.where(se > 0, off < bonferroni * se + 1e-9, off < 1e-9)
        assert ok.all(), f"{what}: {engine} means differ from Σ min(1, L/n) at keys {np.flatnonzero(~ok)[:5]}"


def _polars_many_seeds(records: pl.DataFrame, bound: int, base: int) -> pl.DataFrame:
    parts = [bound_per_person_window(records.lazy(), bound, seed=base + s).collect().with_columns(
        pl.lit(s).alias("seed")) for s in range(SEEDS)]
    return pl.concat(parts)


def _spark_many_seeds(spark, bounded_source, records: Any, bound: int, base: int) -> pl.DataFrame:
    """All seeds in one Spark job: records × seeds, ranked within (seed, person, window)."""
    from pyspark.sql import functions as F

    from dpflows.ingest.spark import _collect, bound_per_person_window_spark

    seeds = spark.range(SEEDS).select(F.col("id").cast("int").alias("seed"))
    kept = bound_per_person_window_spark(records.crossJoin(seeds), bound, seed=F.col("seed") + F.lit(base),
                                         by=["seed"])
    columns = [c for c in records.columns if c != "person"] + ["seed"]
    return _collect(kept.select(*columns))


def test_spark_bounding_is_equal_in_distribution_to_polars(spark, city) -> None:
    from dpflows.ingest.spark import read_events_spark, trip_records

    presence, trips, start = _polars_records(city)
    source = read_events_spark(spark, city.events, city.cells, *city.span.values())
    try:
        # the same presence records for both engines' bounding: their ties were broken by different hashes
        spark_presence = spark.createDataFrame(
            presence.select("person", "day", pl.col("hour").cast(pl.Int32), pl.col("cell").cast(pl.Int32),
                            "window").rows(), "person long, day date, hour int, cell int, window long")
        spark_trips = trip_records(source.events, start, 7, rule="stay", min_dwell_minutes=30)
        checks = [
            (presence, spark_presence, L_PRESENCE, ["cell", "hour", "day"]),
            (trips, spark_trips, L_TRIPS, ["hour", "origin"]),
        ]
        for records, spark_records, bound, keys in checks:
            assert records.group_by("person", "window").len()["len"].max() > bound
            a_kept = _polars_many_seeds(records, bound, base=1000)
            b_kept = _spark_many_seeds(spark, source, spark_records, bound, base=5000)
            b_kept = b_kept.with_columns(pl.col(c).cast(a_kept.schema[c]) for c in b_kept.columns if c in a_kept.schema)
            assert b_kept.group_by("seed").len()["len"].to_list() == [_kept_total(records, bound)] * SEEDS
            for key in keys:
                domain = sorted(records[key].unique().to_list())
                a = _per_key_totals(a_kept, key, domain)
                b = _per_key_totals(b_kept, key, domain)
                _assert_same_distribution(a, b, _expected(records, bound, key, domain), f"{key} (L={bound})")
    finally:
        source.events.unpersist()

    # power: keeping each person-window's first L presence-hours (order leaks) fails the same test
    first = (presence.sort("day", "hour", "cell").with_columns(pl.int_range(pl.len()).over("person", "window")
                                                                 .alias("_r"))
             .filter(pl.col("_r") < L_PRESENCE))
    domain = sorted(presence["hour"].unique().to_list())
    a = _per_key_totals(_polars_many_seeds(presence, L_PRESENCE, base=7000), "hour", domain)
    biased = np.tile(_per_key_totals(first.with_columns(pl.lit(0).alias("seed")), "hour", domain)[:1], (SEEDS, 1))
    biased = biased + np.random.default_rng(0).normal(0, 1e-3, biased.shape)  # test data only: avoid zero variance
    with pytest.raises(AssertionError):
        _assert_same_distribution(a, biased, _expected(presence, L_PRESENCE, "hour", domain), "hour (first L)")


def test_spark_errors_name_file_and_column_never_persons(spark, city, tmp_path: Path) -> None:
    from dpflows.ingest.spark import ingest_events_spark

    good = (SECRET, "2024-03-04 08:00:00", "C0101")
    cases = [
        ([good, (SECRET, "yesterday", "C0101")], "unparseable", "timestamp"),
        ([good, (SECRET, "2024-03-04 09:00:00", "NOPE")], "missing from the cell catalog", "cell_id"),
        ([good, ("C0101", "2024-03-04 09:00:00", SECRET)], "check the column order", "cell_id"),  # swapped
        ([good, (SECRET, "", "C0101")], "empty", "timestamp"),
    ]
    for rows, fragment, column in cases:
        path = tmp_path / "events.csv"
        path.write_text("person,timestamp,cell_id\n" + "".join(",".join(map(str, r)) + "\n" for r in rows))
        with pytest.raises(InvalidData) as info:
            ingest_events_spark(path, city.cells, tmp_path / "out",
                                IngestOptions(**city.span, name="x", seed=1), spark=spark)
        message = info.value.message
        assert "events.csv" in message and fragment in message and column in message, message
        assert str(SECRET) not in message
    missing = tmp_path / "m.csv"
    missing.write_text("who,when,where\n1,2,3\n")
    with pytest.raises(InvalidData, match=r"m\.csv: missing column\(s\) \['person', 'timestamp', 'cell_id'\]"):
        ingest_events_spark(missing, city.cells, tmp_path / "out", IngestOptions(**city.span, name="x"), spark=spark)
    with pytest.raises(InvalidData, match="bound"):
        ingest_events_spark(city.events, city.cells, tmp_path / "out",
                            IngestOptions(**city.span, name="x", bound_trips=0), spark=spark)


def test_cli_engine_spark_uses_the_active_session(spark, city, tmp_path: Path, capsys) -> None:
    from dpflows.cli import main

    out = tmp_path / "datasets" / "city"
    span = ["--first-day", str(city.first_day), "--end-day", str(city.end_day)]
    code = main(["ingest", str(city.events), "--cells", str(city.cells), "--out", str(out), "--engine", "spark", *span,
                 "--bound-trips", "5", "--zoning", f"districts={city.districts}"])
    assert code == 0 and "'city' written" in capsys.readouterr().out
    data = load_dataset(out)
    assert data.metadata.bound_trips == 5 and data.zoning("districts").zone_count == 50
    assert main(["ingest", str(city.events), "--cells", str(city.cells), "--out", str(tmp_path / "t"),
                 "--engine", "spark", "--trips-table", *span]) != 0


def test_spark_contribution_histograms_equal_polars(spark, city) -> None:
    """The bounding report's exact histograms: Spark counts what the Polars engine counts, bin for bin."""
    from dpflows.ingest.contribution_histograms import contribution_histogram
    from dpflows.ingest.spark import bounded_records_spark, contribution_counts_spark

    presence, trips, _ = _polars_records(city)
    bounded = bounded_records_spark(city.events, city.cells, IngestOptions(name="city", **city.span, window_days=7),
                                    seed=3, spark=spark)
    for polars_records, spark_records in ((presence, bounded.presence_unbounded), (trips, bounded.trips_unbounded)):
        assert spark_records is not None
        counts = contribution_counts_spark(spark_records)
        spark_hist = np.zeros(len(contribution_histogram(polars_records.lazy())), dtype=np.int64)
        spark_hist[counts["_bin"].to_numpy()] = counts["_units"].to_numpy()
        expected = contribution_histogram(polars_records.lazy())
        assert expected.sum() > 100 and np.array_equal(spark_hist, expected)


def _tie_free_events(path: Path, persons: int = 60, days: int = 14) -> None:
    """Routines in which every hour, every night and every working week has one clear winner: no ties at all.

    Nights at home (2 events an hour); work 09-17 on 3-5 weekdays (2 an hour), with a handover
    cell (1 event) on the way and, on three days, an hour at a second place (3 events): never
    near the work cell's hours; evenings 18-20 at a leisure cell; some persons work at home.
    """
    rng = np.random.default_rng(12)  # synthetic test data, not noise
    rows: list[tuple[int, dt.datetime, str]] = []
    cells = [f"C{r:02d}{c:02d}" for r in range(20) for c in range(20)]
    for person in range(persons):
        home, work, other, leisure, handover = (cells[i] for i in rng.choice(len(cells), 5, replace=False))
        if person % 10 == 0:
            work = home  # works at home: no work cell
        for d in range(days):
            day = dt.datetime(2024, 3, 4) + dt.timedelta(days=d)
            for h in [22, 23, 0, 1, 2, 3]:
                rows += [(person, day + dt.timedelta(hours=h, minutes=m), home) for m in (5, 35)]
            if day.weekday() < 5 and rng.random() < 0.8:
                for h in range(9, 17):
                    cell = other if (h == 11 and d % 7 < 3) else work
                    rows += [(person, day + dt.timedelta(hours=h, minutes=m), cell)
                             for m in ((5, 25, 45) if cell == other else (10, 40))]
                rows.append((person, day + dt.timedelta(hours=8, minutes=50), handover))
            rows += [(person, day + dt.timedelta(hours=h, minutes=15), leisure) for h in (18, 19)]
    pl.DataFrame({"person": [r[0] for r in rows], "timestamp": [r[1] for r in rows], "cell_id": [r[2] for r in rows]},
                 schema={"person": pl.Int64, "timestamp": pl.Datetime("us"), "cell_id": pl.String}).write_parquet(path)


def test_without_ties_every_file_is_identical(spark, tmp_path: Path) -> None:
    from dpflows.ingest.spark import ingest_events_spark

    _tie_free_events(tmp_path / "events.parquet")
    city = generate_city(tmp_path / "c", persons=1, days=1)
    span = {"first_day": dt.date(2024, 3, 4), "end_day": dt.date(2024, 3, 18)}
    kw: dict[str, Any] = dict(name="tf", bound_trips=10**6, bound_presence=10**6, report_epsilon=0, **span)
    polars_out = ingest_events(tmp_path / "events.parquet", city.cells, tmp_path / "polars",
                               IngestOptions(seed=1, **kw))
    spark_out = ingest_events_spark(tmp_path / "events.parquet", city.cells, tmp_path / "spark",
                                    IngestOptions(seed=2, **kw), spark=spark)
    for name, keys in (("trips", ["day", "hour", "origin", "dest"]), ("presence", ["day", "hour", "cell"]),
                       ("residents", ["window", "place", "cell"]), ("commuting", ["window", "home", "work"])):
        a, b = (_sorted(read_interchange(polars_out, name), keys),
                _sorted(read_interchange(spark_out, name), keys))
        assert a.schema == b.schema and a.height > 0
        assert a.equals(b), name
    residents = _sorted(read_interchange(spark_out, "residents"), ["window", "place"])
    per_place = dict(residents.group_by("place").agg(pl.col("count").sum()).iter_rows())
    assert per_place["home"] == 2 * 60 and 0 < per_place["work"] < 2 * 54  # home workers and short weeks have none
    assert load_dataset(spark_out).metadata.places == load_dataset(polars_out).metadata.places


def test_spark_records_follow_the_rule_and_ties_are_not_broken_by_order(spark, city) -> None:
    from dpflows.ingest.pipeline import DEFAULT_PLACES
    from dpflows.ingest.spark import _collect, bounded_records_spark
    from tests.ingest.places_reference import check_hour_cells, check_places

    _, lookup = read_cells(city.cells)
    events = _index_cells(pl.scan_parquet(city.events), lookup, Path(city.events), "cell_id", "cell").collect()
    bounded = bounded_records_spark(city.events, city.cells, IngestOptions(name="city", **city.span), seed=5, spark=spark)
    try:
        assert bounded.presence_unbounded is not None and bounded.homes is not None and bounded.works is not None
        hour_cells = _collect(bounded.presence_unbounded)
        homes, works = _collect(bounded.homes), _collect(bounded.works)
    finally:
        bounded.source.events.unpersist()
    assert check_hour_cells(events, hour_cells) > 100  # many tied hours, not broken by order
    seen = check_places(hour_cells, homes, works, DEFAULT_PLACES)
    assert seen["homes"] > 250 and seen["work"] > 200
    # the same records from the Polars engine pass the same reference
    polars_cells = _with_window(derive.presence(events.lazy(), seed=5), city.first_day, 7).collect()
    check_hour_cells(events, polars_cells)
    assert polars_cells.height == hour_cells.height


def test_spark_appends_the_windows_polars_appends(spark, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 19 item 5 on both engines: week 2 appended after week 1; week 1 untouched; the same week 2."""
    from dpflows.ingest.spark import ingest_events_spark

    city = generate_city(tmp_path / "raw", persons=200, seed=6, days=14)
    week1 = tmp_path / "week1.parquet"
    pl.read_parquet(city.events).filter(pl.col("timestamp").dt.date() < city.first_day + dt.timedelta(days=7)
                                        ).write_parquet(week1)
    common = dict(name="city", first_day=city.first_day, bound_trips=1000, bound_presence=1000, seed=4,
                  report_epsilon="0.1")
    outs = {engine: tmp_path / engine / "datasets" / "city" for engine in ("polars", "spark")}
    ingest_events(week1, city.cells, outs["polars"], IngestOptions(**common, end_day=city.first_day
                                                                   + dt.timedelta(days=7)))
    shutil.copytree(outs["polars"], outs["spark"])
    before = load_dataset(outs["polars"]).window_refs[0]
    options = IngestOptions(**common, end_day=city.end_day, append=True)
    capsys.readouterr()
    ingest_events(city.events, city.cells, outs["polars"], options)
    ingest_events_spark(city.events, city.cells, outs["spark"], options, spark=spark)
    err = capsys.readouterr().err
    assert err.count("late: ") == 2 and len({line for line in err.splitlines() if "late: " in line}) == 1
    for out in outs.values():
        data = load_dataset(out)
        assert data.metadata.window_count == 2 and data.window_refs[0].digest == before.digest
        assert {c.first_window: c.windows for c in data.report_charges} == {0: 1, 1: 1}
    trips = [read_interchange(out, "trips").filter(pl.col("day") >= city.first_day + dt.timedelta(days=7))
             .collect().sort("day", "hour", "origin", "dest") for out in outs.values()]
    assert trips[0].equals(trips[1]) and trips[0].height > 0


def test_spark_reads_daily_files_csv_and_parquet(spark, city, tmp_path: Path) -> None:
    """Several inputs at once (issue 19): daily Parquet files give the counts of the one file holding them (same
    seed), CSV and Parquet days mixed the trips Polars writes from the same files; a bad row is refused naming
    its file and column, with no row count."""
    from dpflows.ingest.spark import ingest_events_spark

    events = pl.read_parquet(city.events)
    days = [city.first_day + dt.timedelta(days=k) for k in range(7)]
    parquet, mixed = [], []
    for k, day in enumerate(days):
        rows = events.filter(pl.col("timestamp").dt.date() == day)
        rows.write_parquet(tmp_path / f"day-{k}.parquet")
        parquet.append(tmp_path / f"day-{k}.parquet")
        if k % 2:
            rows.write_csv(tmp_path / f"day-{k}.csv")
        mixed.append(tmp_path / (f"day-{k}.csv" if k % 2 else f"day-{k}.parquet"))
    options = IngestOptions(**city.span, name="city", seed=3, report_epsilon="0")
    one = ingest_events_spark(city.events, city.cells, tmp_path / "one", options, spark=spark)
    several = ingest_events_spark(parquet, city.cells, tmp_path / "several", options, spark=spark)
    for name, keys in (("trips", ["day", "hour", "origin", "dest"]), ("presence", ["day", "hour", "cell"])):
        a, b = (_sorted(read_interchange(out, name), keys) for out in (one, several))
        assert a.height > 0 and a.equals(b), name
    inactive = IngestOptions(**city.span, name="city", seed=3, report_epsilon="0", bound_trips=10**6,
                             bound_presence=10**6)
    spark_mixed = ingest_events_spark(mixed, city.cells, tmp_path / "spark-mixed", inactive, spark=spark)
    polars_mixed = ingest_events(mixed, city.cells, tmp_path / "polars-mixed", inactive)
    keys = ["day", "hour", "origin", "dest"]
    assert _sorted(read_interchange(spark_mixed, "trips"), keys).equals(
        _sorted(read_interchange(polars_mixed, "trips"), keys))
    bad = tmp_path / "day-3-bad.csv"
    pl.read_csv(mixed[3]).with_columns(pl.lit("NOPE").alias("cell_id")).write_csv(bad)
    with pytest.raises(InvalidData) as info:
        ingest_events_spark([mixed[0], bad], city.cells, tmp_path / "bad", options, spark=spark)
    assert info.value.message == ("day-3-bad.csv: column 'cell_id' holds values missing from the cell catalog; "
                                  "check the column order, add the cells to the catalog or drop those rows")
    assert info.value.field == "cell_id" and not (tmp_path / "bad").exists()
