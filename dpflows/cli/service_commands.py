"""serve, admin, audit, migrate and settings: running the service and its ledger."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from typing import Any

from dpflows.cli.store_commands import _add_store_commands, open_service

__all__ = ["_add_migrate_command", "_add_service_commands", "open_service"]


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

    p = admin_sub.add_parser(
        "set-cap", help="set a client's cap, or a population's global cap or a group's allocation of it",
        description="A client's cap is per dataset, in the dataset's measure. The global cap and group allocations "
                    "are per population (the people datasets are drawn from), in its measure: named by --dataset, "
                    "those of the dataset's population (--window is then the dataset's window); or by --population.")
    storage(p)
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--dataset", help="a dataset (for --global or --group: its population)")
    where.add_argument("--population", help="with --global or --group: a population by name, windows its own")
    measure = p.add_mutually_exclusive_group(required=True)
    measure.add_argument("--epsilon", help="a cap in epsilon (a pure-DP dataset, or a population in epsilon)")
    measure.add_argument("--rho", help="a cap in rho (a zCDP dataset, or a population in rho)")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--client", help="client name")
    who.add_argument("--global", dest="global_cap", action="store_true", help="the cap across all clients")
    who.add_argument("--group", help="a sharing group's allocation of the global cap (allocations never sum "
                                     "above it)")
    p.add_argument("--window", type=int, default=None, help="one window (default: every window)")
    p.set_defaults(run=_run_set_cap)

    p = admin_sub.add_parser("set-horizon", help="bound a population's spend over any run of windows (e.g. 52 weeks)")
    storage(p)
    p.add_argument("--population", default="default", help="the population (default: default)")
    p.add_argument("--windows", type=int, help="H: any H consecutive windows of the population")
    measure = p.add_mutually_exclusive_group()
    measure.add_argument("--epsilon", help="the horizon cap, for a population in epsilon")
    measure.add_argument("--rho", help="the horizon cap, for a population in rho")
    measure.add_argument("--remove", action="store_true", help="remove the horizon cap")
    p.set_defaults(run=_run_set_horizon)

    p = admin_sub.add_parser("list-allocations", help="a population's global caps, group allocations, horizon cap "
                                                      "and spending per window")
    storage(p)
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--dataset", help="the population of this dataset")
    where.add_argument("--population", help="a population by name")
    p.set_defaults(run=_run_list_allocations)

    p = admin_sub.add_parser("set-group", help="put a client in a sharing group (its members reuse each other's "
                                               "answers), or --alone")
    storage(p)
    p.add_argument("--client", required=True, help="client name")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--group", help="the group's name (1-64 letters, digits, '_', '.', '-')")
    where.add_argument("--alone", action="store_true", help="take the client out of its group")
    p.set_defaults(run=_run_set_group)

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

    _add_store_commands(admin_sub, storage)

    p = admin_sub.add_parser("audit", help="print audit rows as JSON lines")
    storage(p)
    p.add_argument("--after-id", type=int, default=0)
    p.add_argument("--limit", type=int, default=100)
    p.set_defaults(run=_run_audit)

    _add_audit_commands(admin_sub)


def _run_serve(args: argparse.Namespace) -> int:
    import os
    from pathlib import Path

    env = {**os.environ, "DPFLOWS_DATA_DIR": str(Path(args.data_dir).resolve()),
           "DPFLOWS_LEDGER_URL": args.ledger_url, "DPFLOWS_BIND": args.bind}
    if args.workers:
        env["DPFLOWS_WORKERS"] = str(args.workers)
    conf = Path(__file__).resolve().parents[2] / "api" / "gunicorn_conf.py"
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
        print(f"{client.id}\t{client.name}\t{client.role}\tkeys: {keys or '-'}\tgroup: {client.group or '-'}")
    return 0


def _run_set_cap(args: argparse.Namespace) -> int:
    from dpflows.budget import Epsilon, PrivacyLoss, Rho
    from dpflows.errors import InvalidInput

    service = open_service(args)
    if args.client is not None and args.population is not None:
        raise InvalidInput("--client caps a client on a dataset: send --dataset, not --population", field="population")
    client_id = None if args.global_cap or args.group else service.ledger.client_by_name(args.client).id
    cap: PrivacyLoss = Epsilon.parse(args.epsilon) if args.epsilon is not None else Rho.parse(args.rho)
    service.set_cap(args.dataset, cap, client_id=client_id, window=args.window, group=args.group,
                    population=args.population)
    who = (f"allocation of group {args.group}" if args.group else "global cap" if client_id is None
           else f"cap of {args.client}")
    where = "every window" if args.window is None else f"window {args.window}"
    if args.dataset is not None and client_id is None:
        population, offset = service.ledger.population_of(args.dataset)
        shown = "every window" if args.window is None else f"window {args.window + offset}"
        print(f"{who} of population {population} (dataset {args.dataset}'s), {shown}: {cap.unit} {cap}")
    else:
        print(f"{who} on {args.dataset or 'population ' + args.population}, {where}: {cap.unit} {cap}")
    return 0


def _run_set_horizon(args: argparse.Namespace) -> int:
    from dpflows.budget import Epsilon, PrivacyLoss, Rho
    from dpflows.errors import InvalidInput

    if args.remove == (args.windows is not None) or (not args.remove and args.epsilon is None and args.rho is None):
        raise InvalidInput("send --windows H with --epsilon or --rho (the population's measure), or --remove",
                           field="windows")
    cap: PrivacyLoss | None = (None if args.remove else Epsilon.parse(args.epsilon) if args.epsilon is not None
                               else Rho.parse(args.rho))
    found = open_service(args).set_horizon_cap(args.population, args.windows, cap)
    if found.horizon_cap is None:
        print(f"population {found.name}: no horizon cap")
    else:
        print(f"population {found.name}: at most {found.measure or (cap and cap.unit)} {found.horizon_cap} over any "
              f"{found.horizon_windows} consecutive windows")
    return 0


def _run_list_allocations(args: argparse.Namespace) -> int:
    budget = open_service(args).population_budget(dataset=args.dataset, population=args.population)
    pop = budget.population
    unit = pop.measure or "-"

    def when(window: int | None) -> str:
        return "every window" if window is None else f"window {window}"

    print(f"population {pop.name}: budgets in {unit}, windows of {pop.window_days} days from {pop.first_day}")
    print("horizon cap: " + ("none" if pop.horizon_cap is None else
                             f"{unit} {pop.horizon_cap} over any {pop.horizon_windows} consecutive windows"))
    for cap in budget.global_caps:
        print(f"global cap\t{when(cap.window)}\t{unit} {cap.cap}")
    for allocation in budget.allocations:
        print(f"group {allocation.group}\t{when(allocation.window)}\t{unit} {allocation.cap}")
    for spent in budget.spent:
        print(f"spent\twindow {spent.window}\t{unit} {spent.spent}")
    return 0


def _run_set_group(args: argparse.Namespace) -> int:
    service = open_service(args)
    client = service.set_group(service.ledger.client_by_name(args.client).id, None if args.alone else args.group)
    print(f"{client.name}: " + (f"in group {client.group}" if client.group else "alone"))
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
        doc["epsilon"] = row.loss.to_json()
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
