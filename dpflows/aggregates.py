"""The aggregate store: bounded counts as Parquet plus a metadata file, loaded once per process.

This is the contract between ingestion (which writes) and the query path (which reads). Raw
events never reach this module. A dataset directory ``<root>/datasets/<name>/`` holds::

    CURRENT            the name of the version being served; replaced atomically (os.replace)
    versions/V/        one immutable ingestion, written whole before CURRENT names it:
      metadata.json      format_version, name, first_day, end_day (exclusive, both declared by
                         the admin, never measured from events), window_days, bounds
                         {"trips": L_trips, "presence": L_presence}, trip_rule, presence_rule,
                         accounting, files {file: sha256} (checked by the loader), optionally
                         places (the home/work rule), bounding_report (noisy) and
                         earlier_reports (to be paid for)
      cells.parquet      cell_id: str, lat: f64, lon: f64          (public catalog)
      trips.parquet      day: date, hour: i8, origin: str, dest: str, count: i64
      presence.parquet   day: date, hour: i8, cell: str, count: i64
      residents.parquet  window: i32, place: str ("home" | "work"), cell: str, count: i64   (with places)
      commuting.parquet  window: i32, home: str, work: str, count: i64                     (with places)
    zonings/NAME.json  public zonings of this dataset's cells (see cells.py), shared by versions

A re-ingestion writes a new version and then swaps CURRENT, so a loader sees the old version or
the new one, never the new counts under the old bounds; the file hashes in the metadata make a
mixed read fail loudly instead. A dataset keeps its window grid (first day, window length) and
its accounting for life: the ledger's spending is per window index, which only the same grid
keeps meaning the same person-window (`check_same_grid`). Datasets written before versions
(files directly in the dataset directory) are still read, without hashes.

Counts are *after* per person-window bounding; the bounds are the ℓ1 sensitivities the
noise is calibrated to. No source row counts are stored: they would be exact counts.

`presence_rule` says what a presence record is: ``one_place_per_person_hour`` (ingestion since
issue 14: at most one record per person and (day, hour), so a query over S day-hour slots of a
window has ℓ1 sensitivity min(L_presence, S), see dpflows.slots) or ``cells_per_person_hour``
(datasets written before, read without the field: every cell of a person-hour, sensitivity
L_presence). Residents and commuting count at most one home and one work cell per
person-window (`PlaceRule`), so each person adds at most 1 per window to residents of one
place and 1 to commuting: sensitivity 1. Datasets written before them have no `places` and no
such files; `Dataset.residents` and `Dataset.commuting` are then None.

Datasets live under ``<root>/datasets/<name>/``. The root is a local path here; any path
Polars reads (an object-store URL with fsspec credentials) works for the Parquet files, see
the README's deployment section.
"""

from __future__ import annotations

import io
import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from dpflows.aggregate_versions import (
    CURRENT_FILE,
    VERSIONS_DIR,
    _file_digest,
    _version,
    check_same_grid,
    report_charges,
    version_dir,
    write_aggregates,
)
from dpflows.cells import CELL_ZONING, CellCatalog, Zoning, check_name, load_zoning, save_zoning
from dpflows.contribution_report import BoundingReport, ReportCharge
from dpflows.dataset_metadata import (
    AGGREGATE_FILES,
    CELLS_PER_PERSON_HOUR,
    CELLS_SCHEMA,
    COMMUTING_SCHEMA,
    DEFAULT_DELTA,
    DEFAULT_DENSE_LIMIT,
    FORMAT_VERSION,
    MEASURES,
    NO_PRESENCE,
    ONE_PLACE_PER_PERSON_HOUR,
    PERSON_WINDOW,
    PLACE_FILES,
    PLACE_MEASURES,
    PLACES,
    PRESENCE_RULES,
    PRESENCE_SCHEMA,
    RESIDENTS_SCHEMA,
    TRIP,
    TRIPS_SCHEMA,
    UNITS,
    DatasetMetadata,
    PlaceRule,
)
from dpflows.errors import DataUnavailable, InvalidData, NotFound

