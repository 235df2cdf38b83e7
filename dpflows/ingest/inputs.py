"""Reading and checking what ingestion is given: files, columns, timestamps, cells, declared days, zonings.

Every message names the file, the column, the rows and the fix, and never a person id: values
missing from the cell catalog are not echoed (with swapped columns they would be pseudonyms).
"""

from __future__ import annotations

import datetime as dt
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from dpflows.cells import CellCatalog, Zoning, parse_zoning_csv
from dpflows.errors import InvalidData


@dataclass(frozen=True)
class ZoningSpec:
    """A zoning CSV to load with the dataset: NAME=PATH[:coarse:MIN] on the command line."""

    name: str
    path: Path
    coarse: bool = False
    min_cells_per_zone: int = 1

    @classmethod
    def parse(cls, text: str) -> ZoningSpec:
        name, _, rest = text.partition("=")
        if not name or not rest:
            raise InvalidData(f"--zoning {text!r} must look like NAME=PATH or NAME=PATH:coarse:MIN", field="zoning")
        parts = rest.split(":")
        if len(parts) == 3 and parts[1] == "coarse" and parts[2].isdigit():
            return cls(name, Path(parts[0]), True, int(parts[2]))
        if len(parts) == 1:
            return cls(name, Path(parts[0]))
        raise InvalidData(f"--zoning {text!r} must look like NAME=PATH or NAME=PATH:coarse:MIN", field="zoning")


class Progress:
    """Phase names with elapsed time on stderr, only when it is a terminal."""

    def __init__(self, enabled: bool | None = None) -> None:
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.start = time.perf_counter()

    def phase(self, text: str) -> None:
        if self.enabled:
            print(f"[{time.perf_counter() - self.start:7.1f} s] {text}", file=sys.stderr, flush=True)

    def warn(self, text: str) -> None:
        """Always shown to the operator who runs ingestion (stderr), terminal or not."""
        print(f"dpflows ingest: warning: {text}", file=sys.stderr, flush=True)


def _scan(path: Path) -> pl.LazyFrame:
    if not path.exists():
        raise InvalidData(f"{path.name}: file not found; check the path", field="path")
    if path.is_dir():
        raise InvalidData(f"{path.name}: is a directory; give the files in it (several are read at once, e.g. "
                          f"{path.name}/*.parquet)", field="path")
    name = path.name.lower()
    if name.endswith(".parquet"):
        return pl.scan_parquet(path)
    if name.endswith((".csv", ".csv.gz")):
        return pl.scan_csv(path, infer_schema=False)  # all strings; we parse and report ourselves
    raise InvalidData(f"{path.name}: unknown format; use Parquet (.parquet) or CSV (.csv, .csv.gz)", field="path")


def _require_columns(frame: pl.LazyFrame, path: Path, columns: Iterable[str]) -> None:
    try:
        present = set(frame.collect_schema().names())
    except Exception as exc:  # unreadable file: polars raises several types
        raise unreadable(path) from exc
    missing = [c for c in columns if c not in present]
    if missing:
        raise InvalidData(f"{path.name}: missing column(s) {missing}; found {sorted(present)}", field=missing[0])


def unreadable(path: Path) -> InvalidData:
    """A file whose bytes are not what its name says (truncated, corrupt, mislabelled)."""
    kind = ("gzip-compressed CSV" if path.name.lower().endswith(".gz") else
            "Parquet" if path.name.lower().endswith(".parquet") else "CSV")
    return InvalidData(f"{path.name}: cannot be read as {kind} (truncated or corrupt?); export it again, or give "
                       "the file in the format its name ends with (.parquet, .csv, .csv.gz)", field="path")


def _numbered(frame: pl.LazyFrame) -> pl.LazyFrame:
    """The frame with `_row`, each row's 1-based number in its file: kept when the frame has it already
    (rows were numbered before some were left out), else numbered now."""
    return frame if "_row" in frame.collect_schema().names() else frame.with_row_index("_row", offset=1)


