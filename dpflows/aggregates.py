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

import datetime as dt
import hashlib
import io
import json
import shutil
import threading
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from dpflows.budget import ACCOUNTINGS, PURE_DP
from dpflows.cells import CELL_ZONING, CellCatalog, Zoning, check_name, load_zoning, save_zoning
from dpflows.contribution_report import BoundingReport, ReportCharge
from dpflows.errors import DataUnavailable, InvalidData, InvalidInput, NotFound

FORMAT_VERSION = 1
MEASURES = ("trips", "presence")
#: Measures of one home and one work cell per person-window; each person adds at most 1 per window.
PLACE_MEASURES = ("residents", "commuting")
PLACES = ("home", "work")
#: presence_rule values: one cell per person-hour (written by ingestion now), every cell seen in a
#: person-hour (datasets written before issue 14), no presence at all (a trips table).
ONE_PLACE_PER_PERSON_HOUR = "one_place_per_person_hour"
CELLS_PER_PERSON_HOUR = "cells_per_person_hour"
NO_PRESENCE = "none"
PRESENCE_RULES = (ONE_PLACE_PER_PERSON_HOUR, CELLS_PER_PERSON_HOUR, NO_PRESENCE)
#: zCDP datasets show ρ as (ε, δ) at this δ unless ingestion sets another.
DEFAULT_DELTA = 1e-8

TRIPS_SCHEMA = {"day": pl.Date, "hour": pl.Int8, "origin": pl.String, "dest": pl.String, "count": pl.Int64}
PRESENCE_SCHEMA = {"day": pl.Date, "hour": pl.Int8, "cell": pl.String, "count": pl.Int64}
CELLS_SCHEMA = {"cell_id": pl.String, "lat": pl.Float64, "lon": pl.Float64}
RESIDENTS_SCHEMA = {"window": pl.Int32, "place": pl.String, "cell": pl.String, "count": pl.Int64}
COMMUTING_SCHEMA = {"window": pl.Int32, "home": pl.String, "work": pl.String, "count": pl.Int64}


def _hours(span: tuple[int, int]) -> tuple[int, ...]:
    """[from, to) hours of day, wrapping past midnight (22, 6 is 22, 23, 0, ..., 5)."""
    start, stop = span
    return tuple(range(start, stop)) if start < stop else tuple(range(start, 24)) + tuple(range(0, stop))


