"""One window's aggregates as files every worker maps read-only: the serving half of the store.

A window version is a directory ``windows/<k>/w-<id>/`` (see dpflows.aggregates for the whole
layout) written once and never changed::

    window.json        window, first_day, days, cells (the catalog's sha256 its cell indexes refer
                       to), per measure the file, its rows and its slot offsets, and the sha256 of
                       every file of the directory (the dataset's metadata holds window.json's)
    trips.arrow        origin: i32, dest: i32, count: i32     rows of slot s = day·24 + hour of the
    presence.arrow     cell: i32, count: i32                  window at [offsets[s], offsets[s+1])
    residents.arrow    place: i8 (0 home, 1 work), cell: i32, count: i32      (datasets with places)
    commuting.arrow    home: i32, work: i32, count: i32                       (datasets with places)
    *.parquet          the same counts in the interchange schema (day, hour, cell ids as strings)
                       for other tools; the service never reads them

The ``.arrow`` files are uncompressed Arrow IPC with one record batch: mapped with mmap, their
columns are numpy views of the page cache, so the kernel holds one copy of a window whatever
the number of workers, and a query reads only the slots (days and hours) it asks for. Cell
columns are indexes into the dataset's sorted cell catalog (dpflows.cells.CellCatalog).
Counts are after bounding; a count never exceeds 2^31 - 1 (checked when written).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import mmap
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from dpflows.dataset_metadata import COMMUTING_SCHEMA, PLACES, PRESENCE_SCHEMA, RESIDENTS_SCHEMA, TRIPS_SCHEMA
from dpflows.errors import DataUnavailable, InvalidData

WINDOW_FILE = "window.json"
HOURS = 24
#: Columns of the mapped files, in order; the day and hour of a row are its slot's.
SLOT_COLUMNS = {"trips": ("origin", "dest", "count"), "presence": ("cell", "count")}
PLACE_COLUMNS = {"residents": ("place", "cell", "count"), "commuting": ("home", "work", "count")}
COLUMN_TYPES = {"origin": pa.int32(), "dest": pa.int32(), "cell": pa.int32(), "home": pa.int32(),
                "work": pa.int32(), "place": pa.int8(), "count": pa.int32()}
INTERCHANGE_SCHEMAS = {"trips": TRIPS_SCHEMA, "presence": PRESENCE_SCHEMA, "residents": RESIDENTS_SCHEMA,
                       "commuting": COMMUTING_SCHEMA}
_MAX_COUNT = 2**31 - 1


@dataclass(frozen=True)
class SlotTable:
    """One measure of one window: rows sorted by (day, hour), the rows of slot s at [offsets[s], offsets[s+1])."""

    offsets: np.ndarray  # int64, days·24 + 1 values, non-decreasing, offsets[0] = 0
    columns: dict[str, np.ndarray]  # read-only views of a mapped file (or arrays built from Parquet)

    @property
    def rows(self) -> int:
        return int(self.offsets[-1])


@dataclass(frozen=True)
class PlaceTable:
    """Residents or commuting of one window (each person-window counts at most once per place)."""

    columns: dict[str, np.ndarray]


@dataclass(frozen=True)
class WindowData:
    """One window version's counts, ready to slice; `mapped_bytes` is 0 for counts read into memory."""

    window: int
    version: str
    first_day: dt.date
    days: int
    trips: SlotTable
    presence: SlotTable
    residents: PlaceTable | None
    commuting: PlaceTable | None
    mapped_bytes: int = 0

    def slots(self, measure: str) -> SlotTable:
        return self.trips if measure == "trips" else self.presence

    def places(self, measure: str) -> PlaceTable:
        table = self.residents if measure == "residents" else self.commuting
        assert table is not None, "checked by queries: datasets without places refuse residents and commuting"
        return table


def file_digest(raw: bytes | mmap.mmap) -> str:
    return hashlib.sha256(raw).hexdigest()


# -- writing ------------------------------------------------------------------------------------

def slot_frame(frame: pl.DataFrame, first_day: dt.date, cell_index: pl.DataFrame, cell_cols: list[str]) -> pl.DataFrame:
    """Interchange rows of one window → (slot, cell indexes..., count) sorted by slot then cells."""
    out = frame.filter(pl.col("count") != 0).select(
        ((pl.col("day") - pl.lit(first_day)).dt.total_days() * HOURS + pl.col("hour").cast(pl.Int64)).alias("slot"),
        *cell_cols, "count")
    return _indexed(out, cell_index, cell_cols).sort(["slot", *cell_cols])