__all__ = [  # the metadata and the writer are re-exported: this module is the store's one front door
    "AGGREGATE_FILES", "CELLS_PER_PERSON_HOUR", "CELLS_SCHEMA", "COMMUTING_SCHEMA", "CURRENT_FILE", "DEFAULT_DELTA",
    "DEFAULT_DENSE_LIMIT",
    "FORMAT_VERSION", "MEASURES", "NO_PRESENCE", "ONE_PLACE_PER_PERSON_HOUR", "PERSON_WINDOW", "PLACES",
    "PLACE_FILES", "PLACE_MEASURES", "PRESENCE_RULES", "PRESENCE_SCHEMA", "RESIDENTS_SCHEMA", "TRIP", "TRIPS_SCHEMA",
    "UNITS", "VERSIONS_DIR", "AggregateStore", "CommutingArrays", "Dataset", "DatasetMetadata", "MeasureArrays",
    "PlaceRule", "ResidentArrays", "check_same_grid", "load_dataset", "report_charges", "version_dir",
    "write_aggregates",
]


@dataclass(frozen=True)
class MeasureArrays:
    """One measure's aggregates as parallel arrays: dense, ready for masking and bincount."""

    day: np.ndarray  # int32 days since first_day
    hour: np.ndarray  # int8 0..23
    weekday: np.ndarray  # int8 0=Monday
    origin: np.ndarray  # int64 cell index (for presence: the cell)
    dest: np.ndarray | None  # int64 cell index (trips only)
    count: np.ndarray  # int64


@dataclass(frozen=True)
class ResidentArrays:
    """Residents as parallel arrays: persons whose home (or work) cell of a window is `cell`."""

    window: np.ndarray  # int32 window index
    place: np.ndarray  # int8 index into PLACES: 0 home, 1 work
    cell: np.ndarray  # int64 cell index
    count: np.ndarray  # int64, each person-window at most 1 per place


@dataclass(frozen=True)
class CommutingArrays:
    """Home cell → work cell per window as parallel arrays; each person-window counts at most once."""

    window: np.ndarray  # int32 window index
    home: np.ndarray  # int64 cell index
    work: np.ndarray  # int64 cell index
    count: np.ndarray  # int64


@dataclass
class Dataset:
    """A loaded dataset: metadata, public geography and bounded counts."""

    path: Path
    metadata: DatasetMetadata
    catalog: CellCatalog
    trips: MeasureArrays
    presence: MeasureArrays
    zonings: dict[str, Zoning]
    #: digest of metadata.json: changes with every ingestion, part of every answer-reuse key
    version: str = ""
    #: the noisy bounding report of this ingestion, if it made one
    bounding_report: BoundingReport | None = None
    #: reports (this one's and earlier ones') to be charged before anything of it is served
    report_charges: tuple[ReportCharge, ...] = ()
    #: the version directory the counts were read from (`path` itself for the old layout)
    version_path: Path | None = None
    #: one home and one work cell per person-window, counted; None in datasets written before them
    residents: ResidentArrays | None = None
    commuting: CommutingArrays | None = None

    def zoning(self, name: str) -> Zoning:
        """A zoning by name; one added by another worker or host is picked up from disk."""
        if name in self.zonings:
            return self.zonings[name]
        zpath = self.path / "zonings" / f"{check_name(name, field='zoning')}.json"
        if zpath.exists():
            self.zonings[name] = load_zoning(zpath, self.catalog)
            return self.zonings[name]
        raise NotFound(
                f"zoning={name!r} does not exist for dataset {self.metadata.name!r}; "
                f"use one of {sorted(self.zonings)}",
                field="zoning",
            )

    def measure(self, name: str) -> MeasureArrays:
        return self.trips if name == "trips" else self.presence

    def add_zoning(self, zoning: Zoning) -> None:
        save_zoning(zoning, self.catalog, self.path / "zonings" / f"{zoning.name}.json")
        self.zonings[zoning.name] = zoning


def _read_parquet(path: Path, schema: dict[str, Any], digest: str | None = None) -> pl.DataFrame:
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
    """Each cell column as int64 catalog indexes; a cell missing from the catalog fails the load."""
    lookup = pl.DataFrame({"_cell": list(catalog.cell_ids), "_idx": np.arange(len(catalog), dtype=np.int64)})
    indexed = []
    for col in cell_cols:
        joined = frame.select(pl.col(col).alias("_cell")).join(
            lookup, on="_cell", how="left", maintain_order="left"
        )
        if joined["_idx"].null_count():
            raise DataUnavailable(f"{name}.parquet of dataset {meta.name!r} names cells missing from cells.parquet")
        indexed.append(joined["_idx"].to_numpy())
    return indexed


