"""Writing a dataset: window versions and a version naming them, switched to atomically, on the grid
the dataset keeps for life.

See dpflows.aggregates for the layout. Nothing the served version reads is touched until the
final rename of CURRENT; window versions are never changed once named; file hashes in the
metadata and in each window.json let a loader refuse a mixed read.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import polars as pl

from dpflows.cells import CellCatalog, Zoning, save_zoning
from dpflows.contribution_report import BoundingReport, ReportCharge
from dpflows.dataset_metadata import CELLS_SCHEMA, DatasetMetadata
from dpflows.errors import Conflict, DataUnavailable, InvalidData, InvalidInput
from dpflows.window_files import write_window

CURRENT_FILE = "CURRENT"
VERSIONS_DIR = "versions"
WINDOWS_DIR = "windows"
LOCK_FILE = ".writer.lock"


#: CURRENT is read again at least this often even when its stat is unchanged: a shared filesystem (NFS)
#: may serve a cached stat for up to a minute, while opening the file revalidates it
POINTER_READ_EVERY_S = 1.0


def pointer_stamp(dataset_dir: Path) -> tuple[int, ...] | None:
    """What identifies the CURRENT file now: a publication replaces it (os.replace, a new inode), so the same
    stamp means the same pointer. None without one (the oldest layout: read as before)."""
    try:
        st = os.stat(dataset_dir / CURRENT_FILE)
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size)


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
    append_from: int | None = None,
    served_version: str | None = None,
    zonings: Sequence[Zoning] = (),
) -> Path:
    """Write a new version of a dataset and switch to it atomically; the one writer ingestion uses.

    Every window gets a new window version (dpflows.window_files). A bounding report is stored
    only as released (noisy). Reports of earlier ingestions into this directory are carried
    forward in ``earlier_reports``, so that the service charges them too if they were never
    paid: a bound chosen from one is published with this one. Nothing the served version reads
    is touched until the final rename of CURRENT. `residents` and `commuting` are given exactly
    when the metadata has `places`.

    With `append_from` k, windows 0..k-1 are the served version's, named again unchanged (their
    stored answers and budgets stay valid), and only windows k.. are written from the frames; the
    cell catalog must be the served one; `served_version` (the version the append was planned
    against) must still be the served one (dpflows.ingest.appending). `zonings` (checked against
    the cells) are saved under ``zonings/`` just before the switch. If anything fails, nothing
    stays written: no version, no window, no zoning, and no dataset directory that was not there.
    """
    if (residents is None or commuting is None) != (metadata.places is None):
        raise ValueError("residents and commuting are written exactly when the metadata has places")
    out = Path(out_dir)
    created = not out.exists()
    out.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        _write_and_switch(out, metadata, cells, trips, presence, bounding_report, residents, commuting, append_from,
                          served_version, zonings)
    except BaseException:
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise
    return out


def _write_and_switch(out: Path, metadata: DatasetMetadata, cells: pl.DataFrame, trips: pl.DataFrame | pl.LazyFrame,
                      presence: pl.DataFrame | pl.LazyFrame, bounding_report: BoundingReport | None,
                      residents: pl.DataFrame | pl.LazyFrame | None, commuting: pl.DataFrame | pl.LazyFrame | None,
                      append_from: int | None, served_version: str | None, zonings: Sequence[Zoning]) -> None:
    with writer_lock(out):
        earlier_meta, earlier = _earlier_ingestion(out)
        if earlier_meta is not None:
            check_same_grid(earlier_meta, metadata)
        frames: dict[str, pl.DataFrame | pl.LazyFrame] = {"trips": trips, "presence": presence}
        if residents is not None and commuting is not None:
            frames |= {"residents": residents, "commuting": commuting}
        extra: dict[str, Any] = {}
        if bounding_report is not None:
            extra["bounding_report"] = bounding_report.to_json()
        if earlier:
            extra["earlier_reports"] = [c.to_json() for c in earlier]
        kept: dict[str, Any] = {}
        if append_from is not None:
            kept = _served_windows(out, metadata, append_from, served_version)
        final, written = _write_version(out, metadata, cells, frames, range(append_from or 0, metadata.window_count),
                                        kept, extra, served_cells=version_dir(out) / "cells.parquet" if kept else None)
        previous = version_dir(out).name
        saved = _save_zonings(out, zonings, cells)
        try:
            switch_current(out, final, written)
        except BaseException:
            for path in saved:
                path.unlink(missing_ok=True)
            raise
        _remove_old_versions(out, keep={final.name, previous})


def _save_zonings(out: Path, zonings: Sequence[Zoning], cells: pl.DataFrame) -> list[Path]:
    """Save the ingestion's zonings; the files that were not there before (removed if the switch fails)."""
    if not zonings:
        return []
    catalog = CellCatalog.from_columns(cells["cell_id"].cast(pl.String).to_list(), cells["lat"].to_list(),
                                       cells["lon"].to_list())
    new = []
    for zoning in zonings:
        path = out / "zonings" / f"{zoning.name}.json"
        if not path.exists():
            new.append(path)
        save_zoning(zoning, catalog, path)
    return new