@dataclass(frozen=True)
class PlaceRule:
    """How ingestion derives one home and one work cell per person-window; public, stored in metadata.

    Home: the cell where the person spent most `home_hours` (night, local time) of the window.
    Work: the cell of most `work_hours` on `work_weekdays`, among cells seen then on at least
    `min_work_days` distinct days of the window; none if that cell is the home. Hours are
    [from, to) and wrap past midnight; weekdays 0 = Monday. Both come from the person-window's
    hour cells (one place per person-hour), so a night crossing a window boundary is cut at it.
    """

    home_hours: tuple[int, int] = (22, 6)
    work_hours: tuple[int, int] = (9, 17)
    work_weekdays: tuple[int, ...] = (0, 1, 2, 3, 4)
    min_work_days: int = 3

    def __post_init__(self) -> None:
        for name, (start, stop) in (("home_hours", self.home_hours), ("work_hours", self.work_hours)):
            if not (0 <= start <= 23 and 1 <= stop <= 24) or start == stop:
                raise InvalidData(f"{name}={start}-{stop} must be FROM-TO with 0 <= FROM <= 23, 1 <= TO <= 24 and "
                                  "FROM != TO (TO exclusive, wrapping past midnight), such as 22-6", field=name)
        if not self.work_weekdays or any(not 0 <= d <= 6 for d in self.work_weekdays) \
                or tuple(sorted(set(self.work_weekdays))) != self.work_weekdays:
            raise InvalidData(f"work_weekdays={list(self.work_weekdays)} must be distinct sorted weekdays 0..6 "
                              "(0 = Monday), such as [0, 1, 2, 3, 4]", field="work_weekdays")
        if self.min_work_days < 1:
            raise InvalidData(f"min_work_days={self.min_work_days} must be at least 1", field="min_work_days")

    @property
    def home_hour_set(self) -> tuple[int, ...]:
        return _hours(self.home_hours)

    @property
    def work_hour_set(self) -> tuple[int, ...]:
        return _hours(self.work_hours)

    def _most_work_days(self, window_days: int) -> int:
        """The most work weekdays any window of `window_days` consecutive days holds."""
        return max(sum((start + d) % 7 in self.work_weekdays for d in range(window_days)) for start in range(7))

    def fitted(self, window_days: int) -> PlaceRule:
        """This rule with min_work_days lowered to what a window can hold (defaults for short windows)."""
        most = self._most_work_days(window_days)
        return self if self.min_work_days <= most else replace(self, min_work_days=max(1, most))

    def check_window(self, window_days: int) -> None:
        """Refuse a minimum of work days that no window of `window_days` days can hold."""
        most = self._most_work_days(window_days)
        if self.min_work_days > most:
            raise InvalidData(f"min_work_days={self.min_work_days} can never be met: a {window_days}-day window holds "
                              f"at most {most} of the work weekdays {list(self.work_weekdays)}; lower it",
                              field="min_work_days")

    def to_json(self) -> dict[str, Any]:
        return {
            "home": "cell of most night hours of the person-window (one place per person-hour); ties by keyed hash",
            "work": "cell of most weekday daytime hours among cells seen then on at least min_work_days days, "
                    "none if that is the home; ties by keyed hash",
            "home_hours": list(self.home_hours),
            "work_hours": list(self.work_hours),
            "work_weekdays": list(self.work_weekdays),
            "min_work_days": self.min_work_days,
            "bounds": {"residents": 1, "commuting": 1},
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> PlaceRule:
        home, work = doc["home_hours"], doc["work_hours"]
        return cls((int(home[0]), int(home[1])), (int(work[0]), int(work[1])),
                   tuple(int(d) for d in doc["work_weekdays"]), int(doc["min_work_days"]))


@dataclass(frozen=True)
class DatasetMetadata:
    """Public facts about a dataset; the bounds are the sensitivity of every count."""

    name: str
    first_day: dt.date
    end_day: dt.date  # exclusive
    window_days: int
    bound_trips: int
    bound_presence: int
    trip_rule: dict[str, Any] = field(default_factory=dict)
    #: pure_dp (discrete Laplace, ε) or zcdp (discrete Gaussian, ρ); see dpflows.mechanisms.
    accounting: str = PURE_DP
    #: zcdp only: the most one person adds to one trips row (day, hour, origin, dest), enforced
    #: at ingestion; presence rows are distinct person-hours, so 1 by construction.
    key_cap_trips: int = 1
    #: zcdp only: the δ at which ρ is shown as (ε, δ); for display, never for accounting.
    delta: float = DEFAULT_DELTA
    #: what a presence record is (PRESENCE_RULES); ingestion writes one place per person-hour.
    presence_rule: str = CELLS_PER_PERSON_HOUR
    #: how homes and work cells were derived; None: no residents or commuting in this dataset.
    places: PlaceRule | None = None

    def __post_init__(self) -> None:
        check_name(self.name, field="dataset")
        if self.window_days < 1:
            raise InvalidData(f"window_days={self.window_days} must be at least 1")
        if self.end_day <= self.first_day:
            raise InvalidData(f"end_day={self.end_day} must be after first_day={self.first_day}")
        for measure, bound in (("trips", self.bound_trips), ("presence", self.bound_presence)):
            if bound < 1:
                raise InvalidData(f"bound for {measure}={bound} must be at least 1")
        if self.accounting not in ACCOUNTINGS:
            raise InvalidData(f"accounting={self.accounting!r} must be one of {list(ACCOUNTINGS)}")
        if self.key_cap_trips < 1:
            raise InvalidData(f"key_cap_trips={self.key_cap_trips} must be at least 1")
        if not 0 < self.delta < 1:
            raise InvalidData(f"delta={self.delta} must be in (0, 1), such as 1e-8")
        if self.presence_rule not in PRESENCE_RULES:
            raise InvalidData(f"presence_rule={self.presence_rule!r} must be one of {list(PRESENCE_RULES)}")
        if self.places is not None:
            self.places.check_window(self.window_days)

    def bound(self, measure: str) -> int:
        """The most one person-window adds to all counts of `measure` (residents: of one place)."""
        if measure in PLACE_MEASURES:
            return 1
        return self.bound_trips if measure == "trips" else self.bound_presence

    def key_cap(self, measure: str) -> int:
        """The most one person adds to one aggregate row of `measure` in a window (zCDP's per-key cap)."""
        return self.key_cap_trips if measure == "trips" else 1

    @property
    def one_place_per_hour(self) -> bool:
        """A person has at most one presence record per (day, hour): presence counts people."""
        return self.presence_rule == ONE_PLACE_PER_PERSON_HOUR

    @property
    def files(self) -> tuple[str, ...]:
        """The aggregate files a version of this dataset holds (hashed in metadata ``files``)."""
        return AGGREGATE_FILES + (PLACE_FILES if self.places is not None else ())

    def accounting_json(self) -> dict[str, Any]:
        from dpflows.accounting import accounting

        return accounting(self.accounting).metadata_json(self)

    @property
    def privacy_unit(self) -> str:
        days = self.window_days
        return f"person-window ({days} day{'s' if days != 1 else ''})"

    def window_of(self, day: dt.date) -> int:
        """Windows are aligned to the dataset's first day: window k covers days [k·w, (k+1)·w)."""
        return (day - self.first_day).days // self.window_days

    def window_start(self, window: int) -> dt.date:
        return self.first_day + dt.timedelta(days=window * self.window_days)

    @property
    def window_count(self) -> int:
        return self.window_of(self.end_day - dt.timedelta(days=1)) + 1

    def to_json(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "name": self.name,
            "first_day": self.first_day.isoformat(),
            "end_day": self.end_day.isoformat(),
            "window_days": self.window_days,
            "bounds": {"trips": self.bound_trips, "presence": self.bound_presence},
            "trip_rule": self.trip_rule,
            "presence_rule": {"kind": self.presence_rule},
            **({"places": self.places.to_json()} if self.places is not None else {}),
            "accounting": self.accounting_json(),
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> DatasetMetadata:
        if doc.get("format_version") != FORMAT_VERSION:
            raise InvalidData(f"metadata format_version={doc.get('format_version')!r}; expected {FORMAT_VERSION}")
        accounting = doc.get("accounting") or {}  # absent in datasets written before zCDP: pure DP
        return cls(
            name=doc["name"],
            first_day=dt.date.fromisoformat(doc["first_day"]),
            end_day=dt.date.fromisoformat(doc["end_day"]),
            window_days=int(doc["window_days"]),
            bound_trips=int(doc["bounds"]["trips"]),
            bound_presence=int(doc["bounds"]["presence"]),
            trip_rule=dict(doc.get("trip_rule", {})),
            accounting=str(accounting.get("measure", PURE_DP)),
            key_cap_trips=int(accounting.get("key_caps", {}).get("trips", 1)),
            delta=float(accounting.get("delta", DEFAULT_DELTA)),
            # absent in datasets written before one place per person-hour: every cell of an hour
            presence_rule=str(doc.get("presence_rule", {}).get("kind", CELLS_PER_PERSON_HOUR)),
            places=PlaceRule.from_json(doc["places"]) if "places" in doc else None,
        )


CURRENT_FILE = "CURRENT"
VERSIONS_DIR = "versions"
AGGREGATE_FILES = ("cells.parquet", "trips.parquet", "presence.parquet")
PLACE_FILES = ("residents.parquet", "commuting.parquet")


def version_dir(dataset_dir: str | Path) -> Path:
    """The directory of the version a dataset directory serves now (itself for the old layout)."""
    root = Path(dataset_dir)
    pointer = root / CURRENT_FILE
    try:
        name = pointer.read_text().strip()
    except FileNotFoundError:
        return root
    if not name or "/" in name or name.startswith("."):
        raise DataUnavailable(f"dataset {root.name!r} has a malformed {CURRENT_FILE} pointer; re-run ingestion")
    return root / VERSIONS_DIR / name


def check_same_grid(earlier: DatasetMetadata, new: DatasetMetadata) -> None:
    """A dataset's windows and measure of loss are fixed for life: spending is kept per window index.

    Re-ingesting with another first day or window length would make window k another week, and
    another accounting would read ε spent as ρ; both would let a person-window be spent twice.
    """
    for label, old, now, flag in (("first day", earlier.first_day, new.first_day, "--first-day"),
                                  ("window length in days", earlier.window_days, new.window_days, "--window-days"),
                                  ("accounting", earlier.accounting, new.accounting, "--accounting")):
        if old != now:
            raise InvalidData(
                f"dataset {new.name!r} was ingested with {label} {old} and this ingestion asks for {now}; a "
                f"dataset keeps its window grid and accounting for life (its spent budget is per window): use "
                f"{flag} {old}, or ingest into a new dataset name",
                field=flag.lstrip("-").replace("-", "_"),
            )


def write_aggregates(
    out_dir: str | Path,
    metadata: DatasetMetadata,
    cells: pl.DataFrame,
    trips: pl.DataFrame | pl.LazyFrame,
    presence: pl.DataFrame | pl.LazyFrame,
    *,
    bounding_report: BoundingReport | None = None,
    residents: pl.DataFrame | pl.LazyFrame | None = None,
    commuting: pl.DataFrame | pl.LazyFrame | None = None,
) -> Path:
    """Write a new version of a dataset and switch to it atomically; the one writer ingestion uses.

    A bounding report is stored only as released (noisy). Reports of earlier ingestions into
    this directory are carried forward in ``earlier_reports``, so that the service charges
    them too if they were never paid: a bound chosen from one is published with this one.
    Nothing the served version reads is touched until the final rename of CURRENT.
    `residents` and `commuting` are given exactly when the metadata has `places`.
    """
    if (residents is None or commuting is None) != (metadata.places is None):
        raise ValueError("residents and commuting are written exactly when the metadata has places")
    out = Path(out_dir)
    out.mkdir(mode=0o700, parents=True, exist_ok=True)
    earlier_meta, earlier = _earlier_ingestion(out)
    if earlier_meta is not None:
        check_same_grid(earlier_meta, metadata)
    ingestion_id = uuid.uuid4().hex
    versions = out / VERSIONS_DIR
    versions.mkdir(mode=0o700, exist_ok=True)
    tmp = versions / f".tmp-{ingestion_id}"
    tmp.mkdir(mode=0o700)
    try:
        cells.select([pl.col(c).cast(t) for c, t in CELLS_SCHEMA.items()]).write_parquet(tmp / "cells.parquet")
        frames: list[tuple[str, pl.DataFrame | pl.LazyFrame, dict[str, Any]]] = [
            ("trips", trips, TRIPS_SCHEMA), ("presence", presence, PRESENCE_SCHEMA)]
        if residents is not None and commuting is not None:
            frames += [("residents", residents, RESIDENTS_SCHEMA), ("commuting", commuting, COMMUTING_SCHEMA)]
        for name, frame, schema in frames:
            lazy = frame.lazy().select([pl.col(c).cast(t) for c, t in schema.items()])
            lazy.sink_parquet(tmp / f"{name}.parquet")
        doc = metadata.to_json()
        # A fresh id per ingestion, so answers stored for an earlier ingestion are never reused.
        doc["ingestion_id"] = ingestion_id
        doc["files"] = {f: _file_digest((tmp / f).read_bytes()) for f in metadata.files}
        if bounding_report is not None:
            doc["bounding_report"] = bounding_report.to_json()
        if earlier:
            doc["earlier_reports"] = [c.to_json() for c in earlier]
        (tmp / "metadata.json").write_text(json.dumps(doc, indent=2))
        for written in tmp.iterdir():  # the service's own user reads them; nobody else needs to
            written.chmod(0o600)
        final = versions / f"v-{ingestion_id}"
        tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    previous = version_dir(out).name
    pointer = out / f".{CURRENT_FILE}.{ingestion_id}"
    try:
        pointer.write_text(final.name + "\n")
        pointer.replace(out / CURRENT_FILE)  # the switch: loaders see the old version or this one
    except BaseException:
        pointer.unlink(missing_ok=True)
        shutil.rmtree(final, ignore_errors=True)
        raise
    _remove_old_versions(versions, keep={final.name, previous})
    return out


def _remove_old_versions(versions: Path, keep: set[str]) -> None:
    """Delete every version but the new and the previous one (aggregates only; the ledger keeps every charge).

    The previous one stays so that a worker that read the old pointer an instant ago can finish loading it.
    """
    for old in versions.iterdir():
        if old.name.startswith("v-") and old.name not in keep:
            shutil.rmtree(old, ignore_errors=True)


def _file_digest(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def _earlier_ingestion(out: Path) -> tuple[DatasetMetadata | None, list[ReportCharge]]:
    """The metadata of the version served now, if any, and the report charges it owes."""
    try:
        meta_path = version_dir(out) / "metadata.json"
    except DataUnavailable:
        return None, []
    if not meta_path.exists():
        return None, []
    try:
        raw = meta_path.read_bytes()
        doc = json.loads(raw)
        return DatasetMetadata.from_json(doc), report_charges(doc, _version(raw))
    except (ValueError, KeyError, TypeError, InvalidData, InvalidInput):
        return None, []  # an unreadable earlier ingestion was never served, so its report was never used


def _version(raw: bytes) -> str:
    """A dataset's ingestion digest: part of every answer-reuse key and report-charge key."""
    return hashlib.sha256(raw).hexdigest()[:16]


def report_charges(doc: dict[str, Any], version: str) -> list[ReportCharge]:
    """Every bounding report this ingestion must have paid for before it is served, oldest first."""
    charges = [ReportCharge.from_json(c) for c in doc.get("earlier_reports", [])]
    if "bounding_report" in doc:
        report = BoundingReport.from_json(doc["bounding_report"])
        charges.append(ReportCharge(version, report.epsilon, report.windows, report.scale, report.sensitivity))
    unique: dict[str, ReportCharge] = {}
    for charge in charges:
        unique.setdefault(charge.ingestion, charge)
    return list(unique.values())


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