def _indexed(frame: pl.DataFrame, cell_index: pl.DataFrame, cell_cols: list[str]) -> pl.DataFrame:
    """Replace each cell id column by its catalog index; a cell outside the catalog is an ingestion bug."""
    for col in cell_cols:
        frame = frame.join(cell_index.rename({"cell_id": col, "index": f"_{col}"}), on=col, how="left",
                           maintain_order="left")
        if frame[f"_{col}"].null_count():
            raise InvalidData(f"aggregate column {col!r} names cells missing from the cell catalog; every cell must "
                              "be listed in --cells")
        frame = frame.drop(col).rename({f"_{col}": col})
    return frame


def write_window(parent: Path, window: int, version: str, first_day: dt.date, days: int, cells_digest: str,
                 cell_index: pl.DataFrame, frames: dict[str, pl.DataFrame]) -> str:
    """Write window version `version` under `parent` (renamed into place whole); returns window.json's sha256.

    `frames` holds this window's rows of each measure in the interchange schema (trips, presence
    and, for datasets with places, residents and commuting); `cell_index` maps cell_id → index.
    """
    tmp = parent / f".tmp-{version}"
    tmp.mkdir(mode=0o700, parents=True)
    doc: dict[str, Any] = {"window": window, "first_day": first_day.isoformat(), "days": days,
                           "cells": cells_digest, "measures": {}, "files": {}}
    for measure, frame in frames.items():
        schema = INTERCHANGE_SCHEMAS[measure]
        frame = frame.select([pl.col(c).cast(t) for c, t in schema.items()])
        frame.sort(list(schema)).write_parquet(tmp / f"{measure}.parquet")
        if measure in SLOT_COLUMNS:
            cell_cols = [c for c in SLOT_COLUMNS[measure] if c != "count"]
            slotted = slot_frame(frame, first_day, cell_index, cell_cols)
            slots = slotted["slot"].to_numpy()
            offsets = np.searchsorted(slots, np.arange(days * HOURS + 1), side="left")
            doc["measures"][measure] = {"file": f"{measure}.arrow", "rows": len(slotted),
                                        "slot_offsets": offsets.tolist()}
            _write_ipc(tmp / f"{measure}.arrow", slotted, SLOT_COLUMNS[measure])
        else:
            cell_cols = [c for c in PLACE_COLUMNS[measure] if c not in ("place", "count")]
            placed = frame.filter(pl.col("count") != 0)
            if measure == "residents":
                placed = placed.with_columns((pl.col("place") == PLACES[1]).cast(pl.Int8))
            placed = _indexed(placed, cell_index, cell_cols).sort(list(PLACE_COLUMNS[measure][:-1]))
            doc["measures"][measure] = {"file": f"{measure}.arrow", "rows": len(placed)}
            _write_ipc(tmp / f"{measure}.arrow", placed, PLACE_COLUMNS[measure])
    for written in sorted(tmp.iterdir()):
        doc["files"][written.name] = file_digest(written.read_bytes())
        written.chmod(0o600)  # the service's own user reads them; nobody else needs to
    raw = json.dumps(doc, indent=1).encode()
    (tmp / WINDOW_FILE).write_bytes(raw)
    (tmp / WINDOW_FILE).chmod(0o600)
    _fsync_dir_files(tmp)
    tmp.rename(parent / version)
    return file_digest(raw)


def _write_ipc(path: Path, frame: pl.DataFrame, columns: tuple[str, ...]) -> None:
    """Uncompressed Arrow IPC, one record batch, so that every column maps as one numpy view."""
    counts = frame["count"]
    if len(counts) and (counts.max() > _MAX_COUNT or counts.min() < 0):  # type: ignore[operator]
        raise InvalidData("an aggregate count is negative or above 2^31 - 1; aggregates hold bounded counts only")
    arrays = [pa.array(frame[c].to_numpy().astype(COLUMN_TYPES[c].to_pandas_dtype(), copy=False)) for c in columns]
    table = pa.Table.from_arrays(arrays, names=list(columns))  # one chunk per column: one batch
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)


def _fsync_dir_files(directory: Path) -> None:
    """Flush a window's files before it is renamed into place: a crash never leaves a named, torn window."""
    for path in directory.iterdir():
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# -- reading ------------------------------------------------------------------------------------

