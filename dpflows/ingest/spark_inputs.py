"""Reading and checking events with Spark: one pass that counts every problem, never a person id."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl

from dpflows.cells import CellCatalog
from dpflows.errors import InvalidData
from dpflows.ingest.inputs import check_declared_span, read_cells

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

TRIP_SEED_MASK = 0x5A5A5A5A  # the Polars path bounds trips with seed ^ this mask too


def _spark(spark: SparkSession | None) -> SparkSession:
    if spark is not None:
        return spark
    from pyspark.sql import SparkSession

    return SparkSession.builder.getOrCreate()  # spark-submit's --master and conf apply


def _name(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1] or path


def _read(spark: SparkSession, path: str) -> DataFrame:
    """Parquet (a file or a directory of files) or CSV with a header, read as strings."""
    name = _name(path)
    is_local = "://" not in path
    if is_local and not Path(path).exists():
        raise InvalidData(f"{name}: file not found", field="path")
    try:
        if name.lower().endswith((".csv", ".csv.gz")):
            return spark.read.csv(path, header=True, inferSchema=False)
        return spark.read.parquet(path)
    except Exception as exc:  # AnalysisException and friends: unreadable or not found
        raise InvalidData(f"{name}: cannot be read as {'CSV' if 'csv' in name.lower() else 'Parquet'}",
                          field="path") from exc


def _timestamp_ntz(frame: DataFrame, name: str, column: str, time_zone: str | None = None) -> tuple[Column, Column]:
    """(parsed timestamp_ntz column, raw column) for strings, naive or UTC-adjusted timestamps; instants as wall
    times in `time_zone` when the dataset declares one (as the Polars engine: dpflows.ingest.inputs._timestamps)."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import StringType, TimestampNTZType, TimestampType

    dtype = frame.schema[column].dataType
    raw = F.col(column)
    if isinstance(dtype, StringType):
        return F.expr(f"try_cast(trim(`{column}`) AS TIMESTAMP_NTZ)"), raw
    if isinstance(dtype, TimestampNTZType):
        return raw, raw
    if isinstance(dtype, TimestampType):
        # an instant: its UTC wall time, independent of spark.sql.session.timeZone (Polars reads UTC)
        utc = (f"timestampadd(MICROSECOND, unix_micros(`{column}`), TIMESTAMP_NTZ'1970-01-01 00:00:00')")
        if time_zone is None:
            return F.expr(utc), raw
        return F.expr(f"convert_timezone('UTC', '{time_zone}', {utc})"), raw  # a checked IANA name
    raise InvalidData(f"{name}: column {column!r} has type {dtype.simpleString()}; it must hold datetimes",
                      field=column)


def _lookup_frame(spark: SparkSession, lookup: pl.DataFrame) -> DataFrame:
    from pyspark.sql import functions as F

    rows = list(zip(lookup["_cell_id"].to_list(), lookup["_cell"].to_list(), strict=True))
    return F.broadcast(spark.createDataFrame(rows, "_cell_id string, _cell int"))


@dataclass
class SparkEvents:
    """Checked events (person, timestamp: timestamp_ntz, cell: catalog index) and their span."""

    events: DataFrame
    catalog: CellCatalog
    lookup: pl.DataFrame
    first_day: dt.date
    end_day: dt.date  # exclusive
    #: with `keep` (an append): rows read, rows before keep (late) and after it (held), all left out
    rows: int = 0
    late: int = 0
    held: int = 0


def spark_paths(events_path: str | Path | Sequence[str | Path]) -> list[str]:
    """The input paths as Spark reads them: one (a file, a directory of Parquet files) or several (daily files)."""
    paths = [str(events_path)] if isinstance(events_path, (str, Path)) else [str(p) for p in events_path]
    if not paths:
        raise InvalidData("no events file given; name one or more files (CSV or Parquet)", field="path")
    return paths


def _events_of(spark: SparkSession, path: str, number: int, time_zone: str | None) -> DataFrame:
    """One input's (person, timestamp: timestamp_ntz, _ts_empty, cell_id: string, _file: its number), columns
    checked; parsed per file, so CSV and Parquet files may be given together."""
    from pyspark.sql import functions as F

    name = _name(path)
    raw = _read(spark, path)
    present = set(raw.columns)
    missing = [c for c in ("person", "timestamp", "cell_id") if c not in present]
    if missing:
        raise InvalidData(f"{name}: missing column(s) {missing}; found {sorted(present)}", field=missing[0])
    ts, ts_raw = _timestamp_ntz(raw, name, "timestamp", time_zone)
    return raw.select(F.col("person"), ts.alias("timestamp"), ts_raw.isNull().alias("_ts_empty"),
                      F.col("cell_id").cast("string").alias("cell_id"), F.lit(number).alias("_file"))


