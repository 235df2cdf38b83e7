"""demo-city, ingest and demo: making and loading data (dpflows.demo, dpflows.ingest)."""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from typing import TYPE_CHECKING

from dpflows.cli.service_commands import _run_serve

if TYPE_CHECKING:
    from pathlib import Path

    from dpflows.aggregates import PlaceRule
    from dpflows.ingest.options import IngestOptions


def _add_data_commands(sub: argparse._SubParsersAction) -> None:
    """demo-city, ingest and demo (dpflows.demo, dpflows.ingest)."""
    p = sub.add_parser("demo-city", help="generate a synthetic city: events, cells and zonings",
                       description="Without --cells: the demo city, a 20 x 20 grid of cells with zonings districts "
                                   "and sectors. With --cells N: a real-scale city of N cells (dense core, "
                                   "sub-centres, sparse periphery) with a k-means zoning of --zones zones (CSV and "
                                   "GeoJSON polygons) and sectors; written in chunks of persons, so memory does not "
                                   "grow with --persons.")
    p.add_argument("--persons", type=int, default=2000)
    p.add_argument("--cells", type=int, default=None, help="a real-scale city of this many cells, e.g. 5000")
    p.add_argument("--zones", type=int, default=1000, help="with --cells: zones of the k-means zoning zones<N>")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--days", type=int, default=28)
    p.add_argument("--start", type=_date, default=None, help="first day, ISO (default 2024-03-04, a Monday)")
    p.add_argument("--out", required=True)
    p.set_defaults(run=_run_demo_city)

    p = sub.add_parser("ingest", help="events (or a trips table) + cell catalog -> bounded aggregates",
                       description="Read the input files (several at once: daily files, CSV or Parquet, in any "
                                   "mix), bound each person's contribution and write the dataset at --out. Nothing "
                                   "is written there unless ingestion succeeds; errors name the file, its rows "
                                   "and the column.")
    p.add_argument("events", nargs="+", help="input file(s): events (Parquet, CSV or CSV.gz: person, timestamp, "
                   "cell_id), several at once (e.g. the daily files events-2024-03-*.parquet); with --input-format "
                   "trips one trips table ([person,] timestamp, origin, dest); with --input-format citibike the "
                   "published Citi Bike trip CSVs, several days at once")
    p.add_argument("--cells", required=True, help="cell catalog CSV or Parquet: cell_id, lat, lon (citibike: the "
                   "published stations.csv)")
    p.add_argument("--input-format", choices=["events", "trips", "citibike"], default=None,
                   help="events (default), trips (a ready-made trips table) or citibike (published trip files)")
    p.add_argument("--strict", action="store_true", help="citibike: make any dropped row an error")
    p.add_argument("--drop-report", default=None, metavar="FILE",
                   help="citibike: also write what was dropped and why to FILE (mode 0600); exact figures, kept "
                        "out of the dataset and the service")
    p.add_argument("--out", required=True, help="dataset directory to write, e.g. var/data/datasets/NAME")
    p.add_argument("--name", default=None, help="dataset name: must be the --out folder's name (the default)")
    p.add_argument("--window-days", type=int, default=None, help="days per window, the privacy unit's span (default 7)")
    p.add_argument("--bound-trips", type=int, default=None,
                   help="L_trips per privacy unit (the sensitivity); default 20 per person-window, 1 when each trip "
                        "is its own unit (a trips table without persons, Citi Bike)")
    p.add_argument("--bound-presence", type=int, default=None,
                   help="L_presence: most presence-hours (one place each) kept per person-window (default 60)")
    p.add_argument("--trip-rule", choices=["stay", "consecutive"], default=None, help="default stay")
    p.add_argument("--min-dwell-minutes", type=float, default=None, help="stay rule: default 30")
    p.add_argument("--first-day", type=_date, default=None,
                   help="first day the dataset holds (ISO); windows are aligned to it, for the dataset's life. "
                        "Required, except with --append, which takes the dataset's own (a different one is refused)")
    p.add_argument("--end-day", type=_date, required=True,
                   help="the day after the last day the dataset holds (exclusive, ISO); declared and published, "
                        "never measured from the events")
    p.add_argument("--days", default=None, metavar="LIST",
                   help="the days inside [--first-day, --end-day) the input holds, when not all of them: ISO dates "
                        "and inclusive ranges, comma-separated (2017-04-18,2017-05-01..2017-05-07); the others are "
                        "declared missing, published, and count nothing")
    p.add_argument("--trips-table", action="store_true", help="alias of --input-format trips")
    p.add_argument("--zoning", action="append", default=[], metavar="NAME=CSV[:coarse:MIN]",
                   help="a public zoning to load with the dataset (repeatable)")
    p.add_argument("--accounting", choices=["pure_dp", "zcdp", "approx_dp"], default=None,
                   help="pure_dp: discrete Laplace, budgets in epsilon; zcdp: discrete Gaussian, budgets in rho; "
                        "approx_dp: budgets in (epsilon, delta), answers above --dense-limit keys released sparsely "
                        "(only keys above a threshold, e.g. cell-level OD; --bound-trips then defaults to 5)")
    p.add_argument("--key-cap-trips", type=int, default=None,
                   help="zcdp, approx_dp: most trips one person adds to one (day, hour, origin, dest) row (default 1)")
    p.add_argument("--dense-limit", type=int, default=None, metavar="KEYS",
                   help="answers with more keys than this are released sparsely (approx_dp) or refused (default "
                        "100000); public, stored with the dataset")
    p.add_argument("--delta", type=float, default=None,
                   help="zcdp: the delta at which rho is shown as (epsilon, delta) (default 1e-8)")
    p.add_argument("--population", default=None, metavar="NAME",
                   help="the people this data is drawn from: datasets of one population share its budget (one "
                        "global cap per window, in one measure, and its horizon cap); default: the data root's "
                        "default population, shared by every dataset ingested without this flag")
    p.add_argument("--engine", choices=["polars", "spark"], default="polars",
                   help="spark: PySpark (pip install dpflows[spark]); the master comes from spark-submit; the input "
                        "paths may also be directories of Parquet files or s3a:// URLs")
    p.add_argument("--report-epsilon", default=None,
                   help="epsilon of the bounding report (share dropped by L, quantiles, suggested L), charged "
                        "once in every window against the global cap before the dataset is served; 0: none "
                        "(default 0.05)")
    p.add_argument("--buckets", type=int, default=None, metavar="N",
                   help="polars: split persons into N hash buckets ingested one at a time, to bound memory "
                   "(default: from the input size, one per 8 million events); the output does not depend on N")
    p.add_argument("--home-hours", type=_hour_span, default=None, metavar="FROM-TO",
                   help="night hours [FROM, TO) of local time from which each person-window's home cell is "
                        "derived, wrapping past midnight (default 22-6)")
    p.add_argument("--work-hours", type=_hour_span, default=None, metavar="FROM-TO",
                   help="weekday (Mon-Fri) daytime hours [FROM, TO) from which the work cell is derived (default 9-17)")
    p.add_argument("--min-work-days", type=int, default=None, metavar="N",
                   help="a work cell must be seen in work hours on at least N distinct days of the window "
                        "(default 3, fewer in windows too short for 3 weekdays)")
    p.add_argument("--time-zone", default=None, metavar="IANA",
                   help="the dataset's time zone (Europe/Paris): dates and hours are local, timestamps with a zone "
                        "or offset are converted to it, naive ones are taken as local times (default: as given)")
    p.add_argument("--append", action="store_true",
                   help="add the complete windows after the served ones to the dataset at --out (served windows stay "
                        "as they are; late rows for them and the rows of an incomplete last window are left out and "
                        "reported as shares); settings not given (--first-day, the bounds, the window, the time "
                        "zone) are the dataset's, and a different one is refused")
    p.add_argument("--close-window", action="store_true",
                   help="with --append: publish an incomplete last window with the days given (its other days "
                        "declared missing) instead of holding it")
    p.set_defaults(run=_run_ingest)

    p = sub.add_parser("demo", help="generate and ingest the demo city once, create sample clients, and serve")
    p.add_argument("--home", default="./var/demo", help="where the demo's data and ledger live")
    p.add_argument("--persons", type=int, default=20000, help="city size (default 20,000: about 20 s to prepare, once)")
    p.add_argument("--bind", default="127.0.0.1:8000")
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--no-serve", action="store_true", help="prepare only, do not start gunicorn")
    p.set_defaults(run=_run_demo)