def _served_windows(out: Path, metadata: DatasetMetadata, append_from: int,
                    served_version: str | None) -> dict[str, Any]:
    """The served version's entries of windows 0..append_from-1, checked to be what the append was planned on."""
    vdir = version_dir(out)
    if served_version is not None and vdir.name != served_version:
        raise Conflict(f"dataset {out.name!r} changed while this append was read (another ingestion switched it); "
                       "run the append again", field="append")
    doc = json.loads((vdir / "metadata.json").read_bytes())
    if "windows" not in doc:
        raise InvalidData(f"dataset {out.name!r} is stored as whole-dataset Parquet (written before window files); "
                          f"convert it first: dpflows admin upgrade-dataset --dataset {out.name}", field="append")
    kept = {k: v for k, v in doc["windows"].items() if int(k) < append_from}
    if len(kept) != append_from or append_from >= metadata.window_count:
        raise InvalidData(f"dataset {out.name!r}: an append writes windows {append_from}.. after the served ones; "
                          f"the new span holds {metadata.window_count} windows", field="end_day")
    return kept


def _same_cells(served: Path, cells: pl.DataFrame, name: str) -> None:
    """An append indexes its cells as the served windows do: the same catalog, or it is refused."""
    def canonical(frame: pl.DataFrame) -> pl.DataFrame:
        return frame.select([pl.col(c).cast(t) for c, t in CELLS_SCHEMA.items()]).sort("cell_id")

    if not canonical(pl.read_parquet(served)).equals(canonical(cells)):
        raise InvalidData(f"dataset {name!r}: the cell catalog (--cells) differs from the one its served windows were "
                          "written with (cells added, removed or moved); append with the same cells file, or "
                          "re-ingest every window into a new dataset", field="cells")


def _write_version(out: Path, metadata: DatasetMetadata, cells: pl.DataFrame,
                   frames: dict[str, pl.DataFrame | pl.LazyFrame], new_windows: range,
                   kept_windows: dict[str, Any], extra: dict[str, Any], *,
                   reuse: str | None = None, served_cells: Path | None = None) -> tuple[Path, list[Path]]:
    """Write the windows `new_windows` and a version naming them and `kept_windows` (written before).

    The whole version is in place (renamed from a temporary name) before this returns, with the
    window directories it wrote; nothing is served from it until `switch_current`. On any
    failure everything it wrote is removed.
    """
    ingestion_id = uuid.uuid4().hex
    versions = out / VERSIONS_DIR
    versions.mkdir(mode=0o700, exist_ok=True)
    tmp = versions / f".tmp-{ingestion_id}"
    tmp.mkdir(mode=0o700)
    written: list[Path] = []
    try:
        if served_cells is not None:  # the served file itself: the windows kept refer to its digest
            _same_cells(served_cells, cells, metadata.name)
            shutil.copy(served_cells, tmp / "cells.parquet")
        else:
            cells.select([pl.col(c).cast(t) for c, t in CELLS_SCHEMA.items()]).write_parquet(tmp / "cells.parquet")
        cells_digest = _file_digest((tmp / "cells.parquet").read_bytes())
        ids = CellCatalog.from_columns(cells["cell_id"].cast(pl.String).to_list(), [0.0] * len(cells),
                                       [0.0] * len(cells)).cell_ids  # the order every cell index refers to
        cell_index = pl.DataFrame({"cell_id": list(ids), "index": range(len(ids))},
                                  schema={"cell_id": pl.String, "index": pl.Int64})
        staged = {}
        for name, frame in frames.items():  # each lazy plan runs once; windows are read from its file
            staged[name] = tmp / f".stage-{name}.parquet"
            frame.lazy().sink_parquet(staged[name])
        windows = dict(kept_windows)
        left = {name: pl.scan_parquet(path).select(pl.len()).collect().item() for name, path in staged.items()}
        for w in new_windows:
            first = metadata.window_start(w)
            last = min(metadata.window_start(w + 1), metadata.end_day)
            parts = {}
            for name, path in staged.items():
                scan = pl.scan_parquet(path)
                in_window = (pl.col("window") == w) if name in ("residents", "commuting") else \
                    ((pl.col("day") >= first) & (pl.col("day") < last))
                parts[name] = scan.filter(in_window).collect()
                left[name] -= parts[name].height
            wid = f"w-{uuid.uuid4().hex}"
            parent = out / WINDOWS_DIR / str(w)
            parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            written.append(parent / wid)
            digest = write_window(parent, w, wid, first, (last - first).days, cells_digest, cell_index, parts)
            windows[str(w)] = {"version": wid, "sha256": digest, **({"reuse": reuse} if reuse else {})}
        if any(left.values()):  # ingestion checks events against the span: rows outside it are a bug
            raise InvalidData(f"aggregates of {sorted(k for k, v in left.items() if v)} fall outside the windows "
                              f"written ({new_windows.start}..{new_windows.stop - 1}); nothing was written")
        for path in staged.values():
            path.unlink()
        doc = metadata.to_json()
        # A fresh id per ingestion, so answers stored for an earlier ingestion are never reused.
        doc["ingestion_id"] = ingestion_id
        doc["files"] = {"cells.parquet": cells_digest}
        doc["windows"] = {k: windows[k] for k in sorted(windows, key=int)}
        doc |= extra
        (tmp / "metadata.json").write_text(json.dumps(doc, indent=2))
        for path in tmp.iterdir():  # the service's own user reads them; nobody else needs to
            path.chmod(0o600)
            _fsync(path)
        final = versions / f"v-{ingestion_id}"
        tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        _remove_windows(written)
        raise
    return final, written