def open_window(wdir: Path, digest: str, *, window: int, dataset: str, cells_digest: str, n_cells: int,
                has_places: bool) -> WindowData:
    """Map one window version read-only, after checking every file against the hashes that name it."""
    where = f"window {window} of dataset {dataset!r}"
    try:
        raw = (wdir / WINDOW_FILE).read_bytes()
    except FileNotFoundError:
        raise DataUnavailable(f"{where} is missing its files ({WINDOW_FILE}); re-run ingestion") from None
    if file_digest(raw) != digest:
        raise DataUnavailable(f"{WINDOW_FILE} of {where} does not belong to its metadata.json (content hash "
                              "differs); re-run ingestion")
    try:
        doc = json.loads(raw)
        first_day, days = dt.date.fromisoformat(doc["first_day"]), int(doc["days"])
        measures, files = dict(doc["measures"]), {str(k): str(v) for k, v in doc["files"].items()}
    except (ValueError, KeyError, TypeError) as exc:
        raise DataUnavailable(f"{WINDOW_FILE} of {where} is corrupt; re-run ingestion") from exc
    if doc.get("window") != window or doc.get("cells") != cells_digest:
        raise DataUnavailable(f"{where} was written for another window or cell catalog; re-run ingestion")
    mapped = 0
    slot_tables: dict[str, SlotTable] = {}
    place_tables: dict[str, PlaceTable] = {}
    wanted = [*SLOT_COLUMNS, *(PLACE_COLUMNS if has_places else ())]
    for measure in wanted:
        name = f"{measure}.arrow"
        if measure not in measures or name not in files:
            raise DataUnavailable(f"{where} lacks {name}; re-run ingestion")
        columns, size = _map_checked(wdir / name, files[name], where, (SLOT_COLUMNS | PLACE_COLUMNS)[measure])
        mapped += size
        _check_columns(columns, n_cells, where, name)
        if measure in SLOT_COLUMNS:
            offsets = np.asarray(measures[measure].get("slot_offsets", []), dtype=np.int64)
            rows = len(columns["count"])
            if (len(offsets) != days * HOURS + 1 or offsets[0] != 0 or offsets[-1] != rows
                    or (np.diff(offsets) < 0).any()):
                raise DataUnavailable(f"{name} of {where} has slot offsets that do not fit its rows; re-run ingestion")
            slot_tables[measure] = SlotTable(offsets, columns)
        else:
            place_tables[measure] = PlaceTable(columns)
    return WindowData(window, wdir.name, first_day, days, slot_tables["trips"], slot_tables["presence"],
                      place_tables.get("residents"), place_tables.get("commuting"), mapped)


def _map_checked(path: Path, digest: str, where: str, names: tuple[str, ...]) -> tuple[dict[str, np.ndarray], int]:
    """The file's columns as read-only numpy views of a shared mapping, if its sha256 is the recorded one."""
    try:
        with open(path, "rb") as handle:
            mapping = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
    except FileNotFoundError:
        raise DataUnavailable(f"aggregate file {path.name} is missing from {where}; re-run ingestion") from None
    except ValueError:  # an empty file cannot be mapped
        raise DataUnavailable(f"aggregate file {path.name} of {where} cannot be read; re-run ingestion") from None
    if file_digest(mapping) != digest:
        raise DataUnavailable(f"aggregate file {path.name} of {where} does not belong to its metadata.json "
                              "(content hash differs); re-run ingestion")
    try:
        reader = pa.ipc.open_file(pa.py_buffer(mapping))
        schema_ok = reader.schema.names == list(names) and all(
            reader.schema.field(n).type == COLUMN_TYPES[n] for n in names)
        if not schema_ok or reader.num_record_batches > 1:
            raise ValueError("unexpected layout")
        if reader.num_record_batches == 0:
            return {n: np.zeros(0, dtype=COLUMN_TYPES[n].to_pandas_dtype()) for n in names}, len(mapping)
        batch = reader.get_batch(0)
        return {n: batch.column(i).to_numpy(zero_copy_only=True) for i, n in enumerate(names)}, len(mapping)
    except (pa.ArrowException, ValueError) as exc:
        raise DataUnavailable(f"aggregate file {path.name} of {where} cannot be read; re-run ingestion") from exc


def _check_columns(columns: dict[str, np.ndarray], n_cells: int, where: str, name: str) -> None:
    """Cell indexes inside the catalog, counts positive, places 0 or 1: checked once per mapping."""
    for col, values in columns.items():
        if not len(values):
            continue
        low, high = int(values.min()), int(values.max())
        bad = ((col == "count" and low < 1) or (col == "place" and (low < 0 or high > 1))
               or (col not in ("count", "place") and (low < 0 or high >= n_cells)))
        if bad:
            raise DataUnavailable(f"{name} of {where} has values of {col!r} outside their range; re-run ingestion")


def read_interchange(wdir: Path, measure: str) -> pl.LazyFrame:
    """One window's interchange Parquet (for tools and tests; the service never reads it)."""
    return pl.scan_parquet(wdir / f"{measure}.parquet")