def _date(text: str) -> dt.date:

    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO date such as 2024-03-04") from None


def _hour_span(text: str) -> tuple[int, int]:
    start, sep, stop = text.partition("-")
    if not sep or not start.strip().isdigit() or not stop.strip().isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not FROM-TO hours such as 22-6 or 9-17")
    return int(start), int(stop)


def _place_rule(args: argparse.Namespace) -> PlaceRule | None:
    """The home and work rule the flags ask for; None (the default, fitted to the window) when none is given."""
    from dataclasses import replace

    from dpflows.aggregates import PlaceRule

    given = {k: v for k, v in (("home_hours", args.home_hours), ("work_hours", args.work_hours),
                               ("min_work_days", args.min_work_days)) if v is not None}
    return replace(PlaceRule(), **given) if given else None


def _run_demo_city(args: argparse.Namespace) -> int:
    from dpflows.demo import generate_city
    from dpflows.demo_scaled import generate_scaled_city
    from dpflows.errors import InvalidInput

    start = args.start or dt.date(2024, 3, 4)
    if args.cells is None:
        files = generate_city(args.out, persons=args.persons, seed=args.seed, days=args.days, start=start)
        print(f"events: {files.events}\ncells: {files.cells}\nzonings: {files.districts}, {files.sectors} "
              "(coarse, 50)")
        return 0
    if args.cells < 10 or args.zones < 1 or args.persons < 1 or args.days < 1:
        raise InvalidInput("--cells must be at least 10, and --zones, --persons and --days at least 1", field="cells")
    scaled = generate_scaled_city(args.out, cells=args.cells, persons=args.persons, zones=args.zones,
                                  seed=args.seed, days=args.days, start=start)
    zoning_args = " ".join(f"--zoning {name}={path}" + (f":coarse:{scaled.coarse[name]}" if name in scaled.coarse
                                                          else "") for name, path in scaled.zonings.items())
    print(f"events: {scaled.events}\ncells: {scaled.cells} ({args.cells} cells)")
    for name, path in scaled.zonings.items():
        polygons = scaled.polygons.get(name)
        print(f"zoning {name}: {path}" + (f" (polygons: {polygons})" if polygons else ""))
    print(f"ingest: dpflows ingest {scaled.events} --cells {scaled.cells} --out DATA_DIR/datasets/NAME "
          f"--first-day {scaled.first_day} --end-day {scaled.end_day} {zoning_args}")
    return 0


