"""Ingestion: raw events (or a ready-made trips table) → bounded aggregates on disk.

    events (person, timestamp, cell_id)            secret; read here and nowhere else
      → presence (person, day, hour, cell), one cell per person-hour,
        and trips (person, time, origin, dest)                                        derive.py
      → exact histogram of records per (person, window), released once with noise     report.py
      → at most L per (person, window)                                               bounding.py
      → counts per (day, hour, cell) and (day, hour, origin, dest)                    aggregates.py
    presence before the L bound (every hour of the person-window)
      → at most one home and one work cell per (person, window)                       derive.py
      → residents per (window, place, cell), commuting per (window, home, work)      aggregates.py

Polars lazy frames throughout, so large inputs are scanned rather than loaded; the person
column never leaves this module, and error messages name files, columns and row numbers only.

Memory is bounded by person-hash buckets: after validation, one streaming pass splits the
events by a hash of the person into B temporary Parquet files, and each bucket is derived,
bounded and counted on its own. Every person (hence every person-window) lies in exactly one
bucket and the bound ranks records within a person-window by a keyed hash of their content,
so the kept records, and the counts summed over buckets, are the same for any B.
"""

from __future__ import annotations

import ctypes
import datetime as dt
import math
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import polars as pl
from polars.io.partition import FileProviderArgs

from dpflows.accounting import accounting as accounting_of
from dpflows.aggregates import DatasetMetadata, write_aggregates
from dpflows.errors import InvalidData
from dpflows.ingest import derive, sorted_bucket
from dpflows.ingest.appending import append_arguments, begin_append, check_catalog, drop_late_and_held
from dpflows.ingest.bounding import bound_per_person_window, cap_per_person_key
from dpflows.ingest.contribution_histograms import ContributionHistograms, release_bounding_report
from dpflows.ingest.event_files import count_rows, describe, event_paths, indexed_events, read_event_files
from dpflows.ingest.inputs import (  # re-exported: callers import them from the pipeline
    Progress,
    ZoningSpec,
    _cell_names,
    _cells_frame,
    _check_events,
    _check_within_span,
    _index_cells,
    _load_zonings,
    _require_columns,
    _rows_where,
    _scan,
    _timestamps,
    _with_window,
    read_cells,
    row_count,
)
from dpflows.ingest.options import (  # re-exported: callers import them from the pipeline
    DEFAULT_BOUND_PRESENCE,
    DEFAULT_BOUND_TRIPS,
    DEFAULT_PLACES,
    DEFAULT_WINDOW_DAYS,
    IngestOptions,
    place_rule,
)
from dpflows.ingest.sorted_bucket import Counts

__all__ = [  # the engine, and what its callers import from here
    "DEFAULT_BOUND_PRESENCE", "DEFAULT_BOUND_TRIPS", "DEFAULT_PLACES", "DEFAULT_WINDOW_DAYS", "IngestOptions",
    "Progress", "ZoningSpec", "choose_buckets", "ingest_events", "ingest_trips_table",
    "place_rule", "read_cells",
]

# Events per bucket when B is chosen from the input size: the derivation holds one bucket's
# events and derived records, so peak memory stays near 1.2 GiB whatever the input (measured,
# docs/scale.md; 1.4-1.5 GiB since one place per person-hour, whose choice per person-hour
# holds the groups' indices), while inputs up to this size (the demo city: 4 M events) take one
# bucket and no temporary files.
BUCKET_EVENTS = 8_000_000
BUCKET_DIR_PREFIX = ".dpflows-buckets-"
_BUCKET_SEED_MASK = 0x3C3C3C3C  # the split's hash seed, apart from the bounding seeds
_PRESENCE_KEYS = ["day", "hour", "cell"]
_TRIP_KEYS = ["day", "hour", "origin", "dest"]
_RESIDENT_KEYS = ["window", "place", "cell"]
_COMMUTING_KEYS = ["window", "home", "work"]


