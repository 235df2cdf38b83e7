"""Appending windows to a served dataset: which windows an append writes, and what it leaves out.

A served window is immutable (its answers and budgets stay valid, dpflows.aggregates), so an
append writes only windows after the last one served, each whole:

    served windows 0..k-1 | gap (days of a closed, partial window k-1 after its end) | new windows k..m-1 | held
                          ^ served end_day                                           ^ new end_day    ^ --end-day

* Events before the first new window are **late**: they belong to a served window, are not
  added, and their share of the input is reported to the operator (never stored or served).
* The trailing days of a window the input does not complete are **held**: not ingested now;
  the same files (with the missing days) are given again once the window is complete. With
  `close_window` the window is published with the days given, its remaining days declared
  missing, and the next append starts at the window after it.
* The new version declares [first_day, new end_day); the days of a closed window after its
  given days are declared missing (published, count nothing).

The bounds, window grid, accounting, rules and time zone are the served dataset's: an append
that asks for others is refused, naming the flag and the value to use.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from dpflows.aggregates import TRIP, DatasetMetadata, version_dir
from dpflows.cells import CellCatalog
from dpflows.errors import InvalidData
from dpflows.ingest.inputs import _rows_where
from dpflows.ingest.options import IngestOptions


class WindowHeld(InvalidData):
    """An append whose input completes no window: nothing is written (the CLI says so and exits 0)."""


@dataclass(frozen=True)
class AppendPlan:
    """What one append writes: windows `windows` of `metadata`, against the served version `served_version`."""

    served: DatasetMetadata
    served_version: str
    first_window: int
    metadata: DatasetMetadata  # the new version's facts (end_day, missing days)
    options: IngestOptions  # the options to ingest the new windows with (the served grid, the new span)
    held: tuple[dt.date, dt.date] | None  # [from, to) days of an incomplete window, not ingested now
    declared_end: dt.date  # the --end-day the input was declared with (exclusive)

    @property
    def start(self) -> dt.date:
        """The first day written: the first new window's start."""
        return self.served.window_start(self.first_window)

    @property
    def windows(self) -> range:
        return range(self.first_window, self.metadata.window_count)


def served_metadata(out: Path) -> tuple[DatasetMetadata, str]:
    """The served version's public facts and directory name; a clear error when there is none."""
    vdir = version_dir(out)
    try:
        doc = json.loads((vdir / "metadata.json").read_bytes())
        return DatasetMetadata.from_json(doc), vdir.name
    except FileNotFoundError:
        raise InvalidData(f"--append: {out} holds no dataset to append to; ingest its first windows without "
                          "--append", field="append") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidData(f"--append: metadata.json of {out.name!r} is unreadable; re-ingest the dataset",
                          field="append") from exc


def served_options(out: Path) -> dict[str, Any]:
    """The served dataset's settings as IngestOptions fields: what an append uses unless a flag says otherwise."""
    meta, _ = served_metadata(out)
    given: dict[str, Any] = {
        "first_day": meta.first_day, "window_days": meta.window_days, "bound_trips": meta.bound_trips,
        "accounting": meta.accounting, "key_cap_trips": meta.key_cap_trips, "delta": meta.delta,
        "time_zone": meta.time_zone, "population": meta.population}
    if meta.unit != TRIP and meta.presence_rule != "none":
        given |= {"bound_presence": meta.bound_presence, "trip_rule": meta.trip_rule.get("kind", "stay"),
                  "places": meta.places}
        if "min_dwell_minutes" in meta.trip_rule:
            given["min_dwell_minutes"] = float(meta.trip_rule["min_dwell_minutes"])
    return given