def ingest_options(args: argparse.Namespace) -> IngestOptions:
    """The `ingest` flags as the one IngestOptions every engine reads; checked here, before any file is read.

    A flag whose dest is a field of IngestOptions is copied over by name when given (its default
    is the record's, never the parser's); only flags that are spelled differently are mapped below.
    """
    from dataclasses import fields
    from pathlib import Path

    from dpflows.errors import InvalidData
    from dpflows.ingest.inputs import ZoningSpec
    from dpflows.ingest.options import IngestOptions

    name = args.name or Path(args.out).name
    if name != Path(args.out).name:
        raise InvalidData(f"--name {name!r} differs from the --out folder {Path(args.out).name!r}; a dataset is served "
                          "under its folder's name, so drop --name or write to a folder of that name", field="name")
    if args.trips_table and args.input_format not in (None, "trips"):
        raise InvalidData("--trips-table is an alias of --input-format trips; give one of them", field="input_format")
    given = {f.name: getattr(args, f.name) for f in fields(IngestOptions) if getattr(args, f.name, None) is not None}
    given.update(name=name, input_format="trips" if args.trips_table else (args.input_format or "events"),
                 zonings=[ZoningSpec.parse(z) for z in args.zoning], places=_place_rule(args))
    if args.append:  # what is not given is the served dataset's (a different value given is refused)
        from dpflows.ingest.appending import served_options

        given = {**served_options(Path(args.out)), **{k: v for k, v in given.items() if v is not None}}
    if args.days is not None:
        first_day = given.get("first_day")
        if first_day is None:
            raise InvalidData("--days needs --first-day: declare the first day the dataset holds", field="first_day")
        given["missing_days"] = _missing_days(args.days, first_day, args.end_day)
    options = IngestOptions(**given)
    options.check_engine(args.engine)
    return options