def _refuse_bad_rows(checks: dict[int, dict[str, int]], paths: list[str], start: dt.date, end: dt.date,
                     keep: tuple[dt.date, dt.date] | None) -> None:
    """The first file (in the order given) with a bad row, named with the column and the fix; Spark has no stable
    row order, so no row numbers, and no count either (an exact figure over secret records)."""
    for number, path in enumerate(paths):
        name, c = _name(path), checks.get(number)
        if c is None or not c["rows"]:
            raise InvalidData(f"{name}: no rows; nothing to ingest: give the file(s) that hold the events of the "
                              "declared days (a day without events is declared missing)", field="path")
        if c["bad_ts"]:
            raise InvalidData(f"{name}: column 'timestamp' has unparseable timestamps; use ISO 8601 such as "
                              "2024-03-04 08:15:00", field="timestamp")
        if c["empty_ts"]:
            raise InvalidData(f"{name}: column 'timestamp' is empty in some rows; every row needs a time",
                              field="timestamp")
        if c["empty_person"]:
            raise InvalidData(f"{name}: column 'person' is empty in some rows; every event needs its person's "
                              "pseudonym: fill them or remove those rows", field="person")
        if c["unknown_cells"]:
            # Values are not echoed: with swapped columns they would be pseudonyms (see pipeline.py).
            raise InvalidData(f"{name}: column 'cell_id' holds values missing from the cell catalog; check the "
                              "column order, add the cells to the catalog or drop those rows", field="cell_id")
        if c["early"] and keep is None:
            raise InvalidData(f"{name}: rows fall before --first-day {start}; declare an earlier --first-day or "
                              "remove them", field="timestamp")
        if c["late"]:
            raise InvalidData(f"{name}: rows fall on or after --end-day {end} (exclusive); declare a later "
                              "--end-day or remove them", field="timestamp")


def read_events_spark(spark: SparkSession, events_path: str | Path | Sequence[str | Path], cells_path: str | Path,
                      first_day: dt.date | None = None, end_day: dt.date | None = None, *,
                      time_zone: str | None = None, keep: tuple[dt.date, dt.date] | None = None) -> SparkEvents:
    """Read and check the events of every input in one Spark pass; errors name the file and the column, never a
    person, a row count or a value.

    With `keep` [from, to) (an append, dpflows.ingest.appending), rows before it are late and rows
    from its end to `end_day` held: both are counted and left out instead of refused."""
    from functools import reduce

    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    start, end = check_declared_span(first_day, end_day)
    paths = spark_paths(events_path)
    catalog, lookup = read_cells(cells_path)
    parts = [_events_of(spark, path, number, time_zone) for number, path in enumerate(paths)]
    if len({part.schema["person"].dataType for part in parts}) > 1:  # text in one file, numbers in another
        parts = [part.withColumn("person", F.col("person").cast("string")) for part in parts]
    frame = reduce(lambda a, b: a.unionByName(b), parts).join(
        _lookup_frame(spark, lookup), F.col("cell_id") == F.col("_cell_id"), "left")
    rows = frame.groupBy("_file").agg(
        F.count(F.lit(1)).alias("rows"),
        F.sum(F.when(~F.col("_ts_empty") & F.col("timestamp").isNull(), 1).otherwise(0)).alias("bad_ts"),
        F.sum(F.when(F.col("_ts_empty"), 1).otherwise(0)).alias("empty_ts"),
        F.sum(F.when(F.col("person").isNull() | (F.trim(F.col("person").cast("string")) == ""), 1)
              .otherwise(0)).alias("empty_person"),
        F.sum(F.when(F.col("_cell").isNull(), 1).otherwise(0)).alias("unknown_cells"),
        F.sum(F.when(F.to_date("timestamp") < F.lit(start if keep is None else keep[0]), 1).otherwise(0))
        .alias("early"),
        F.sum(F.when(F.to_date("timestamp") >= F.lit(end if keep is None else keep[1]), 1).otherwise(0)).alias("held"),
        F.sum(F.when(F.to_date("timestamp") >= F.lit(end), 1).otherwise(0)).alias("late"),
    ).collect()
    checks = {int(r["_file"]): {k: int(r[k] or 0) for k in r.asDict() if k != "_file"} for r in rows}
    _refuse_bad_rows(checks, paths, start, end, keep)
    total = {k: sum(c[k] for c in checks.values()) for k in ("rows", "early", "held", "late")}
    if keep is not None and total["rows"] == total["early"] + total["held"]:
        names = ", ".join(_name(p) for p in paths)
        raise InvalidData(f"{names}: no rows fall in the appended windows ({keep[0]}..{keep[1]}); nothing to "
                          "ingest", field="path")
    if keep is not None:
        frame = frame.filter((F.to_date("timestamp") >= F.lit(keep[0])) & (F.to_date("timestamp") < F.lit(keep[1])))
    events = (frame.select("person", "timestamp", F.col("_cell").alias("cell"))
              .persist(StorageLevel.MEMORY_AND_DISK))
    if keep is None:
        return SparkEvents(events, catalog, lookup, start, end)
    return SparkEvents(events, catalog, lookup, start, keep[1], total["rows"], total["early"],
                       total["held"] - total["late"])
