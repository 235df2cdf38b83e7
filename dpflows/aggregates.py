"""The aggregate store: bounded counts in window files every worker maps, plus a metadata file.

This is the contract between ingestion (which writes) and the query path (which reads). Raw
events never reach this module. A dataset directory ``<root>/datasets/<name>/`` holds::

    CURRENT            the name of the version being served; replaced atomically (os.replace)
    versions/V/        one version, written whole before CURRENT names it, never changed after:
      metadata.json      format_version (2), name, first_day, end_day (exclusive, both declared by
                         the admin, never measured from events), window_days, bounds
                         {"trips": L_trips, "presence": L_presence}, trip_rule, presence_rule,
                         accounting, files {"cells.parquet": sha256}, windows {k: {"version":
                         w-ID, "sha256": of its window.json}} (one entry per window of the span),
                         optionally places (the home/work rule), bounding_report (noisy) and
                         earlier_reports (to be paid for)
      cells.parquet      cell_id: str, lat: f64, lon: f64          (public catalog)
    windows/k/w-ID/    one version of window k, immutable, shared by every version naming it: its
                       counts as Arrow IPC files mapped read-only by every worker, and the same
                       counts as Parquet for other tools (dpflows.window_files)
    zonings/NAME.json  public zonings of this dataset's cells (see cells.py), shared by versions

A re-ingestion writes new window versions and a new version, then swaps CURRENT, so a query
sees the old version or the new one, never the new counts under the old bounds; the hashes
(cells and window.json in metadata.json, every file in window.json) make a mixed read fail
loudly instead. A dataset keeps its window grid (first day, window length) and its accounting
for life: the ledger's spending is per window index, which only the same grid keeps meaning
the same person-window (`check_same_grid`).

Serving memory: a version's metadata, cells and zonings are read per process (small); a
window's counts are mapped (and their hashes checked) the first time a query needs them, so
the page cache holds one copy whatever the number of workers, startup reads no counts, and a
query reads only the slots (day, hour) it asks for. Datasets written before window files
(format 1: ``versions/V/{trips,presence,residents,commuting}.parquet``, or the same files
directly in the dataset directory without hashes) are still served as they always were, read
whole into each process's memory (dpflows.legacy_aggregates); the service never converts them
(it never writes aggregates): `dpflows admin upgrade-dataset NAME` does, offline.

Counts are *after* per person-window bounding; the bounds are the ℓ1 sensitivities the
noise is calibrated to. No source row counts are stored: they would be exact counts.

`presence_rule` says what a presence record is: ``one_place_per_person_hour`` (ingestion since
issue 14: at most one record per person and (day, hour), so a query over S day-hour slots of a
window has ℓ1 sensitivity min(L_presence, S), see dpflows.slots) or ``cells_per_person_hour``
(datasets written before, read without the field: every cell of a person-hour, sensitivity
L_presence). Residents and commuting count at most one home and one work cell per
person-window (`PlaceRule`), so each person adds at most 1 per window to residents of one
place and 1 to commuting: sensitivity 1. Datasets written before them have no `places` and no
such files.

Datasets live under ``<root>/datasets/<name>/`` on a local or shared (NFS) filesystem: the
window files are memory-mapped.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from dpflows.aggregate_versions import (
    CURRENT_FILE,
    POINTER_READ_EVERY_S,
    VERSIONS_DIR,
    WINDOWS_DIR,
    _version,
    check_same_grid,
    pointer_stamp,
    read_interchange,
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
from dpflows.errors import DataUnavailable, DpflowsError, InvalidData, NotFound
from dpflows.legacy_aggregates import read_legacy_windows, read_parquet
from dpflows.window_files import HOURS, SLOT_COLUMNS, WindowData, open_window

__all__ = [  # the metadata and the writer are re-exported: this module is the store's one front door
    "AGGREGATE_FILES", "CELLS_PER_PERSON_HOUR", "CELLS_SCHEMA", "COMMUTING_SCHEMA", "CURRENT_FILE", "DEFAULT_DELTA",
    "DEFAULT_DENSE_LIMIT", "FORMAT_VERSION", "MAPPED", "MEASURES", "NO_PRESENCE", "ONE_PLACE_PER_PERSON_HOUR",
    "PARQUET_IN_MEMORY", "PERSON_WINDOW", "PLACES", "PLACE_FILES", "PLACE_MEASURES", "PRESENCE_RULES",
    "PRESENCE_SCHEMA", "RESIDENTS_SCHEMA", "TRIP", "TRIPS_SCHEMA", "UNITS", "VERSIONS_DIR", "AggregateStore",
    "Dataset", "DatasetMetadata", "PlaceRule", "WindowData", "check_same_grid", "load_dataset", "read_interchange",
    "report_charges", "version_dir", "write_aggregates",
]

#: How a dataset's counts are held: window files mapped read-only (shared by workers), or Parquet
#: of a format-1 dataset decoded into this process's memory.
log = logging.getLogger("dpflows.aggregates")
MAPPED = "mapped"
PARQUET_IN_MEMORY = "parquet-in-memory"


@dataclass(frozen=True)
class WindowRef:
    """Where one window version lives, the sha256 of its window.json, and the version its answers are stored
    under (its own name, or the format-1 digest it was converted from by upgrade-dataset)."""

    path: Path
    digest: str
    reuse: str


@dataclass
class Dataset:
    """A served version of a dataset: metadata, public geography, and its windows' counts (mapped on first use)."""

    path: Path
    metadata: DatasetMetadata
    catalog: CellCatalog
    zonings: dict[str, Zoning]
    #: digest of metadata.json: changes with every ingestion and append (answers are keyed by `data_version`)
    version: str = ""
    #: the noisy bounding report of this ingestion, if it made one
    bounding_report: BoundingReport | None = None
    #: reports (this one's and earlier ones') to be charged before anything of it is served
    report_charges: tuple[ReportCharge, ...] = ()
    #: the version directory the metadata was read from (`path` itself for the oldest layout)
    version_path: Path | None = None
    layout: str = MAPPED
    #: mapped layout: each window's version directory, mapped by `window()` when first needed
    window_refs: dict[int, WindowRef] = field(default_factory=dict)
    _windows: dict[int, WindowData] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)
    _window_locks: dict[int, threading.Lock] = field(default_factory=dict, repr=False, compare=False)
    cells_digest: str = ""
    #: windows whose counts were deleted (dpflows.retirement): queries touching them are refused
    retired: frozenset[int] = frozenset()
    #: (window, zoning name) -> (zoning, window data, each trip row's flow key): made after start by
    #: dpflows.counting.warm_flow_keys, never by a request
    flow_keys: dict[tuple[int, str], tuple[Zoning, WindowData, np.ndarray]] = field(
        default_factory=dict, repr=False, compare=False)

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

    def add_zoning(self, zoning: Zoning) -> None:
        save_zoning(zoning, self.catalog, self.path / "zonings" / f"{zoning.name}.json")
        self.zonings[zoning.name] = zoning

    def window(self, index: int) -> WindowData:
        """Window `index`'s counts: mapped and checked against its hashes once per process and window version."""
        loaded = self._windows.get(index)
        if loaded is not None:
            return loaded
        ref = self.window_refs.get(index)
        if ref is None:
            raise DataUnavailable(f"window {index} of dataset {self.metadata.name!r} is not in its metadata.json; "
                                  "re-run ingestion")
        with self._lock:  # one lock per window: mapping one never waits for another
            lock = self._window_locks.setdefault(index, threading.Lock())
        with lock:
            loaded = self._windows.get(index)
            if loaded is None:
                loaded = open_window(ref.path, ref.digest, window=index, dataset=self.metadata.name,
                                     cells_digest=self.cells_digest, n_cells=len(self.catalog),
                                     has_places=self.metadata.places is not None)
                self._windows[index] = loaded
        return loaded

    def data_version(self, windows: tuple[int, ...] | list[int]) -> str:
        """The version of the counts an answer over `windows` was computed from: part of its reuse key.

        Per window: an append leaves the served windows' versions (and so their stored answers and
        budgets) as they were. A format-1 dataset has one version for all (as before windows)."""
        if self.layout != MAPPED:
            return self.version
        return ",".join(dict.fromkeys(self.window_refs[w].reuse for w in windows))

    def mapped_windows(self) -> dict[int, WindowData]:
        """The windows this process holds now (mapped or in memory)."""
        return dict(self._windows)

    def frame(self, measure: str) -> pl.DataFrame:
        """Every window's counts of `measure` as one frame (window, day, hour or place, cell indexes, count):
        for tools and tests; it reads every window."""
        parts = []
        for w in range(self.metadata.window_count):
            if w in self.retired:
                continue
            data = self.window(w)
            if measure in SLOT_COLUMNS:
                table = data.slots(measure)
                slot = np.repeat(np.arange(len(table.offsets) - 1), np.diff(table.offsets))
                cols = {"window": np.full(table.rows, w, dtype=np.int32),
                        "day": (slot // HOURS + (data.first_day - self.metadata.first_day).days).astype(np.int32),
                        "hour": (slot % HOURS).astype(np.int8)}
                parts.append(pl.DataFrame(cols | {c: np.asarray(v) for c, v in table.columns.items()}))
            else:
                place = data.places(measure)
                n = len(place.columns["count"])
                parts.append(pl.DataFrame({"window": np.full(n, w, dtype=np.int32)}
                                          | {c: np.asarray(v) for c, v in place.columns.items()}))
        return pl.concat(parts, how="vertical_relaxed")


def _read_doc(root: Path, vdir: Path) -> tuple[str, dict[str, Any], DatasetMetadata, BoundingReport | None,
                                                tuple[ReportCharge, ...], dict[str, str]]:
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
    return version, doc, metadata, report, charges, digests


def _window_refs(root: Path, doc: dict[str, Any], metadata: DatasetMetadata) -> tuple[dict[int, WindowRef],
                                                                                        frozenset[int]]:
    """Each served window's version, and the windows retired (dpflows.retirement)."""
    try:
        entries = {int(k): v for k, v in doc["windows"].items()}
        retired = frozenset(k for k, v in entries.items() if v.get("retired"))
        refs = {k: WindowRef(root / WINDOWS_DIR / str(k) / check_name(str(v["version"]), field="window"),
                             str(v["sha256"]), str(v.get("reuse", v["version"])))
                for k, v in entries.items() if k not in retired}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise DataUnavailable(f"metadata.json of dataset {root.name!r} lists its windows wrongly; re-run "
                              "ingestion") from exc
    if sorted([*refs, *retired]) != list(range(metadata.window_count)):
        raise DataUnavailable(f"metadata.json of dataset {root.name!r} does not list one version of each window of "
                              "its span; re-run ingestion")
    return refs, retired


def load_dataset(path: str | Path, previous: Dataset | None = None) -> Dataset:
    """Load and check one dataset's current version: metadata, cells and zonings now, windows on first use.

    Windows `previous` (an earlier version of the same dataset) holds under the same window
    version are kept as they are, so an appended window does not remap the others. A format-1
    dataset is read whole here.
    """
    root = Path(path)
    vdir = version_dir(root)
    version, doc, metadata, report, charges, digests = _read_doc(root, vdir)
    mapped = "windows" in doc
    expected = {"cells.parquet"} if mapped else set(metadata.files)
    if (vdir != root or mapped) and set(digests) != expected:
        raise DataUnavailable(f"metadata.json of dataset {root.name!r} lacks its file hashes; re-run ingestion")
    cells = read_parquet(vdir / "cells.parquet", CELLS_SCHEMA, digests.get("cells.parquet"))
    catalog = CellCatalog.from_columns(cells["cell_id"].to_list(), cells["lat"].to_list(), cells["lon"].to_list())
    zonings = {CELL_ZONING: Zoning.identity(catalog)}
    zdir = root / "zonings"
    if zdir.is_dir():
        for zpath in sorted(zdir.glob("*.json")):
            try:
                zoning = load_zoning(zpath, catalog)
            except (ValueError, KeyError, TypeError, InvalidData) as exc:
                raise DataUnavailable(f"zoning file {zpath.name} of dataset {root.name!r} is corrupt") from exc
            zonings[zoning.name] = zoning
    data = Dataset(root, metadata, catalog, zonings, version, report, charges, vdir,
                   MAPPED if mapped else PARQUET_IN_MEMORY, cells_digest=digests.get("cells.parquet", ""))
    if not mapped:
        data._windows.update(read_legacy_windows(vdir, metadata, catalog, digests))
        return data
    data.window_refs, data.retired = _window_refs(root, doc, metadata)
    if previous is not None and previous.layout == MAPPED and previous.cells_digest == data.cells_digest:
        for index, held in previous.mapped_windows().items():
            ref = data.window_refs.get(index)
            if ref is not None and ref == previous.window_refs.get(index):
                data._windows[index] = held
    return data


class AggregateStore:
    """Datasets under one root, each version loaded once per process, then shared read-only.

    `get` checks the dataset's CURRENT pointer (one stat; read again when it was replaced) on every
    call, so a re-ingestion or an append is served by running workers without a restart; a query
    holds one `Dataset` (one version) from start to end, so it never mixes windows of two versions.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self._loaded: dict[str, Dataset] = {}
        #: per dataset, the CURRENT pointer's (inode, mtime, ctime, size) when it was last read, and when
        self._stamps: dict[str, tuple[tuple[int, ...] | None, float]] = {}
        self._lock = threading.Lock()
        self._dirs: dict[str, Path] = {}

    def dataset_dir(self, name: str) -> Path:
        known = self._dirs.get(name)
        if known is None:  # a name checked once (every request asks for one)
            known = self._dirs[name] = self.root / "datasets" / check_name(name, field="dataset")
            if len(self._dirs) > 1024:
                self._dirs.clear()
        return known

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
        stamp, now = pointer_stamp(path), time.monotonic()
        with self._lock:
            loaded = self._loaded.get(name)
            read = self._stamps.get(name)
            if loaded is not None and stamp is not None and read is not None and read[0] == stamp \
                    and now - read[1] < POINTER_READ_EVERY_S:
                return loaded  # CURRENT is the file read last time: one stat, no read, on most requests
            if not path.exists():
                raise NotFound(f"dataset={name!r} does not exist; use one of {self.names()}", field="dataset")
            current = version_dir(path)
            self._stamps[name] = (stamp, now)
            if loaded is not None and loaded.version_path == current:
                return loaded
            dataset = load_dataset(path, previous=loaded)
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

    def status(self) -> dict[str, Any]:
        """What this process holds, for the unauthenticated /readyz: totals only (no dataset name, no count).

        ``windows_mapped`` follows the warm-up (`warm`), which maps every window after start in a
        fixed order, not the queries clients send; ``parquet-in-memory`` datasets were written
        before window files and are read whole into each worker (`dpflows admin upgrade-dataset`).
        """
        with self._lock:
            loaded = list(self._loaded.values())
        held = [w for data in loaded for w in data.mapped_windows().values()]
        return {"datasets_loaded": len(loaded),
                "layouts": {layout: sum(d.layout == layout for d in loaded) for layout in (MAPPED, PARQUET_IN_MEMORY)},
                "windows": sum(d.metadata.window_count for d in loaded), "windows_mapped": len(held),
                "mapped_mib": round(sum(w.mapped_bytes for w in held) / 2**20, 1)}

    def warm(self) -> None:
        """Load every dataset and map every window, newest first (the windows most asked for): run after
        start in a background thread, so no request waits for a full load and none decides what is mapped.
        A dataset that fails to load is skipped here; requests report its error."""
        for name in self.names():
            try:
                data = self.get(name)
                for index in sorted(data.window_refs, reverse=True):  # retired ones have none
                    data.window(index)
            except DpflowsError as exc:
                log.warning("dataset %r not mapped at start: %s", name, exc.code)
            except OSError as exc:  # the data root changed under us (a dataset deleted): requests will say
                log.warning("dataset %r not mapped at start: %s", name, type(exc).__name__)

    def warm_in_background(self, then: Callable[[list[Dataset]], Any] | None = None) -> threading.Thread:
        """`warm` in a thread, then `then` with the datasets loaded (dpflows.counting.warm_flow_keys)."""

        def run() -> None:
            self.warm()
            if then is not None:
                with self._lock:
                    loaded = [self._loaded[name] for name in sorted(self._loaded)]
                try:
                    then(loaded)
                except (DpflowsError, OSError, ValueError) as exc:  # requests work without it
                    log.warning("warm-up after mapping stopped: %s", type(exc).__name__)

        thread = threading.Thread(target=run, name="dpflows-map-windows", daemon=True)
        thread.start()
        return thread