def _run_ingest(args: argparse.Namespace) -> int:
    from pathlib import Path

    from dpflows.errors import InvalidData
    from dpflows.ingest.pipeline import ingest_events, ingest_trips_table

    options = ingest_options(args)
    fmt = options.input_format
    if fmt != "citibike" and (args.strict or args.drop_report):
        raise InvalidData("--strict and --drop-report apply to --input-format citibike", field="strict")
    if len(args.events) > 1 and fmt == "trips":
        raise InvalidData("--input-format trips reads one trips table; give one path (events and citibike read "
                          "several)", field="path")
    from dpflows.ingest.appending import WindowHeld

    try:
        if fmt == "citibike":
            out = _ingest_citibike(args, options)
        elif options.trips_table:
            out = ingest_trips_table(args.events[0], args.cells, args.out, options)
        elif args.engine == "spark":
            from dpflows.ingest.spark import ingest_events_spark

            out = ingest_events_spark(args.events, args.cells, args.out, options)
        else:
            out = ingest_events(args.events, args.cells, args.out, options)
    except WindowHeld as held:  # a daily append before its window is complete: nothing to do yet
        print(f"dpflows ingest: nothing appended: {held.message}", file=sys.stderr)
        return 0
    print(f"dataset {options.name!r} {'appended to' if options.append else 'written to'} {out}")
    _print_bounding_report(Path(out))
    return 0


def _missing_days(text: str, first_day: dt.date, end_day: dt.date) -> list[dt.date]:
    """--days as the days of [first_day, end_day) it does not list."""
    from dpflows.errors import InvalidData

    held: set[dt.date] = set()
    for part in (p.strip() for p in text.split(",") if p.strip()):
        lo, _, hi = part.partition("..")
        try:
            a, b = dt.date.fromisoformat(lo), dt.date.fromisoformat(hi or lo)
        except ValueError:
            raise InvalidData(f"--days {part!r} is not an ISO date or an inclusive range such as "
                              "2024-03-04..2024-03-10", field="days") from None
        if b < a or a < first_day or b >= end_day:
            raise InvalidData(f"--days {part!r} must lie inside [--first-day {first_day}, --end-day {end_day})",
                              field="days")
        held |= {a + dt.timedelta(days=k) for k in range((b - a).days + 1)}
    return [first_day + dt.timedelta(days=k) for k in range((end_day - first_day).days)
            if first_day + dt.timedelta(days=k) not in held]


def _ingest_citibike(args: argparse.Namespace, options: IngestOptions) -> Path:
    """Published Citi Bike files → a trips-table dataset; what was dropped goes to this terminal only."""
    import os
    import tempfile
    from pathlib import Path

    from dpflows.errors import InvalidData
    from dpflows.ingest.citibike import read_citibike
    from dpflows.ingest.pipeline import ingest_trips_table

    trips, cells, dropped = read_citibike(args.events, args.cells)
    for line in dropped.lines():
        print(f"dpflows ingest: {line}", file=sys.stderr)
    if args.drop_report:
        try:
            fd = os.open(args.drop_report, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            raise InvalidData(f"--drop-report {args.drop_report}: cannot be written ({exc.strerror}); give a file in "
                              "a directory you can write (not a link)", field="drop_report") from None
        with os.fdopen(fd, "w") as report:
            report.write("\n".join(dropped.lines()) + "\n")
    if args.strict and dropped.total_dropped:
        raise InvalidData("--strict: rows were dropped (see the lines above); fix the input files or drop --strict",
                          field="strict")
    with tempfile.TemporaryDirectory(prefix="dpflows-stations-") as tmp:
        cells_csv = Path(tmp) / "cells.csv"
        cells.write_csv(cells_csv)
        return ingest_trips_table(trips, cells_csv, args.out, options)


def _print_bounding_report(out: Path) -> None:
    """The noisy report's summary, for the operator who ran ingestion (charged before the service serves it)."""
    from dpflows.aggregates import load_dataset
    from dpflows.cells import CELL_ZONING
    from dpflows.contribution_report import format_report, report_document

    data = load_dataset(out)
    if data.bounding_report is None:
        return
    zones = [z.zone_count for name, z in data.zonings.items() if name != CELL_ZONING]
    meta = data.metadata
    doc = report_document(data.bounding_report, {"trips": meta.bound_trips, "presence": meta.bound_presence},
                          max(zones, default=None))
    print(format_report(doc))


def _run_demo(args: argparse.Namespace) -> int:
    from pathlib import Path

    from dpflows.quickstart import prepare_demo

    home = Path(args.home).resolve()
    prepare_demo(home, persons=args.persons, bind=args.bind)
    if args.no_serve:
        return 0
    serve = argparse.Namespace(data_dir=str(home / "data"), ledger_url=f"sqlite:///{home / 'ledger.db'}",
                               bind=args.bind, workers=args.workers)
    return _run_serve(serve)