def row_count(path: Path, frame: pl.LazyFrame) -> int:
    """The rows of one file as read; reading it whole also finds a truncated or corrupt file, named."""
    try:
        return int(frame.select(pl.len()).collect().item())
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise unreadable(path) from exc


def _rows_where(frame: pl.LazyFrame, condition: pl.Expr, limit: int = 5) -> list[int]:
    """1-based data row numbers (header excluded) where `condition` holds, the first few only."""
    hits = _numbered(frame).filter(condition).select("_row").head(limit).collect()
    return [int(r) for r in hits["_row"]]


def _timestamps(frame: pl.LazyFrame, path: Path, column: str, time_zone: str | None = None) -> pl.LazyFrame:
    """Parsed, non-empty timestamps as naive local wall times: instants (a time zone or an offset) in
    `time_zone` when the dataset declares one; naive ones are taken as wall times there already. On a
    25-hour day both repeated hours carry the one local hour; a 23-hour day has no record in the skipped one."""
    dtype = frame.collect_schema()[column]
    if dtype == pl.String:
        parsed = pl.col(column).str.strip_chars().str.to_datetime(strict=False, time_unit="us")
        bad = _rows_where(frame, pl.col(column).is_not_null() & parsed.is_null())
        if bad:
            raise InvalidData(f"{path.name}: column {column!r} has unparseable timestamps in rows {bad}; "
                              "use ISO 8601 such as 2024-03-04 08:15:00", field=column)
        frame = frame.with_columns(parsed.alias(column))
    elif not isinstance(dtype, pl.Datetime):
        raise InvalidData(f"{path.name}: column {column!r} has type {dtype}; it must hold datetimes: write it as a "
                          "Parquet timestamp or as ISO 8601 text such as 2024-03-04 08:15:00", field=column)
    nulls = _rows_where(frame, pl.col(column).is_null())
    if nulls:
        raise InvalidData(f"{path.name}: column {column!r} is empty in rows {nulls}; every row needs a time",
                          field=column)
    parsed_type = frame.collect_schema()[column]
    if time_zone is not None and isinstance(parsed_type, pl.Datetime) and parsed_type.time_zone is not None:
        frame = frame.with_columns(pl.col(column).dt.convert_time_zone(time_zone).dt.replace_time_zone(None))
    return frame


def read_cells(path: str | Path) -> tuple[CellCatalog, pl.DataFrame]:
    """The public cell catalog (cell_id, lat, lon) and a cell_id → index lookup frame."""
    path = Path(path)
    frame = _scan(path)
    _require_columns(frame, path, ["cell_id", "lat", "lon"])
    try:
        cells = frame.select(pl.col("cell_id").cast(pl.String), pl.col("lat").cast(pl.Float64),
                             pl.col("lon").cast(pl.Float64)).collect()
    except Exception as exc:
        raise InvalidData(f"{path.name}: lat and lon must be numbers", field="lat") from exc
    if cells.height == 0:
        raise InvalidData(f"{path.name}: no cells; the catalog needs one row per cell", field="cell_id")
    if cells.null_count().sum_horizontal().item():
        raise InvalidData(f"{path.name}: empty cell_id, lat or lon values; fill every column", field="cell_id")
    catalog = CellCatalog.from_columns(cells["cell_id"].to_list(), cells["lat"].to_list(), cells["lon"].to_list())
    lookup = pl.DataFrame({"_cell_id": list(catalog.cell_ids), "_cell": pl.arange(0, len(catalog), eager=True)},
                          schema={"_cell_id": pl.String, "_cell": pl.UInt32})
    return catalog, lookup


