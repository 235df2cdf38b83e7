"""The events as given: one file or several (daily files, CSV and Parquet alike), each read and named on its own.

    file 1 (person, timestamp, cell_id) ─┐   per file: columns, timestamps, late/held rows (appending)
    file 2 (person, timestamp, cell_id) ─┼─→ (person, timestamp, cell) of all files, one lazy frame
    ...                                  ┘

The files are concatenated only after each is read and parsed (a CSV's strings, a Parquet file's
types), so they may differ in format; checks that fail are then placed file by file, and every
message names one file and rows within it, counted from its own first data row. One file reads
exactly as before (the same lazy frame: the sorted path's speed is unchanged).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from dpflows.cells import CellCatalog
from dpflows.errors import InvalidData
from dpflows.ingest.appending import AppendPlan, drop_late_and_held_each
from dpflows.ingest.inputs import _indexed_events, _require_columns, _scan, _timestamps, row_count

EVENT_COLUMNS = ["person", "timestamp", "cell_id"]


@dataclass(frozen=True)
class EventFile:
    """One input file and its rows (person, timestamp, cell_id[, _row]) to check and ingest."""

    path: Path
    frame: pl.LazyFrame  # with a time zone or an append: parsed local times, late and held rows left out


def event_paths(paths: str | Path | Sequence[str | Path]) -> list[Path]:
    """The input files, in the order given; a file given twice would count its people twice."""
    files = [Path(paths)] if isinstance(paths, (str, Path)) else [Path(p) for p in paths]
    if not files:
        raise InvalidData("no events file given; name one or more files (CSV or Parquet)", field="path")
    seen: set[Path] = set()
    for path in files:
        key = path.resolve()
        if key in seen:
            raise InvalidData(f"{path.name}: given twice; each file's rows would be counted twice: name it once",
                              field="path")
        seen.add(key)
    return files


def describe(paths: Sequence[Path]) -> str:
    """The files' names for a progress line: all of a few, the first and last of many."""
    if len(paths) <= 3:
        return ", ".join(p.name for p in paths)
    return f"{len(paths)} files ({paths[0].name} ... {paths[-1].name})"


def read_event_files(paths: Sequence[Path], plan: AppendPlan | None, time_zone: str | None,
                     warn: Callable[[str], None]) -> list[EventFile]:
    """Each file scanned and its columns checked (nothing collected yet); with a time zone or an append, its
    times parsed to local wall times and, appending, the rows of served (late) or incomplete (held) windows
    left out, reported as shares of all files together. Rows keep their number in their file (`_row`)."""
    files = []
    for path in paths:
        frame = _scan(path)
        _require_columns(frame, path, EVENT_COLUMNS)
        frame = frame.select(EVENT_COLUMNS)
        if plan is not None or time_zone is not None:
            # parsed and filtered before the one-pass checks, so an unparseable time is refused (never dropped
            # as late) and the span is checked in local days; `_row` keeps the file's row numbers for messages
            frame = _timestamps(frame.with_row_index("_row", offset=1), path, "timestamp", time_zone)
        files.append(EventFile(path, frame))
    kept = drop_late_and_held_each([(f.path, f.frame) for f in files], plan, warn)
    return [EventFile(f.path, frame) for f, frame in zip(files, kept, strict=True)]


def indexed_events(files: Sequence[EventFile], catalog: CellCatalog) -> pl.LazyFrame:
    """(person, timestamp, cell index) of every file, as one lazy frame; null cell: not in the catalog.

    Several files are concatenated with their types reconciled: persons read as text from one file
    and as integers from another are compared as text (the same pseudonym is the same person), times
    to microseconds, and times with a zone as their wall times when another file's have none.
    """
    parts = [_indexed_events(f.frame, f.path, catalog) for f in files]
    if len(parts) == 1:
        return parts[0]
    types = [part.collect_schema()["timestamp"] for part in parts]
    zoned = [isinstance(t, pl.Datetime) and t.time_zone is not None for t in types]
    if len(set(types)) > 1 and any(zoned):
        parts = [part.with_columns(pl.col("timestamp").dt.replace_time_zone(None)) if z else part
                 for part, z in zip(parts, zoned, strict=True)]
    return pl.concat(parts, how="vertical_relaxed")


def count_rows(paths: Sequence[Path]) -> int:
    """Rows of all files (as read, before an append leaves any out); with several, each must hold rows."""
    total = 0
    for path in paths:
        rows = row_count(path, _scan(path))
        if rows == 0 and len(paths) > 1:
            raise InvalidData(f"{path.name}: no rows; remove it from the files given (a day without events is "
                              "declared missing with --days)", field="path")
        total += rows
    return total