def _measure_arrays(
    frame: pl.DataFrame, meta: DatasetMetadata, catalog: CellCatalog, cell_cols: list[str]
) -> MeasureArrays:
    name = "trips" if len(cell_cols) == 2 else "presence"
    frame = frame.filter(pl.col("count") != 0)
    indexed = _cell_indexes(frame, catalog, cell_cols, name, meta)
    since_first = frame.select((pl.col("day") - pl.lit(meta.first_day)).dt.total_days())["day"]
    days = since_first.to_numpy().astype(np.int32)
    span = (meta.end_day - meta.first_day).days
    hours = frame["hour"].to_numpy().astype(np.int8)
    counts = frame["count"].to_numpy().astype(np.int64)
    if len(days) and (days.min() < 0 or days.max() >= span):
        raise DataUnavailable(f"{name}.parquet of dataset {meta.name!r} has days outside the metadata's time span")
    if len(hours) and (hours.min() < 0 or hours.max() > 23):
        raise DataUnavailable(f"{name}.parquet of dataset {meta.name!r} has hours outside 0..23")
    if len(counts) and counts.min() < 0:
        raise DataUnavailable(f"{name}.parquet of dataset {meta.name!r} has negative counts")
    weekday = ((days + meta.first_day.weekday()) % 7).astype(np.int8)
    return MeasureArrays(
        day=days, hour=hours, weekday=weekday,
        origin=indexed[0], dest=indexed[1] if len(indexed) > 1 else None, count=counts,
    )


def _window_counts(frame: pl.DataFrame, meta: DatasetMetadata, name: str) -> tuple[np.ndarray, np.ndarray]:
    """The window and count columns of a place measure, checked like the day and count of the others."""
    windows = frame["window"].to_numpy().astype(np.int32)
    counts = frame["count"].to_numpy().astype(np.int64)
    if len(windows) and (windows.min() < 0 or windows.max() >= meta.window_count):
        raise DataUnavailable(f"{name}.parquet of dataset {meta.name!r} has windows outside the metadata's time span")
    if len(counts) and counts.min() < 0:
        raise DataUnavailable(f"{name}.parquet of dataset {meta.name!r} has negative counts")
    return windows, counts


def _resident_arrays(frame: pl.DataFrame, meta: DatasetMetadata, catalog: CellCatalog) -> ResidentArrays:
    frame = frame.filter(pl.col("count") != 0)
    if not frame["place"].is_in(list(PLACES)).all():
        raise DataUnavailable(f"residents.parquet of dataset {meta.name!r} has places other than {list(PLACES)}")
    windows, counts = _window_counts(frame, meta, "residents")
    place = (frame["place"] == PLACES[1]).cast(pl.Int8).to_numpy()
    [cell] = _cell_indexes(frame, catalog, ["cell"], "residents", meta)
    return ResidentArrays(window=windows, place=place, cell=cell, count=counts)


def _commuting_arrays(frame: pl.DataFrame, meta: DatasetMetadata, catalog: CellCatalog) -> CommutingArrays:
    frame = frame.filter(pl.col("count") != 0)
    windows, counts = _window_counts(frame, meta, "commuting")
    home, work = _cell_indexes(frame, catalog, ["home", "work"], "commuting", meta)
    return CommutingArrays(window=windows, home=home, work=work, count=counts)