def _index_cells(frame: pl.LazyFrame, lookup: pl.DataFrame, path: Path, column: str, alias: str) -> pl.LazyFrame:
    """Replace a cell_id column by its catalog index; unknown cells are an error naming them and rows."""
    joined = frame.with_columns(pl.col(column).cast(pl.String)).join(
        lookup.lazy(), left_on=column, right_on="_cell_id", how="left", maintain_order="left")
    bad = _numbered(joined).filter(pl.col("_cell").is_null()).select("_row").head(5).collect()
    if bad.height:
        # The values are not echoed: a value missing from the catalog may not be a cell id at
        # all (swapped columns would put pseudonyms here), and no person id may reach a message.
        raise InvalidData(
            f"{path.name}: column {column!r} holds values missing from the cell catalog in rows "
            f"{bad['_row'].to_list()}; check the column order, add the cells to the catalog or drop those rows",
            field=column,
        )
    return joined.drop(column).rename({"_cell": alias})


def check_declared_span(first_day: dt.date | None, end_day: dt.date | None) -> tuple[dt.date, dt.date]:
    """A dataset's days are declared by the admin, never measured from the secret events.

    The span is published (dataset listings, window ends, refusals outside it); measured from the
    data, one person alone on a day would move it.
    """
    if first_day is None or end_day is None:
        raise InvalidData("declare the days the dataset holds: --first-day and --end-day (exclusive) are required "
                          "(with --append, --end-day; the first day is the dataset's); they fix the window grid "
                          "and are published, so they never come from the events",
                          field="first_day" if first_day is None else "end_day")
    if end_day <= first_day:
        raise InvalidData(f"--end-day {end_day} must be after --first-day {first_day} (it is exclusive)",
                          field="end_day")
    return first_day, end_day


def _check_within_span(frame: pl.LazyFrame, path: Path, first_day: dt.date, end_day: dt.date,
                       missing_days: Iterable[dt.date] = ()) -> None:
    """Every event lies in the declared days; which rows do not is told, not the days they fall on."""
    if frame.select(pl.len()).collect().item() == 0:
        raise InvalidData(f"{path.name}: no rows; nothing to ingest: give the file(s) that hold the events of "
                          "the declared days", field="path")
    day = pl.col("timestamp").dt.date()
    early = _rows_where(frame, day < pl.lit(first_day))
    if early:
        raise InvalidData(f"{path.name}: rows {early} fall before --first-day {first_day}; declare an earlier "
                          "--first-day or remove them", field="timestamp")
    late = _rows_where(frame, day >= pl.lit(end_day))
    if late:
        raise InvalidData(f"{path.name}: rows {late} fall on or after --end-day {end_day} (exclusive); declare a later "
                          "--end-day or remove them", field="timestamp")
    missing = sorted(set(missing_days))
    if missing:
        off = _rows_where(frame, day.is_in(missing))
        if off:
            raise InvalidData(f"{path.name}: rows {off} fall on days --days does not declare; add those days to "
                              "--days or remove the rows", field="timestamp")


def _indexed_events(frame: pl.LazyFrame, path: Path, catalog: CellCatalog) -> pl.LazyFrame:
    """(person, timestamp, cell_id) → (person, timestamp, cell): parsed times, cell indexes (null: not in the catalog).

    Not checked: `_check_events` checks the result, in one pass.
    """
    dtype = frame.collect_schema()["timestamp"]
    if dtype == pl.String:
        stamp = pl.col("timestamp").str.strip_chars().str.to_datetime(strict=False, time_unit="us")
    elif isinstance(dtype, pl.Datetime):
        stamp = pl.col("timestamp")
    else:
        raise InvalidData(f"{path.name}: column 'timestamp' has type {dtype}; it must hold datetimes: write it as "
                          "a Parquet timestamp or as ISO 8601 text such as 2024-03-04 08:15:00", field="timestamp")
    # the catalog's sorted ids as an Enum: its physical value is the cell's index in the catalog
    cells = pl.Enum(list(catalog.cell_ids))
    index = pl.col("cell_id").cast(pl.String).cast(cells, strict=False).to_physical().cast(pl.UInt32)
    return frame.select("person", stamp.alias("timestamp"), index.alias("cell"))


