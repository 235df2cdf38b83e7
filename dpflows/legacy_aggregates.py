"""Datasets written before window files (format 1): whole-dataset Parquet, read into this process's memory.

Two layouts are still served as they are: versioned (``versions/V/{trips,presence,...}.parquet``
with sha256 hashes in ``metadata.json``) and the older one (the same files beside
``metadata.json``, no hashes). Parquet is decoded into each worker's private memory, all of it
at the first use, then cut into the same per-window slot tables the mapped layout gives
(dpflows.window_files), so queries have one code path. The service never converts them (it
never writes aggregates): `dpflows admin upgrade-dataset` writes a mapped version of one.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from dpflows.aggregate_versions import (
    VERSIONS_DIR,
    _file_digest,
    _remove_old_versions,
    _version,
    _write_version,
    switch_current,
    version_dir,
    writer_lock,
)
from dpflows.cells import CellCatalog
from dpflows.dataset_metadata import (
    CELLS_SCHEMA,
    COMMUTING_SCHEMA,
    PLACES,
    PRESENCE_SCHEMA,
    RESIDENTS_SCHEMA,
    TRIPS_SCHEMA,
    DatasetMetadata,
)
from dpflows.errors import DataUnavailable, InvalidData, InvalidInput
from dpflows.window_files import HOURS, PlaceTable, SlotTable, WindowData


def read_parquet(path: Path, schema: dict[str, Any], digest: str | None = None) -> pl.DataFrame:
    """One aggregate file, checked against the digest its metadata recorded (when it has one)."""
    dataset = _dataset_name_of(path)
    if not path.exists():
        raise DataUnavailable(f"aggregate file {path.name} is missing from dataset {dataset!r}; re-run ingestion")
    raw = path.read_bytes()
    if digest is not None and _file_digest(raw) != digest:
        raise DataUnavailable(
            f"aggregate file {path.name} of dataset {dataset!r} does not belong to its metadata.json (content "
            "hash differs); re-run ingestion"
        )
    try:
        frame = pl.read_parquet(io.BytesIO(raw))
    except Exception as exc:  # polars raises several types for a corrupt file
        raise DataUnavailable(
            f"aggregate file {path.name} of dataset {dataset!r} cannot be read; re-run ingestion"
        ) from exc
    missing = [c for c in schema if c not in frame.columns]
    if missing:
        raise DataUnavailable(
            f"aggregate file {path.name} of dataset {dataset!r} lacks columns {missing}; re-run ingestion"
        )
    try:
        return frame.select([pl.col(c).cast(t, strict=True) for c, t in schema.items()])
    except Exception as exc:
        raise DataUnavailable(
            f"aggregate file {path.name} of dataset {dataset!r} has columns of the wrong type; re-run ingestion"
        ) from exc


def _dataset_name_of(path: Path) -> str:
    """The dataset a file belongs to, for messages: the folder above versions/ when versioned."""
    parent = path.parent
    return parent.parent.parent.name if parent.parent.name == VERSIONS_DIR else parent.name


def _cell_indexes(frame: pl.DataFrame, catalog: CellCatalog, cell_cols: list[str], name: str,
                  meta: DatasetMetadata) -> list[np.ndarray]:
    """Each cell column as int32 catalog indexes; a cell missing from the catalog fails the load."""
    lookup = pl.DataFrame({"_cell": list(catalog.cell_ids), "_idx": np.arange(len(catalog), dtype=np.int32)})
    indexed = []
    for col in cell_cols:
        joined = frame.select(pl.col(col).alias("_cell")).join(
            lookup, on="_cell", how="left", maintain_order="left"
        )
        if joined["_idx"].null_count():
            raise DataUnavailable(f"{name}.parquet of dataset {meta.name!r} names cells missing from cells.parquet")
        indexed.append(joined["_idx"].to_numpy())
    return indexed


def _slot_tables(frame: pl.DataFrame, meta: DatasetMetadata, catalog: CellCatalog,
                 cell_cols: list[str]) -> dict[int, SlotTable]:
    """One measure cut into per-window slot tables (rows sorted by day and hour, offsets per slot)."""
    name = "trips" if len(cell_cols) == 2 else "presence"
    frame = frame.filter(pl.col("count") != 0)
    days = frame.select((pl.col("day") - pl.lit(meta.first_day)).dt.total_days())["day"].to_numpy().astype(np.int64)
    hours = frame["hour"].to_numpy().astype(np.int64)
    counts = frame["count"].to_numpy().astype(np.int64)
    span = (meta.end_day - meta.first_day).days
    if len(days) and (days.min() < 0 or days.max() >= span):
        raise DataUnavailable(f"{name}.parquet of dataset {meta.name!r} has days outside the metadata's time span")
    if len(hours) and (hours.min() < 0 or hours.max() > 23):
        raise DataUnavailable(f"{name}.parquet of dataset {meta.name!r} has hours outside 0..23")
    if len(counts) and counts.min() < 0:
        raise DataUnavailable(f"{name}.parquet of dataset {meta.name!r} has negative counts")
    cells = _cell_indexes(frame, catalog, cell_cols, name, meta)
    slot = days * HOURS + hours
    order = np.argsort(slot, kind="stable")
    slot, counts, cells = slot[order], counts[order], [c[order] for c in cells]
    tables = {}
    for w in range(meta.window_count):
        first_slot = w * meta.window_days * HOURS
        days_in = _days_in(meta, w)
        bounds = np.searchsorted(slot, first_slot + np.arange(days_in * HOURS + 1), side="left")
        lo, hi = int(bounds[0]), int(bounds[-1])
        columns = {col: values[lo:hi] for col, values in zip(cell_cols, cells, strict=True)}
        columns["count"] = counts[lo:hi]
        tables[w] = SlotTable((bounds - lo).astype(np.int64), columns)
    return tables


def _days_in(meta: DatasetMetadata, window: int) -> int:
    return (min(meta.window_start(window + 1), meta.end_day) - meta.window_start(window)).days


def _place_tables(frame: pl.DataFrame, meta: DatasetMetadata, catalog: CellCatalog, name: str,
                  cell_cols: list[str]) -> dict[int, PlaceTable]:
    frame = frame.filter(pl.col("count") != 0)
    windows = frame["window"].to_numpy().astype(np.int64)
    counts = frame["count"].to_numpy().astype(np.int64)
    if len(windows) and (windows.min() < 0 or windows.max() >= meta.window_count):
        raise DataUnavailable(f"{name}.parquet of dataset {meta.name!r} has windows outside the metadata's time span")
    if len(counts) and counts.min() < 0:
        raise DataUnavailable(f"{name}.parquet of dataset {meta.name!r} has negative counts")
    columns: dict[str, np.ndarray] = {}
    if name == "residents":
        if not frame["place"].is_in(list(PLACES)).all():
            raise DataUnavailable(f"residents.parquet of dataset {meta.name!r} has places other than {list(PLACES)}")
        columns["place"] = (frame["place"] == PLACES[1]).cast(pl.Int8).to_numpy()
    columns |= dict(zip(cell_cols, _cell_indexes(frame, catalog, cell_cols, name, meta), strict=True))
    columns["count"] = counts
    return {w: PlaceTable({c: v[windows == w] for c, v in columns.items()}) for w in range(meta.window_count)}


def read_legacy_windows(vdir: Path, meta: DatasetMetadata, catalog: CellCatalog,
                        digests: dict[str, str]) -> dict[int, WindowData]:
    """Every window of a format-1 dataset, read whole into memory (checked as it always was)."""
    trips = _slot_tables(read_parquet(vdir / "trips.parquet", TRIPS_SCHEMA, digests.get("trips.parquet")),
                         meta, catalog, ["origin", "dest"])
    presence = _slot_tables(read_parquet(vdir / "presence.parquet", PRESENCE_SCHEMA,
                                         digests.get("presence.parquet")), meta, catalog, ["cell"])
    residents: dict[int, PlaceTable] = {}
    commuting: dict[int, PlaceTable] = {}
    if meta.places is not None:
        residents = _place_tables(read_parquet(vdir / "residents.parquet", RESIDENTS_SCHEMA,
                                               digests.get("residents.parquet")), meta, catalog, "residents", ["cell"])
        commuting = _place_tables(read_parquet(vdir / "commuting.parquet", COMMUTING_SCHEMA,
                                               digests.get("commuting.parquet")), meta, catalog, "commuting",
                                  ["home", "work"])
    return {w: WindowData(w, vdir.name, meta.window_start(w), _days_in(meta, w), trips[w], presence[w],
                          residents.get(w), commuting.get(w))
            for w in range(meta.window_count)}


def upgrade_dataset(dataset_dir: str | Path) -> Path:
    """Write a format-1 dataset's served version again as window files, and switch to it atomically.

    The counts, bounds, rules and zonings stay as they are; so do the bounding reports' charge
    keys (``bounding_report_key``), so a report paid for before is never charged again, and every
    window's answers stay under the format-1 digest (its ``reuse`` version), so answers stored
    before are still reused. Run it offline or beside running workers: they switch at their
    next request. Refused for a dataset already in window files.
    """
    root = Path(dataset_dir)
    with writer_lock(root):
        vdir = version_dir(root)
        try:
            raw = (vdir / "metadata.json").read_bytes()
            doc = json.loads(raw)
            meta = DatasetMetadata.from_json(doc)
        except (OSError, ValueError, KeyError, TypeError, InvalidData) as exc:
            raise DataUnavailable(f"metadata.json of dataset {root.name!r} is missing or corrupt") from exc
        if "windows" in doc:
            raise InvalidInput(f"dataset {root.name!r} is already stored as window files; nothing to upgrade",
                               field="dataset")
        digests = {str(k): str(v) for k, v in doc.get("files", {}).items()}
        schemas = {"trips": TRIPS_SCHEMA, "presence": PRESENCE_SCHEMA, "residents": RESIDENTS_SCHEMA,
                   "commuting": COMMUTING_SCHEMA}
        frames: dict[str, pl.DataFrame | pl.LazyFrame] = {
            name: read_parquet(vdir / f"{name}.parquet", schemas[name], digests.get(f"{name}.parquet"))
            for name in ("trips", "presence", *(("residents", "commuting") if meta.places is not None else ()))}
        cells = read_parquet(vdir / "cells.parquet", CELLS_SCHEMA, digests.get("cells.parquet"))
        extra = {k: doc[k] for k in ("bounding_report", "earlier_reports") if k in doc}
        if "bounding_report" in doc:
            extra["bounding_report_key"] = doc.get("bounding_report_key", _version(raw))
        extra["upgraded_from"] = _version(raw)
        # answers stored for this format-1 version stay found: each window is stored under its digest
        final, written = _write_version(root, meta, cells, frames, range(meta.window_count), {}, extra,
                                        reuse=_version(raw))
        previous = vdir.name if vdir != root else ""
        switch_current(root, final, written)
        _remove_old_versions(root, keep={final.name, previous})
    return root