def _remove_windows(written: list[Path]) -> None:
    for wdir in written:
        shutil.rmtree(wdir, ignore_errors=True)
        shutil.rmtree(wdir.parent / f".tmp-{wdir.name}", ignore_errors=True)


def switch_current(out: Path, final: Path, written: list[Path]) -> None:
    """The switch: one rename of the CURRENT pointer, so loaders see the old version or `final`, never a mix.

    If the rename fails, `final` and the window directories only it names (`written`) are removed.
    """
    pointer = out / f".{CURRENT_FILE}.{final.name}"
    try:
        pointer.write_text(final.name + "\n")
        _fsync(pointer)
        pointer.replace(out / CURRENT_FILE)
    except BaseException:
        pointer.unlink(missing_ok=True)
        shutil.rmtree(final, ignore_errors=True)
        _remove_windows(written)
        raise
    _fsync(out)


@contextlib.contextmanager
def writer_lock(out: Path) -> Iterator[None]:
    """One writer per dataset at a time (an ingestion, an append, an upgrade); readers never lock."""
    fd = os.open(out / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise Conflict(f"dataset {out.name!r} is being written by another ingestion; wait for it to finish",
                           field="out") from None
        yield
    finally:
        os.close(fd)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_old_versions(out: Path, keep: set[str]) -> None:
    """Delete every version but `keep` (the new and the previous one), the windows only they name, and
    what a crashed writer left (the caller holds the writer lock). Aggregates only: the ledger keeps
    every charge. The previous version stays so that a worker that read the old pointer an instant
    ago can finish loading it.
    """
    versions = out / VERSIONS_DIR
    referenced: set[tuple[str, str]] = set()
    for old in sorted(versions.iterdir()):
        if old.name.startswith(".tmp-") or (old.name.startswith("v-") and old.name not in keep):
            shutil.rmtree(old, ignore_errors=True)
        elif old.name in keep:
            referenced |= _windows_named(old)
    windows = out / WINDOWS_DIR
    if not windows.is_dir():
        return
    for parent in windows.iterdir():
        for wdir in parent.iterdir():
            if (parent.name, wdir.name) not in referenced:
                shutil.rmtree(wdir, ignore_errors=True)
        if not any(parent.iterdir()):
            parent.rmdir()


def _windows_named(vdir: Path) -> set[tuple[str, str]]:
    try:
        doc = json.loads((vdir / "metadata.json").read_bytes())
        return {(str(k), str(v["version"])) for k, v in doc.get("windows", {}).items() if not v.get("retired")}
    except (OSError, ValueError, KeyError, TypeError):
        return set()


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
        # keyed by the ingestion that released it (kept when a dataset is rewritten: upgrade-dataset)
        key = str(doc.get("bounding_report_key", version))
        charges.append(ReportCharge(key, report.epsilon, report.windows, report.scale, report.sensitivity,
                                    report.first_window))
    unique: dict[str, ReportCharge] = {}
    for charge in charges:
        unique.setdefault(charge.ingestion, charge)
    return list(unique.values())


def read_interchange(dataset_dir: str | Path, measure: str) -> pl.LazyFrame:
    """The served version's counts of `measure` (trips, presence, residents, commuting) in the interchange
    schema (cell ids as strings), from the Parquet files written beside the mapped ones: for tools and
    tests. Datasets written before window files hold one Parquet file per measure."""
    root = Path(dataset_dir)
    vdir = version_dir(root)
    doc = json.loads((vdir / "metadata.json").read_bytes())
    if "windows" not in doc:
        return pl.scan_parquet(vdir / f"{measure}.parquet")
    paths = [root / WINDOWS_DIR / str(k) / v["version"] / f"{measure}.parquet"
             for k, v in sorted(doc["windows"].items(), key=lambda kv: int(kv[0]))]
    return pl.concat([pl.scan_parquet(p) for p in paths])