def _check_events(indexed: pl.LazyFrame, files: Sequence[tuple[Path, pl.LazyFrame]], lookup: pl.DataFrame,
                  first_day: dt.date, end_day: dt.date, missing_days: Iterable[dt.date]) -> None:
    """Refuse events with a bad time, person or cell, outside the declared days or on missing ones.

    One pass over `indexed` (all files) tells whether anything is wrong; only then are the checks
    run one by one over each file as read (`files`: path, rows), which name the file, the column
    and the first rows in it.
    """
    day = pl.col("timestamp").dt.date()
    missing = sorted(set(missing_days))
    wrong = [pl.col("timestamp").is_null().any(), _empty_person(indexed).any(), pl.len() == 0,
             (day < pl.lit(first_day)).any(), (day >= pl.lit(end_day)).any(),
             day.is_in(missing).any() if missing else pl.lit(False), pl.col("cell").is_null().any()]
    if not any(indexed.select(*(w.alias(str(k)) for k, w in enumerate(wrong))).collect(engine="streaming").row(0)):
        return
    # a file whose rows an append left out (all late) has none to check; only when no file has any is that wrong
    with_rows = [(path, raw) for path, raw in files if raw.select(pl.len()).collect().item()]
    if not with_rows:
        raise InvalidData(f"{', '.join(path.name for path, _ in files)}: no rows; nothing to ingest: give the "
                          "file(s) that hold the events of the declared days", field="path")
    for path, raw in with_rows:
        frame = _timestamps(raw, path, "timestamp")
        empty = _rows_where(frame, _empty_person(frame))
        if empty:
            raise InvalidData(f"{path.name}: column 'person' is empty in rows {empty}; every event needs its "
                              "person's pseudonym: fill them or remove those rows", field="person")
        _check_within_span(frame, path, first_day, end_day, missing)
        _index_cells(frame, lookup, path, "cell_id", "cell")
    names = ", ".join(path.name for path, _ in files)
    raise InvalidData(f"{names}: rows fail a check that could not be placed; check persons, times and cells",
                      field="path")


def _empty_person(frame: pl.LazyFrame) -> pl.Expr:
    """Rows without a person: null, or blank text (its type is the file's: text in a CSV, often numbers in Parquet)."""
    empty = pl.col("person").is_null()
    if frame.collect_schema()["person"] == pl.String:
        empty = empty | (pl.col("person").str.strip_chars() == "")
    return empty


def _with_window(frame: pl.LazyFrame, first_day: dt.date, window_days: int) -> pl.LazyFrame:
    days = (pl.col("day") - pl.lit(first_day)).dt.total_days()
    return frame.with_columns((days // window_days).alias("window"))


def _cell_names(frame: pl.LazyFrame, lookup: pl.DataFrame, columns: list[str]) -> pl.LazyFrame:
    for col in columns:
        names = lookup.lazy().rename({"_cell": col, "_cell_id": f"{col}_id"})
        frame = frame.join(names, on=col, how="left").drop(col).rename({f"{col}_id": col})
    return frame


def _load_zonings(zonings: Iterable[ZoningSpec], catalog: CellCatalog) -> list[Zoning]:
    """The zonings to store with the dataset, checked against its catalog before anything is counted;
    `write_aggregates` saves them with the new version (nothing is written if ingestion fails)."""
    loaded = []
    for spec in zonings:
        if not spec.path.exists():
            raise InvalidData(f"zoning {spec.name!r}: file {spec.path.name} not found", field="zoning")
        mapping = parse_zoning_csv(spec.path.read_text(), source=spec.path.name)
        loaded.append(Zoning.from_mapping(spec.name, mapping, catalog, coarse=spec.coarse,
                                          min_cells_per_zone=spec.min_cells_per_zone, source=spec.path.name))
    return loaded


def _cells_frame(catalog: CellCatalog) -> pl.DataFrame:
    return pl.DataFrame({"cell_id": list(catalog.cell_ids), "lat": catalog.lat, "lon": catalog.lon})
