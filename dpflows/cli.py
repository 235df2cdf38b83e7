"""The `dpflows` command: demo city, ingestion, serving and admin tasks."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from typing import TYPE_CHECKING, Any

from dpflows.errors import DpflowsError

if TYPE_CHECKING:
    from pathlib import Path

    from dpflows.aggregates import PlaceRule
    from dpflows.service import Service


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

    p = sub.add_parser("ingest", help="events (or a trips table) + cell catalog -> bounded aggregates")
    p.add_argument("events", nargs="+", help="input file(s): events (Parquet or CSV: person, timestamp, cell_id); "
                   "with --input-format trips a trips table ([person,] timestamp, origin, dest); with "
                   "--input-format citibike the published Citi Bike trip CSVs, several days at once")
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
    p.add_argument("--window-days", type=int, default=7)
    p.add_argument("--bound-trips", type=int, default=None,
                   help="L_trips per privacy unit (the sensitivity); default 20 per person-window, 1 when each trip "
                        "is its own unit (a trips table without persons, Citi Bike)")
    p.add_argument("--bound-presence", type=int, default=60,
                   help="L_presence: most presence-hours (one place each) kept per person-window (default 60)")
    p.add_argument("--trip-rule", choices=["stay", "consecutive"], default="stay")
    p.add_argument("--min-dwell-minutes", type=float, default=30)
    p.add_argument("--first-day", type=_date, required=True,
                   help="first day the dataset holds (ISO); windows are aligned to it, for the dataset's life")
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
    p.add_argument("--accounting", choices=["pure_dp", "zcdp"], default="pure_dp",
                   help="pure_dp: discrete Laplace, budgets in epsilon; zcdp: discrete Gaussian, budgets in rho")
    p.add_argument("--key-cap-trips", type=int, default=1,
                   help="zcdp: most trips one person adds to one (day, hour, origin, dest) row")
    p.add_argument("--delta", type=float, default=1e-8,
                   help="zcdp: the delta at which rho is shown as (epsilon, delta)")
    p.add_argument("--engine", choices=["polars", "spark"], default="polars",
                   help="spark: PySpark (pip install dpflows[spark]); the master comes from spark-submit")
    p.add_argument("--report-epsilon", default="0.05",
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


def _run_ingest(args: argparse.Namespace) -> int:
    from pathlib import Path

    from dpflows.errors import InvalidData
    from dpflows.ingest.pipeline import ZoningSpec, ingest_events, ingest_trips_table

    name = args.name or Path(args.out).name
    if name != Path(args.out).name:
        raise InvalidData(f"--name {name!r} differs from the --out folder {Path(args.out).name!r}; a dataset is served "
                          "under its folder's name, so drop --name or write to a folder of that name", field="name")
    span: dict[str, Any] = {"first_day": args.first_day, "end_day": args.end_day}
    if args.days is not None:
        if args.engine == "spark":
            raise InvalidData("--days is supported by --engine polars; ingest consecutive days with Spark",
                              field="days")
        span["missing_days"] = _missing_days(args.days, args.first_day, args.end_day)
    zonings = [ZoningSpec.parse(z) for z in args.zoning]
    accounting = {"accounting": args.accounting, "key_cap_trips": args.key_cap_trips, "delta": args.delta}
    if args.trips_table and args.input_format not in (None, "trips"):
        raise InvalidData("--trips-table is an alias of --input-format trips; give one of them", field="input_format")
    fmt = "trips" if args.trips_table else (args.input_format or "events")
    args.trips_table = fmt in ("trips", "citibike")
    if fmt != "citibike" and (args.strict or args.drop_report):
        raise InvalidData("--strict and --drop-report apply to --input-format citibike", field="strict")
    if len(args.events) > 1 and fmt != "citibike":
        raise InvalidData(f"--input-format {fmt} reads one file; give one path (citibike reads several)",
                          field="path")
    if args.trips_table and args.engine == "spark":
        raise InvalidData("--trips-table is ingested with --engine polars (a trips table is already small)",
                          field="engine")
    if args.buckets is not None and (args.trips_table or args.engine == "spark"):
        raise InvalidData("--buckets applies to events ingested with --engine polars; drop it here", field="buckets")
    places = _place_rule(args)
    if places is not None and args.trips_table:
        raise InvalidData("--home-hours, --work-hours and --min-work-days apply to events; a trips table has no "
                          "homes or work places: drop them here", field="home_hours")
    if fmt == "citibike":
        out = _ingest_citibike(args, name, span, zonings, accounting)
    elif args.trips_table:
        out = ingest_trips_table(args.events[0], args.cells, args.out, name=name, window_days=args.window_days,
                                 bound_trips=args.bound_trips, **span, zonings=zonings,
                                 report_epsilon=args.report_epsilon, **accounting)
    elif args.engine == "spark":
        from dpflows.ingest.spark import ingest_events_spark

        out = ingest_events_spark(args.events[0], args.cells, args.out, name=name, window_days=args.window_days,
                                  bound_trips=_bound_or_default(args.bound_trips), bound_presence=args.bound_presence,
                                  trip_rule=args.trip_rule, min_dwell_minutes=args.min_dwell_minutes,
                                  **span, zonings=zonings, report_epsilon=args.report_epsilon,
                                  places=places, **accounting)
    else:
        out = ingest_events(args.events[0], args.cells, args.out, name=name, window_days=args.window_days,
                            bound_trips=_bound_or_default(args.bound_trips), bound_presence=args.bound_presence,
                            trip_rule=args.trip_rule, min_dwell_minutes=args.min_dwell_minutes,
                            **span, zonings=zonings, report_epsilon=args.report_epsilon,
                            buckets=args.buckets, places=places, **accounting)
    print(f"dataset {name!r} written to {out}")
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


def _bound_or_default(bound: int | None) -> int:
    from dpflows.ingest.pipeline import DEFAULT_BOUND_TRIPS

    return DEFAULT_BOUND_TRIPS if bound is None else bound


def _ingest_citibike(args: argparse.Namespace, name: str, span: dict[str, Any], zonings: list[Any],
                     accounting: dict[str, Any]) -> Path:
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
        fd = os.open(args.drop_report, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as report:
            report.write("\n".join(dropped.lines()) + "\n")
    if args.strict and dropped.total_dropped:
        raise InvalidData("--strict: rows were dropped (see the lines above); fix the input files or drop --strict",
                          field="strict")
    with tempfile.TemporaryDirectory(prefix="dpflows-stations-") as tmp:
        cells_csv = Path(tmp) / "cells.csv"
        cells.write_csv(cells_csv)
        return ingest_trips_table(trips, cells_csv, args.out, name=name, window_days=args.window_days,
                                  bound_trips=args.bound_trips, **span, zonings=zonings,
                                  report_epsilon=args.report_epsilon, **accounting)


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


def _add_service_commands(sub: argparse._SubParsersAction) -> None:
    """serve and admin (dpflows.service; `serve` runs gunicorn on api.wsgi by name, never importing api)."""
    from dpflows.settings import load_settings

    settings = load_settings()

    def storage(p: argparse.ArgumentParser) -> None:
        p.add_argument("--data-dir", default=settings.data_dir,
                       help="aggregate store root (default: $DPFLOWS_DATA_DIR or ./var/data)")
        p.add_argument("--ledger-url", default=settings.ledger_url,
                       help="sqlite:///PATH or postgresql://... (default: $DPFLOWS_LEDGER_URL or sqlite:///./var/ledger.db)")

    serve = sub.add_parser("serve", help="serve the HTTP API with gunicorn")
    storage(serve)
    serve.add_argument("--bind", default=settings.bind)
    serve.add_argument("--workers", type=int, default=None, help="default: from the CPU count")
    serve.set_defaults(run=_run_serve)

    admin = sub.add_parser("admin", help="admin tasks: clients, keys, caps, zonings, audit")
    admin_sub = admin.add_subparsers(dest="admin_command", required=True)

    p = admin_sub.add_parser("create-client", help="register a client and print its API key once")
    storage(p)
    p.add_argument("--name", required=True)
    p.add_argument("--role", required=True, choices=["planner", "analyst", "admin", "oversight"])
    p.set_defaults(run=_run_create_client)

    p = admin_sub.add_parser("issue-key", help="issue another key for a client (rotation); printed once")
    storage(p)
    p.add_argument("--client", required=True, help="client name")
    p.set_defaults(run=_run_issue_key)

    p = admin_sub.add_parser("revoke-key", help="revoke a key by id (see list-clients)")
    storage(p)
    p.add_argument("--key-id", required=True, type=int)
    p.set_defaults(run=_run_revoke_key)

    p = admin_sub.add_parser("list-clients", help="clients, roles and key prefixes")
    storage(p)
    p.set_defaults(run=_run_list_clients)

    p = admin_sub.add_parser("set-cap", help="set a client's cap or the global cap, per window or for all")
    storage(p)
    p.add_argument("--dataset", required=True)
    measure = p.add_mutually_exclusive_group(required=True)
    measure.add_argument("--epsilon", help="the cap on a pure-DP dataset, e.g. 1.0")
    measure.add_argument("--rho", help="the cap on a zCDP dataset, e.g. 0.5")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--client", help="client name")
    who.add_argument("--global", dest="global_cap", action="store_true", help="the cap across all clients")
    p.add_argument("--window", type=int, default=None, help="one window (default: every window)")
    p.set_defaults(run=_run_set_cap)

    p = admin_sub.add_parser(
        "add-zoning", help="load a public zoning: a cell_id,zone_id CSV, GeoJSON polygons, or a square grid",
        description="Load a public zoning of a dataset's cells from one of three sources (dpflows.zoning_sources). "
                    "--from-geojson assigns each cell to the polygon covering it and a cell outside every polygon "
                    "to the nearest one, and prints those cells (cells are public). --grid makes squares over the "
                    "cell catalog's extent; only squares holding a cell are zones.")
    storage(p)
    p.add_argument("--dataset", required=True)
    p.add_argument("--name", required=True)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--csv", help="path of a cell_id,zone_id CSV file")
    source.add_argument("--from-geojson", metavar="POLYGONS",
                        help="path of a GeoJSON FeatureCollection of Polygon/MultiPolygon zones (WGS 84)")
    source.add_argument("--grid", type=float, metavar="KM", help="side of the grid's squares in kilometres")
    p.add_argument("--id-field", help="with --from-geojson: the feature property holding each zone's id")
    p.add_argument("--coarse", action="store_true", help="mark coarse (analysts may query it)")
    p.add_argument("--min-cells", type=int, default=None,
                   help="with --coarse: least cells per zone (default and minimum: DPFLOWS_MIN_CELLS_PER_COARSE_ZONE)")
    p.add_argument("--geojson", default=None, help="with --csv: optional GeoJSON file of the zones, for maps")
    p.set_defaults(run=_run_add_zoning)

    p = admin_sub.add_parser("audit", help="print audit rows as JSON lines")
    storage(p)
    p.add_argument("--after-id", type=int, default=0)
    p.add_argument("--limit", type=int, default=100)
    p.set_defaults(run=_run_audit)

    _add_audit_commands(admin_sub)


def open_service(args: argparse.Namespace) -> Service:
    """The Service over the store and ledger named on the command line (or by environment)."""
    from dpflows.aggregates import AggregateStore
    from dpflows.ledger import open_ledger
    from dpflows.service import Policy, Service
    from dpflows.settings import load_settings

    return Service(AggregateStore(args.data_dir), open_ledger(args.ledger_url), Policy.from_settings(load_settings()))


def _run_serve(args: argparse.Namespace) -> int:
    import os
    from pathlib import Path

    env = {**os.environ, "DPFLOWS_DATA_DIR": str(Path(args.data_dir).resolve()),
           "DPFLOWS_LEDGER_URL": args.ledger_url, "DPFLOWS_BIND": args.bind}
    if args.workers:
        env["DPFLOWS_WORKERS"] = str(args.workers)
    conf = Path(__file__).resolve().parents[1] / "api" / "gunicorn_conf.py"
    argv = [sys.executable, "-m", "gunicorn", "-c", str(conf), "api.wsgi:app"]
    print(f"dpflows: serving on http://{args.bind} (API docs at /docs)", file=sys.stderr, flush=True)
    os.execvpe(sys.executable, argv, env)  # noqa: S606 - replaces this process with gunicorn
    return 0  # not reached


def _run_create_client(args: argparse.Namespace) -> int:
    from dpflows.cells import label_problem
    from dpflows.errors import InvalidInput

    problem = label_problem(args.name)
    if problem is not None:  # the HTTP API refuses the same names (api/schemas.py NewClientSchema)
        raise InvalidInput(f"--name {args.name!r} {problem}", field="name")
    client, key = open_service(args).create_client(args.name, args.role)
    print(f"client {client.name} (id {client.id}, role {client.role}) created.")
    print(f"API key (shown once, store it now): {key}")
    return 0


def _run_issue_key(args: argparse.Namespace) -> int:
    service = open_service(args)
    key = service.rotate_key(service.ledger.client_by_name(args.client).id)
    print(f"new API key for {args.client} (shown once): {key}")
    return 0


def _run_revoke_key(args: argparse.Namespace) -> int:
    open_service(args).revoke_key(args.key_id)
    print(f"key {args.key_id} revoked")
    return 0


def _run_list_clients(args: argparse.Namespace) -> int:
    ledger = open_service(args).ledger
    for client in ledger.list_clients():
        keys = ", ".join(f"{k.id}:{k.prefix}…{' (revoked)' if k.revoked_at else ''}"
                         for k in ledger.list_keys(client.id))
        print(f"{client.id}\t{client.name}\t{client.role}\tkeys: {keys or '-'}")
    return 0


def _run_set_cap(args: argparse.Namespace) -> int:
    from dpflows.budget import Epsilon, PrivacyLoss, Rho

    service = open_service(args)
    client_id = None if args.global_cap else service.ledger.client_by_name(args.client).id
    cap: PrivacyLoss = Epsilon.parse(args.epsilon) if args.epsilon is not None else Rho.parse(args.rho)
    service.set_cap(args.dataset, cap, client_id=client_id, window=args.window)
    who = "global cap" if client_id is None else f"cap of {args.client}"
    where = "every window" if args.window is None else f"window {args.window}"
    print(f"{who} on {args.dataset}, {where}: {cap.unit} {cap}")
    return 0


def _run_add_zoning(args: argparse.Namespace) -> int:
    from pathlib import Path

    from dpflows.errors import InvalidInput
    from dpflows.zoning_sources import add_zoning, read_geojson

    if args.id_field is not None and args.from_geojson is None:
        raise InvalidInput("--id-field goes with --from-geojson; drop it", field="id_field")
    if args.from_geojson is not None and args.id_field is None:
        raise InvalidInput(f"--from-geojson {Path(args.from_geojson).name} needs --id-field: the feature property "
                           "holding each zone's id (e.g. --id-field GEOID)", field="id_field")
    if args.geojson is not None and args.csv is None:
        raise InvalidInput("--geojson (polygons for maps) goes with --csv; --from-geojson stores its polygons "
                           "itself and --grid its squares", field="geojson")
    kwargs: dict[str, Any]
    if args.csv is not None:
        csv_path = Path(args.csv)
        if not csv_path.is_file():
            raise InvalidInput(f"--csv {csv_path}: file not found", field="csv")
        kwargs = {"csv": csv_path.read_text(), "geojson": read_geojson(args.geojson) if args.geojson else None,
                  "source": csv_path.name}
    elif args.from_geojson is not None:
        kwargs = {"geojson": read_geojson(args.from_geojson), "id_field": args.id_field,
                  "source": Path(args.from_geojson).name}
    else:
        kwargs = {"grid_km": args.grid}
    added = add_zoning(open_service(args), args.dataset, args.name, coarse=args.coarse,
                       min_cells_per_zone=args.min_cells, **kwargs)
    print(f"zoning {added.name}: {added.zones} zones{' (coarse)' if added.coarse else ''} from {added.method}")
    if added.assigned_to_nearest:
        far = max(c["distance_km"] for c in added.assigned_to_nearest)
        print(f"{len(added.assigned_to_nearest)} cells lie outside every polygon and went to the nearest one "
              f"(farthest {far:.3f} km): " + ", ".join(f"{c['cell_id']}->{c['zone_id']} ({c['distance_km']:.3f} km)"
                                                     for c in added.assigned_to_nearest))
    if added.empty_polygons:
        print(f"{len(added.empty_polygons)} polygons hold no cell and are not zones: "
              + ", ".join(added.empty_polygons))
    return 0


def _run_audit(args: argparse.Namespace) -> int:
    import dataclasses
    import json

    for row in open_service(args).ledger.read_audit(after_id=args.after_id, limit=args.limit):
        doc = dataclasses.asdict(row)
        doc["epsilon"] = row.epsilon.to_json()
        print(json.dumps(doc, sort_keys=True))
    return 0


def _add_audit_commands(sub: argparse._SubParsersAction) -> None:
    """admin verify-audit and admin audit-digest (dpflows.audit): check the hash chain, sign its daily head."""
    verify = sub.add_parser("verify-audit", help="walk the audit hash chain; exit 1 at the first broken row",
                            description="Walk the audit log's hash chain from its first row. With --digest and "
                                        "--key-file, also check a signed daily digest against the ledger.")
    verify.add_argument("--ledger-url", required=True, help="sqlite:///PATH or postgresql://...")
    verify.add_argument("--digest", help="a digest file written by admin audit-digest, to check as well")
    verify.add_argument("--key-file", help="the admin's digest key (needed with --digest)")
    verify.set_defaults(run=_run_audit_verify)

    digest = sub.add_parser("audit-digest", help="print an HMAC-signed digest of the chain head at the end of a day",
                            description="Sign the audit chain head at the end of a UTC day with an admin-held key; "
                                        "store the printed JSON away from the ledger's host.")
    digest.add_argument("--ledger-url", required=True, help="sqlite:///PATH or postgresql://...")
    digest.add_argument("--day", required=True, type=dt.date.fromisoformat, help="YYYY-MM-DD (UTC)")
    digest.add_argument("--key-file", required=True, help="file holding a random key of at least 32 bytes")
    digest.set_defaults(run=_run_audit_digest)


def _run_audit_verify(args: argparse.Namespace) -> int:
    from dpflows.audit import read_key_file, verify_audit, verify_digest
    from dpflows.errors import InvalidInput
    from dpflows.ledger import open_ledger

    if (args.digest is None) != (args.key_file is None):
        raise InvalidInput("--digest and --key-file go together; give both or neither", field="digest")
    ledger = open_ledger(args.ledger_url)
    try:
        report = verify_audit(ledger)
        out: dict[str, object] = {"chain": report.to_json()}
        ok = report.ok
        if args.digest is not None:
            try:
                with open(args.digest, encoding="utf-8") as fh:
                    doc = json.load(fh)
            except (OSError, ValueError) as exc:
                raise InvalidInput(f"digest file {args.digest!r} is not readable JSON ({type(exc).__name__})",
                                   field="digest") from exc
            check = verify_digest(ledger, doc, read_key_file(args.key_file))
            out["digest"] = check.to_json()
            ok = ok and check.ok
    finally:
        ledger.close()
    print(json.dumps(out, indent=2))
    return 0 if ok else 1


def _run_audit_digest(args: argparse.Namespace) -> int:
    from dpflows.audit import daily_digest, read_key_file
    from dpflows.ledger import open_ledger

    key = read_key_file(args.key_file)
    ledger = open_ledger(args.ledger_url)
    try:
        print(json.dumps(daily_digest(ledger, args.day, key), indent=2))
    finally:
        ledger.close()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dpflows", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_migrate_command(sub)
    _add_data_commands(sub)
    _add_service_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except DpflowsError as exc:
        print(f"dpflows: error: {exc.message}", file=sys.stderr)
        return 2


def _add_migrate_command(sub: argparse._SubParsersAction) -> None:
    """migrate: create or upgrade the ledger schema before hosts start (dpflows.ledger); settings."""
    from dpflows.settings import environment_value

    parser = sub.add_parser(
        "migrate",
        help="create or upgrade the ledger's schema (idempotent; safe while other hosts start)",
        description="Create or upgrade the ledger's tables. Safe to run again, and from several hosts at "
        "once: PostgreSQL serializes migrations on an advisory lock. Prefer $DPFLOWS_LEDGER_URL to "
        "--ledger-url when the URL holds a password: arguments are visible to every user in `ps`.",
    )
    parser.add_argument(
        "--ledger-url", default=environment_value("DPFLOWS_LEDGER_URL"),
        required=environment_value("DPFLOWS_LEDGER_URL") is None,
        help="sqlite:///PATH or postgresql://USER[:PASSWORD]@HOST[:PORT]/DB (default: $DPFLOWS_LEDGER_URL)",
    )
    parser.set_defaults(run=_run_migrate)

    settings = sub.add_parser("settings", help="list every DPFLOWS_* setting with the value in force, its default "
                              "and what it is for")
    settings.set_defaults(run=_run_settings)


def _run_settings(args: argparse.Namespace) -> int:
    from dpflows.settings import describe, load_settings

    for row in describe(load_settings()):
        print(f"{row['name']}={row['value']}\n    {row['help']} (default: {row['default'] or 'none'})")
    return 0


def _run_migrate(args: argparse.Namespace) -> int:
    from dpflows.ledger import open_ledger

    ledger = open_ledger(args.ledger_url)  # every ledger brings its schema up to date when opened
    try:
        steps = getattr(ledger, "migration_steps_applied", 0)
        scheme = str(args.ledger_url).split(":", 1)[0]  # never echo the URL: it may hold a password
        print(f"dpflows: {scheme} ledger schema is up to date ({steps} migration step(s) applied now)")
    finally:
        ledger.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
