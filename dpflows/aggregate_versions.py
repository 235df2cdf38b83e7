"""Writing a dataset: a new version directory, switched to atomically, on the grid the dataset keeps for life.

See dpflows.aggregates for the layout. Nothing the served version reads is touched until the
final rename of CURRENT; file hashes in the metadata let a loader refuse a mixed read.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import uuid
from pathlib import Path
from typing import Any

import polars as pl

from dpflows.contribution_report import BoundingReport, ReportCharge
from dpflows.dataset_metadata import (
    CELLS_SCHEMA,
    COMMUTING_SCHEMA,
    PRESENCE_SCHEMA,
    RESIDENTS_SCHEMA,
    TRIPS_SCHEMA,
    DatasetMetadata,
)
from dpflows.errors import DataUnavailable, InvalidData, InvalidInput

CURRENT_FILE = "CURRENT"
VERSIONS_DIR = "versions"


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
    """A dataset's windows, measure of loss and population are fixed for life: spending is kept per window index.

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
    if earlier.population != new.population:
        old = "--population " + earlier.population if earlier.population is not None else "no --population"
        raise InvalidData(
            f"dataset {new.name!r} was ingested with {old.removeprefix('--population ')} as its population and this "
            f"ingestion asks for {new.population or 'the default'}; a dataset keeps its population for life (its "
            f"spending counts against that population's budget): use {old}, or ingest into a new dataset name",
            field="population",
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