def choose_buckets(events: int, per_bucket: int = BUCKET_EVENTS) -> int:
    """B for an input of `events` rows: about `per_bucket` events each, one bucket for small inputs."""
    return max(1, -(-events // per_bucket))


@dataclass(frozen=True)
class _Buckets:
    """The events, split into person-hash buckets, and where bucket results wait to be summed."""

    parts: list[pl.LazyFrame]  # (person, timestamp, cell): each person's rows in exactly one part; none: no rows
    spill: Path | None  # with B > 1, per-bucket counts go to Parquet here instead of staying in memory

    def keep(self, counts: pl.DataFrame, name: str) -> pl.LazyFrame:
        """Hold one bucket's counts until the sum: on disk, so memory does not grow with B."""
        if self.spill is None:
            return counts.lazy()
        path = self.spill / f"{name}.parquet"
        counts.write_parquet(path, compression="lz4")
        return pl.scan_parquet(path)


@contextmanager
def _event_buckets(events: pl.LazyFrame, buckets: int, *, seed: int, work_dir: Path,
                   progress: Progress) -> Iterator[_Buckets]:
    """The events in person-hash buckets; with B > 1 as Parquet files deleted on exit, also on error.

    The temporary directory is made next to the output (the dataset's disk, not a /tmp that
    may live in memory), readable by this user only: it holds pseudonyms until ingestion ends.
    """
    if buckets == 1:
        # Read once: every later pass (span, presence, trips) works on these compact columns
        # (person, timestamp, cell index) instead of decoding the file again.
        yield _Buckets([events.collect(engine="streaming").lazy()], None)
        return
    work_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=BUCKET_DIR_PREFIX, dir=work_dir) as tmp:
        root = Path(tmp).resolve()  # absolute: polars joins a relative file path to the partition base again
        progress.phase(f"splitting events by person into {buckets} buckets")

        def bucket_file(args: FileProviderArgs) -> Path:
            return root / f"bucket-{args.partition_keys['_bucket'][0]}-{args.index_in_partition}.arrow"

        # One streaming pass: (person, timestamp, cell) -> B files, each person in exactly one. Arrow
        # IPC, uncompressed: about 19 bytes per event on disk, written and read back at memory speed
        # (lz4 Parquet took half the disk but twice the CPU of the whole split)
        events.with_columns((pl.col("person").hash(seed ^ _BUCKET_SEED_MASK) % buckets).alias("_bucket")).sink_ipc(
            pl.PartitionBy(root, key="_bucket", include_key=False, file_path_provider=bucket_file),
            compression="uncompressed", maintain_order=False, engine="streaming")
        files = [sorted(root.glob(f"bucket-{k}-*.arrow")) for k in range(buckets)]
        (root / "counts").mkdir()
        # a bucket no person hashed to has no file (no rows: none at all)
        yield _Buckets([pl.scan_ipc(f) for f in files if f], root / "counts")


def ingest_events(events_path: str | Path | Sequence[str | Path], cells_path: str | Path, out_dir: str | Path,
                  options: IngestOptions, *, progress: Progress | None = None) -> Path:
    """Raw network events (one file or several: daily files) → bounded presence, trip, residents and commuting
    counts, as a dataset directory.

    `options.buckets` (default: from the input size, see `choose_buckets`) bounds memory; it never
    changes the output. With report_epsilon > 0 (default 0.05) the dataset also gets a bounding
    report (dpflows.ingest.contribution_histograms), charged at that ε in every window before the dataset is served.
    With ``accounting="zcdp"`` each person also adds at most `key_cap_trips` to any one trips
    row, the per-key cap that the Gaussian's ℓ2 sensitivity rests on. `places` sets the hours
    and days from which each person-window's home and work cell are derived (default:
    `DEFAULT_PLACES`, its minimum of work days lowered for windows too short to hold it).
    """
    options.check_input(("events",), "ingest_events")
    progress = progress or Progress()
    out = Path(out_dir)
    options, plan = begin_append(out, options)  # appending: the served grid, the new windows' span
    start, end = options.span
    paths = event_paths(events_path)
    seed = options.drawn_seed()
    histograms = ContributionHistograms(enabled=options.report_budget.nanos > 0)
    meta = options.events_metadata() if plan is None else plan.metadata
    progress.phase(f"reading {Path(cells_path).name} and checking {describe(paths)}")
    catalog, lookup = read_cells(cells_path)
    check_catalog(plan, catalog, out)
    zonings = _load_zonings(options.zonings, catalog)
    rows = count_rows(paths)  # also finds a truncated file, named, before any other pass reads it
    # each file read and named on its own (appending or zoned: parsed local times, the new windows' rows only)
    sources = read_event_files(paths, plan, options.time_zone, progress.warn)
    files = [(f.path, f.frame) for f in sources]
    # (person, timestamp, cell index) of all files: read once, checked in one pass; null cell = not in the catalog
    indexed = indexed_events(sources, catalog)
    buckets = options.buckets or choose_buckets(rows)
    key_cap = accounting_of(meta.accounting).key_cap_trips(meta)
    with _event_buckets(indexed, buckets, seed=seed, work_dir=out.parent, progress=progress) as split:
        if not split.parts:
            _check_events(indexed, files, lookup, start, end, options.missing_days)  # raises: no rows
        kept: dict[str, list[pl.LazyFrame]] = {"trips": [], "presence": [], "residents": [], "commuting": []}
        for number, part in enumerate(split.parts, start=1):
            label = f"bucket {number}/{len(split.parts)}: " if len(split.parts) > 1 else ""
            # one bucket: (person, timestamp, cell) of its persons, all of each person's events, in memory
            events = part.collect()
            # checked in memory, bucket by bucket (a few vector passes); a wrong row anywhere stops
            # ingestion before anything is written, with the message naming the input's rows
            _check_events(events.lazy(), files, lookup, start, end, options.missing_days)
            counts = _bucket_counts(events, options, n_cells=len(catalog), key_cap=key_cap,
                                    seed=seed, histograms=histograms, progress=progress, label=label)
            del events
            for measure, frames in kept.items():
                frames.append(split.keep(getattr(counts, measure), f"{measure}-{number}"))
            del counts
            if split.spill is not None:
                _return_freed_memory()
        progress.phase("summing over buckets, writing aggregates")
        # disjoint persons: counts add up key by key over buckets, then cell ids, in key order:
        # (day, hour, cell) -> count, (day, hour, origin, dest) -> count,
        # (window, place, cell) -> count, (window, home, work) -> count
        ids = lookup["_cell_id"]
        pres_counts, trip_counts, residents, commuting = (
            _table(kept[measure], keys, cells, ids, meta)
            for measure, keys, cells in (("presence", _PRESENCE_KEYS, ["cell"]),
                                         ("trips", _TRIP_KEYS, ["origin", "dest"]),
                                         ("residents", _RESIDENT_KEYS, ["cell"]),
                                         ("commuting", _COMMUTING_KEYS, ["home", "work"])))
    # histograms of all buckets, summed by `histograms.add` (disjoint persons), released once with noise
    appended, windows, first_window = append_arguments(plan, meta.window_count)
    report = release_bounding_report(histograms, options.report_budget, windows, first_window)
    write_aggregates(out, meta, _cells_frame(catalog), trip_counts, pres_counts, bounding_report=report,
                     residents=residents, commuting=commuting, zonings=zonings, **appended)
    progress.phase(f"done: dataset {options.name!r} in {out}")
    return out


def _return_freed_memory() -> None:
    """Give a finished bucket's freed arrays back to the system (glibc keeps them in its arenas otherwise).

    Without it the next bucket, and the final sum, start on top of the last one's leftovers: at
    1 M persons (7 buckets) the peak was 1.16-1.39 GiB instead of 1.08 GiB. Elsewhere a no-op.
    """
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: its allocator returns memory its own way
        pass


def _sum_counts(parts: list[pl.LazyFrame], keys: list[str]) -> pl.LazyFrame:
    """Counts of disjoint person sets, summed per key."""
    return pl.concat(parts).group_by(keys).agg(pl.col("count").sum())


def _table(parts: list[pl.LazyFrame], keys: list[str], cells: list[str], ids: pl.Series,
           meta: DatasetMetadata) -> pl.LazyFrame:
    """One measure's counts: summed over buckets (disjoint persons), sorted by key, cell indexes → cell ids.

    Cell indexes follow the catalog's sorted ids, so index order is id order. The keys are packed
    into one integer for the sum and the sort where they fit. One chunk makes the Parquet file's
    row groups, hence its bytes, depend on its content only (not on how the sum was chunked).
    """
    radix = _radix(keys, meta, len(ids))
    if len(parts) == 1:  # one bucket: one row per key already
        counts = parts[0].collect()
        counts = counts.sort(_packed(keys, radix, meta) if radix else keys)
    elif not radix:
        counts = _sum_counts(parts, keys).collect(engine="streaming").sort(keys)
    else:
        summed = (pl.concat(parts).group_by(_packed(keys, radix, meta).alias("_key")).agg(pl.col("count").sum())
                  .collect(engine="streaming").sort("_key"))
        counts = summed.select(*_unpacked(keys, radix, meta), "count")
    # cell ids gathered lazily: the writer's streaming sink makes the strings a morsel at a time
    return counts.rechunk().lazy().with_columns(pl.lit(ids).gather(pl.col(cell)).alias(cell) for cell in cells)


def _radix(keys: list[str], meta: DatasetMetadata, n_cells: int) -> list[int]:
    """How many values each key column takes, when they pack into 63 bits (else none)."""
    sizes = {"day": (meta.end_day - meta.first_day).days, "hour": 24, "window": meta.window_count, "place": 2}
    radix = [sizes.get(key, n_cells) for key in keys]
    return radix if math.prod(radix) < 2**63 else []


def _packed(keys: list[str], radix: list[int], meta: DatasetMetadata) -> pl.Expr:
    """The key columns as one integer in their sort order (mixed radix)."""
    value = {"day": (pl.col("day") - pl.lit(meta.first_day)).dt.total_days(),
             "place": pl.col("place") == "work"}  # home < work, as the names sort
    packed = pl.lit(0, pl.UInt64)
    for key, size in zip(keys, radix, strict=True):
        packed = packed * size + value.get(key, pl.col(key)).cast(pl.UInt64)
    return packed


def _unpacked(keys: list[str], radix: list[int], meta: DatasetMetadata) -> list[pl.Expr]:
    """The key columns back from `_packed` ones (column `_key`)."""
    epoch = (meta.first_day - dt.date(1970, 1, 1)).days
    columns: list[pl.Expr] = []
    rest = pl.col("_key")
    for key, size in reversed(list(zip(keys, radix, strict=True))):
        value = rest % size
        columns.insert(0, {"day": (value + epoch).cast(pl.Int32).cast(pl.Date),
                           "hour": value.cast(pl.Int8), "window": value.cast(pl.Int64),
                           "place": pl.when(value == 1).then(pl.lit("work")).otherwise(pl.lit("home"))
                           }.get(key, value.cast(pl.UInt32)).alias(key))
        rest = rest // size
    return columns


def _bucket_counts(events: pl.DataFrame, options: IngestOptions, *, n_cells: int, key_cap: int | None, seed: int,
                   histograms: ContributionHistograms, progress: Progress, label: str) -> Counts:
    """One bucket's events → its bounded counts: a person-window lies wholly in one bucket, so bounds hold.

    The exact contribution histograms of the bucket's person-windows are added to `histograms`.
    One sort of the events (sorted_bucket.py), or for input it does not pack the reference below.
    """
    progress.phase(f"{label}deriving trips, presence and places, bounding per person-window")
    try:
        return sorted_bucket.bucket_counts(
            events, first_day=options.span[0], window_days=options.window_days, n_cells=n_cells,
            bound_presence=options.bound_presence, bound_trips=options.trips_bound(), trip_rule=options.trip_rule,
            min_dwell=dt.timedelta(minutes=options.min_dwell_minutes), places=options.place_rule, key_cap=key_cap,
            seed=seed, histograms=histograms)
    except sorted_bucket.Unsupported:
        return _reference_bucket_counts(events.lazy(), options, key_cap=key_cap, seed=seed, histograms=histograms)


def _reference_bucket_counts(events: pl.LazyFrame, options: IngestOptions, *, key_cap: int | None, seed: int,
                             histograms: ContributionHistograms) -> Counts:
    """derive.py and bounding.py applied as written: what sorted_bucket computes faster, and its fallback."""
    start, window_days, places = options.span[0], options.window_days, options.place_rule
    # (person, window, day, hour, cell): one cell per (person, day, hour); held in memory, read three times
    hour_cells = _with_window(derive.presence(events, seed=seed), start, window_days).collect(engine="streaming").lazy()
    histograms.add("presence", hour_cells)  # exact, before bounding; released with noise only
    # (person, window) -> at most L_presence (day, hour, cell), at most one per (day, hour)
    pres = bound_per_person_window(hour_cells, options.bound_presence, seed=seed)
    # (day, hour, cell) -> count; collected with the histogram
    pres_plan = pres.group_by(_PRESENCE_KEYS).agg(pl.len().cast(pl.Int64).alias("count"))
    # places from every hour of the person-window (not the L sample): (person, window) -> at most one home
    home = derive.homes(hour_cells, places, seed=seed)
    # (person, window) -> at most one work cell, never the home
    work = derive.works(hour_cells, home, places, seed=seed)
    pres_counts, residents, commuting = histograms.collect_with(pres_plan, *_place_counts(home, work))
    # (person, timestamp, origin, dest)
    trip_rows = derive.trips(events, rule=options.trip_rule, min_dwell=dt.timedelta(minutes=options.min_dwell_minutes))
    # (day, hour, origin, dest) -> count of trips kept, at most L_trips per (person, window)
    [trip_counts] = histograms.collect_with(_bounded_trip_counts(trip_rows, start, window_days, options.trips_bound(),
                                                                 seed=seed ^ sorted_bucket.TRIP_SEED_MASK,
                                                                 key_cap=key_cap,
                                                                 histograms=histograms))
    return Counts(trip_counts, pres_counts, residents, commuting)


def _place_counts(home: pl.LazyFrame, work: pl.LazyFrame) -> tuple[pl.LazyFrame, pl.LazyFrame]:
    """Homes and work cells of person-windows (at most one each) → residents and commuting counts (cell indexes)."""
    places = pl.concat([home.with_columns(pl.lit("home").alias("place")),
                        work.with_columns(pl.lit("work").alias("place"))])
    # (window, place, cell) -> persons: each person-window at most 1 per place
    residents = places.group_by(_RESIDENT_KEYS).agg(pl.len().cast(pl.Int64).alias("count"))
    # (person, window) -> (home, work) where both exist, home != work
    pairs = home.join(work, on=["person", "window"], how="inner", suffix="_work").select(
        "window", pl.col("cell").alias("home"), pl.col("cell_work").alias("work"))
    # (window, home, work) -> persons: each person-window at most 1
    commuting = pairs.group_by(_COMMUTING_KEYS).agg(pl.len().cast(pl.Int64).alias("count"))
    return residents, commuting


def _bounded_trip_counts(trip_rows: pl.LazyFrame, start: dt.date, window_days: int, bound: int, *,
                         seed: int, key_cap: int | None = None,
                         histograms: ContributionHistograms | None = None) -> pl.LazyFrame:
    rows = trip_rows.with_columns(pl.col("timestamp").dt.date().alias("day"),
                                  pl.col("timestamp").dt.hour().cast(pl.Int8).alias("hour"))
    if key_cap is not None:
        # (person, day, hour, origin, dest) -> at most key_cap trips (zCDP's per-key cap)
        rows = cap_per_person_key(rows, key_cap, keys=["day", "hour", "origin", "dest"])
    rows = _with_window(rows, start, window_days)
    if histograms is not None:
        histograms.add("trips", rows)  # exact, before the L bound; released with noise only
    rows = bound_per_person_window(rows, bound, seed=seed)
    return rows.group_by("day", "hour", "origin", "dest").agg(pl.len().cast(pl.Int64).alias("count"))


def ingest_trips_table(trips_path: str | Path | pl.DataFrame, cells_path: str | Path, out_dir: str | Path,
                       options: IngestOptions, *, progress: Progress | None = None) -> Path:
    """A ready-made trips table (person?, timestamp, origin, dest) → bounded trip counts.

    Without a person column every trip is its own privacy unit: the dataset says so (unit
    ``trip``, stated by every answer) and the bound defaults to 1, since each unit has exactly one
    trip. Presence is then empty (no per-person hours can be derived) and no bounding report is
    made (nothing to learn, nothing to spend). With a person column the unit is the
    person-window and the bound defaults to DEFAULT_BOUND_TRIPS.
    """
    options.check_input(("trips", "citibike"), "ingest_trips_table")
    progress = progress or Progress()
    out = Path(out_dir)
    if isinstance(trips_path, pl.DataFrame):
        path, frame = Path("trips table"), trips_path.lazy()
    else:
        path = Path(trips_path)
        frame = _scan(path)
        row_count(path, frame)  # a truncated or corrupt file is named before any check reads it
    _require_columns(frame, path, ["timestamp", "origin", "dest"])
    has_person = "person" in frame.collect_schema().names()
    options, plan = begin_append(out, options, per_person=has_person)  # appending: the served grid, new span
    start, end = options.span
    seed = options.drawn_seed()
    frame = drop_late_and_held(_timestamps(frame, path, "timestamp", options.time_zone), plan, path, progress.warn)
    catalog, lookup = read_cells(cells_path)
    check_catalog(plan, catalog, out)
    zonings = _load_zonings(options.zonings, catalog)
    frame = _index_cells(frame, lookup, path, "origin", "origin")
    frame = _index_cells(frame, lookup, path, "dest", "dest")
    if has_person:
        # an empty id would make every such trip one person's: bounded together, beyond L
        if frame.collect_schema()["person"] == pl.String:
            frame = frame.with_columns(pl.col("person").str.strip_chars())
            empty = _rows_where(frame, pl.col("person").is_null() | (pl.col("person") == ""))
        else:
            empty = _rows_where(frame, pl.col("person").is_null())
        if empty:
            raise InvalidData(f"{path.name}: column 'person' is empty in rows {empty}; every trip needs its "
                              "person's pseudonym, or drop the column to make each trip its own unit",
                              field="person")
    else:
        frame = frame.with_row_index("person")
    trips = frame.select("person", "timestamp", "origin", "dest")
    _check_within_span(trips, path, start, end, options.missing_days)
    bound_trips = options.trips_bound(per_person=has_person)
    if not has_person and bound_trips > 1:
        progress.warn(f"--bound-trips {bound_trips} with one trip per unit adds {bound_trips}x the noise needed; "
                      "each trip is its own unit here, so 1 (the default) is exact")
    meta = options.trips_metadata(per_person=has_person) if plan is None else plan.metadata
    progress.phase("bounding trips per person-window")
    histograms = ContributionHistograms(enabled=has_person and options.report_budget.nanos > 0)
    counts_lazy = _bounded_trip_counts(trips, start, options.window_days, bound_trips, seed=seed,
                                       key_cap=accounting_of(meta.accounting).key_cap_trips(meta),
                                       histograms=histograms)
    [counts] = histograms.collect_with(_cell_names(counts_lazy, lookup, ["origin", "dest"]))
    appended, windows, first_window = append_arguments(plan, meta.window_count)
    report = release_bounding_report(histograms, options.report_budget, windows, first_window)
    empty_presence = pl.DataFrame(schema={"day": pl.Date, "hour": pl.Int8, "cell": pl.String, "count": pl.Int64})
    write_aggregates(out, meta, _cells_frame(catalog), counts, empty_presence, bounding_report=report,
                     zonings=zonings, **appended)
    progress.phase(f"done: dataset {options.name!r} in {out}")
    return out