def load_dataset(path: str | Path) -> Dataset:
    """Load and check one dataset directory; a bad file fails here, never mid-query."""
    root = Path(path)
    vdir = version_dir(root)
    meta_path = vdir / "metadata.json"
    if not meta_path.exists():
        raise DataUnavailable(f"dataset {root.name!r} has no metadata.json; it is missing or ingestion did not finish")
    raw = meta_path.read_bytes()
    version = _version(raw)
    try:
        doc = json.loads(raw)
        metadata = DatasetMetadata.from_json(doc)
        report = BoundingReport.from_json(doc["bounding_report"]) if "bounding_report" in doc else None
        charges = tuple(report_charges(doc, version))
        digests = {str(k): str(v) for k, v in doc["files"].items()} if "files" in doc else {}
    except (ValueError, KeyError, TypeError, AttributeError, InvalidData) as exc:
        raise DataUnavailable(f"metadata.json of dataset {root.name!r} is corrupt; re-run ingestion") from exc
    if vdir != root and set(digests) != set(metadata.files):
        raise DataUnavailable(f"metadata.json of dataset {root.name!r} lacks its file hashes; re-run ingestion")
    cells = _read_parquet(vdir / "cells.parquet", CELLS_SCHEMA, digests.get("cells.parquet"))
    catalog = CellCatalog.from_columns(cells["cell_id"].to_list(), cells["lat"].to_list(), cells["lon"].to_list())
    trips_frame = _read_parquet(vdir / "trips.parquet", TRIPS_SCHEMA, digests.get("trips.parquet"))
    trips = _measure_arrays(trips_frame, metadata, catalog, ["origin", "dest"])
    presence = _measure_arrays(_read_parquet(vdir / "presence.parquet", PRESENCE_SCHEMA,
                                             digests.get("presence.parquet")), metadata, catalog, ["cell"])
    residents, commuting = None, None
    if metadata.places is not None:
        residents = _resident_arrays(_read_parquet(vdir / "residents.parquet", RESIDENTS_SCHEMA,
                                                   digests.get("residents.parquet")), metadata, catalog)
        commuting = _commuting_arrays(_read_parquet(vdir / "commuting.parquet", COMMUTING_SCHEMA,
                                                    digests.get("commuting.parquet")), metadata, catalog)
    zonings = {CELL_ZONING: Zoning.identity(catalog)}
    zdir = root / "zonings"
    if zdir.is_dir():
        for zpath in sorted(zdir.glob("*.json")):
            try:
                zoning = load_zoning(zpath, catalog)
            except (ValueError, KeyError, TypeError, InvalidData) as exc:
                raise DataUnavailable(f"zoning file {zpath.name} of dataset {root.name!r} is corrupt") from exc
            zonings[zoning.name] = zoning
    return Dataset(root, metadata, catalog, trips, presence, zonings, version, report, charges, vdir,
                   residents, commuting)


class AggregateStore:
    """Datasets under one root, each loaded once per version and process, then shared read-only.

    `get` reads the dataset's CURRENT pointer (a few bytes) on every call, so a re-ingestion is
    served by running workers without a restart, and a version is loaded whole before use.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self._loaded: dict[str, Dataset] = {}
        self._lock = threading.Lock()

    def dataset_dir(self, name: str) -> Path:
        return self.root / "datasets" / check_name(name, field="dataset")

    def names(self) -> list[str]:
        base = self.root / "datasets"
        if not base.is_dir():
            return []
        return sorted(p.name for p in base.iterdir()
                      if (p / CURRENT_FILE).exists() or (p / "metadata.json").exists())

    def metadata(self, name: str) -> DatasetMetadata:
        """The current version's metadata alone (public facts), without loading the aggregates."""
        vdir = version_dir(self.dataset_dir(name))
        try:
            return DatasetMetadata.from_json(json.loads((vdir / "metadata.json").read_bytes()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError, InvalidData) as exc:
            raise DataUnavailable(f"metadata.json of dataset {name!r} is missing or corrupt") from exc

    def get(self, name: str) -> Dataset:
        path = self.dataset_dir(name)
        with self._lock:
            if not path.exists():
                raise NotFound(f"dataset={name!r} does not exist; use one of {self.names()}", field="dataset")
            current = version_dir(path)
            loaded = self._loaded.get(name)
            if loaded is not None and loaded.version_path == current:
                return loaded
            dataset = load_dataset(path)
            if dataset.metadata.name != name:
                # Budgets, reports and reuse are all keyed by the name: one dataset, one name.
                raise DataUnavailable(
                    f"dataset folder {name!r} holds metadata named {dataset.metadata.name!r}; a dataset's name "
                    f"must be its folder's: re-ingest it with --name {name}"
                )
            self._loaded[name] = dataset
            return dataset

    def forget(self, name: str) -> None:
        """Drop a cached dataset so the next get() reloads it."""
        with self._lock:
            self._loaded.pop(name, None)