def plan_append(out: Path, options: IngestOptions, *, per_person: bool = True) -> AppendPlan:
    """Check an append against the served dataset and say which windows it writes (refused: nothing to write)."""
    served, served_version = served_metadata(out)
    asked = options.trips_metadata(per_person=per_person) if options.trips_table else options.events_metadata()
    _check_same_settings(served, asked)
    first_window = served.window_count
    start = served.window_start(first_window)
    assert options.end_day is not None  # checked when the options were made
    if options.end_day <= start:
        raise InvalidData(f"--append: --end-day {options.end_day} adds no day after the served windows, which end "
                          f"{start - dt.timedelta(days=1)} (last day); give the day after the input's last day, "
                          f"later than {start} (late events for served windows are not added)", field="end_day")
    last = served.window_of(options.end_day - dt.timedelta(days=1))
    complete_end = served.window_start(last + 1)
    if complete_end == options.end_day or options.close_window:
        end, held = options.end_day, None
    else:
        end, held = served.window_start(last), (served.window_start(last), options.end_day)
    if end <= start:
        assert held is not None
        raise WindowHeld(
            f"--append: window {last} ({held[0]}..{complete_end - dt.timedelta(days=1)}) is not complete: "
            f"--end-day {options.end_day} gives {(held[1] - held[0]).days} of its {served.window_days} days; it is "
            "held (nothing written): append again when its last day is in, or add --close-window to publish it "
            "with the days given", field="end_day")
    gap = [served.end_day + dt.timedelta(days=d) for d in range((start - served.end_day).days)]
    closed = [end + dt.timedelta(days=d) for d in range((served.window_start(served.window_of(end - dt.timedelta(
        days=1)) + 1) - end).days)] if options.close_window else []
    missing = tuple(sorted({*served.missing_days, *gap, *(d for d in options.missing_days if start <= d < end)}))
    metadata = dataclasses.replace(served, end_day=end, missing_days=missing)
    if closed:  # the rest of a closed window is published as missing: the span ends on the window grid
        metadata = dataclasses.replace(metadata, end_day=end + dt.timedelta(days=len(closed)),
                                       missing_days=tuple(sorted({*missing, *closed})))
    new_options = dataclasses.replace(options, first_day=served.first_day, end_day=metadata.end_day,
                                      missing_days=metadata.missing_days)
    return AppendPlan(served, served_version, first_window, metadata, new_options, held, options.end_day)


_SETTINGS = (  # (label, metadata attribute, the flag that sets it)
    ("window length in days", "window_days", "--window-days"), ("trips bound", "bound_trips", "--bound-trips"),
    ("presence bound", "bound_presence", "--bound-presence"), ("accounting", "accounting", "--accounting"),
    ("per-key cap of trips", "key_cap_trips", "--key-cap-trips"), ("delta", "delta", "--delta"),
    ("trip rule", "trip_rule", "--trip-rule/--min-dwell-minutes"), ("home and work rule", "places",
                                                                    "--home-hours/--work-hours/--min-work-days"),
    ("presence rule", "presence_rule", "--input-format"), ("privacy unit", "unit", "--input-format"),
    ("time zone", "time_zone", "--time-zone"), ("population", "population", "--population"),
)


def _check_same_settings(served: DatasetMetadata, asked: DatasetMetadata) -> None:
    """Every window of a dataset is bounded and described alike: one sensitivity, one grid, one unit."""
    if asked.first_day != served.first_day:
        raise InvalidData(f"--append: dataset {served.name!r} starts {served.first_day}; drop --first-day or give "
                          f"--first-day {served.first_day} (its window grid is fixed for life)", field="first_day")
    for label, attr, flag in _SETTINGS:
        was, now = getattr(served, attr), getattr(asked, attr)
        if was != now:
            shown = was.to_json() if hasattr(was, "to_json") else was
            raise InvalidData(f"--append: dataset {served.name!r} was ingested with {label} {shown!r} and this "
                              f"append asks for {now!r}; every window of a dataset is bounded alike: drop {flag} or "
                              "give the served value", field=flag.split("/")[0].lstrip("-").replace("-", "_"))


@dataclass(frozen=True)
class AppendDrops:
    """How many input rows an append left out, as shares only (exact counts over secret records stay here)."""

    rows: int
    late: int
    held: int

    def lines(self, plan: AppendPlan) -> list[str]:
        """For the operator's terminal only: never in metadata, the API, logs or errors."""
        out = []
        if self.late:
            out.append(f"late: {self.late / self.rows:.2%} of rows fall before {plan.start} (served windows are "
                       "immutable): not added")
        if self.held and plan.held is not None:
            out.append(f"held: {self.held / self.rows:.2%} of rows fall in {plan.held[0]}..{plan.held[1]} (window "
                       f"{plan.metadata.window_count} incomplete): not ingested now; give them again when it is "
                       "complete")
        return out


def keep_new_windows(frame: pl.LazyFrame, plan: AppendPlan, path: Path,
                     column: str = "timestamp") -> tuple[pl.LazyFrame, AppendDrops]:
    """Only the rows of the windows written; late and held ones counted (to be reported as shares); rows on or
    after the declared --end-day refused, as a first ingestion refuses them."""
    day = pl.col(column).dt.date()
    beyond = _rows_where(frame, day >= pl.lit(plan.declared_end))
    if beyond:
        raise InvalidData(f"{path.name}: rows {beyond} fall on or after --end-day {plan.declared_end} (exclusive); "
                          "declare a later --end-day or remove them", field=column)
    end = plan.metadata.end_day
    counts = frame.select(pl.len().alias("rows"), (day < pl.lit(plan.start)).sum().alias("late"),
                          (day >= pl.lit(end)).sum().alias("held")).collect().row(0)
    kept = frame.filter((day >= pl.lit(plan.start)) & (day < pl.lit(end)))
    return kept, AppendDrops(int(counts[0]), int(counts[1]), int(counts[2]))


def begin_append(out: Path, options: IngestOptions, *, per_person: bool = True) -> tuple[IngestOptions,
                                                                                        AppendPlan | None]:
    """For an engine: the options to ingest with and the plan (None when not appending)."""
    if not options.append:
        return options, None
    plan = plan_append(out, options, per_person=per_person)
    return plan.options, plan


def check_catalog(plan: AppendPlan | None, catalog: CellCatalog, out: Path) -> None:
    """Before any counting: an append indexes cells as the served windows do, so its catalog must be theirs."""
    if plan is None:
        return
    served = pl.read_parquet(version_dir(out) / "cells.parquet")
    old = CellCatalog.from_columns(served["cell_id"].to_list(), served["lat"].to_list(), served["lon"].to_list())
    if old.cell_ids != catalog.cell_ids or not (old.lat == catalog.lat).all() or not (old.lon == catalog.lon).all():
        raise InvalidData(f"--append: the cell catalog (--cells) differs from the one dataset {plan.served.name!r} "
                          "was written with (cells added, removed or moved); append with the same cells file, or "
                          "re-ingest every window into a new dataset", field="cells")


def drop_late_and_held(frame: pl.LazyFrame, plan: AppendPlan | None, path: Path, warn: Any) -> pl.LazyFrame:
    """The rows an engine ingests; what an append leaves out is told to the operator (`warn`: stderr) as shares."""
    [kept] = drop_late_and_held_each([(path, frame)], plan, warn)
    return kept


def drop_late_and_held_each(files: list[tuple[Path, pl.LazyFrame]], plan: AppendPlan | None,
                            warn: Any) -> list[pl.LazyFrame]:
    """`drop_late_and_held` for several files: each file's rows checked (messages name it), the shares told
    once, over all the files together."""
    if plan is None:
        return [frame for _, frame in files]
    kept, drops = zip(*(keep_new_windows(frame, plan, path) for path, frame in files), strict=True)
    total = AppendDrops(*(sum(getattr(d, f) for d in drops) for f in ("rows", "late", "held")))
    for line in total.lines(plan):
        warn(line)
    return list(kept)


def append_arguments(plan: AppendPlan | None, window_count: int) -> tuple[dict[str, Any], int, int]:
    """(write_aggregates' append arguments, the report's window count, its first window) for an engine."""
    if plan is None:
        return {}, window_count, 0
    return ({"append_from": plan.first_window, "served_version": plan.served_version},
            window_count - plan.first_window, plan.first_window)
