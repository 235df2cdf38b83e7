"""The `dpflows` command: demo city, ingestion, serving and admin tasks."""

from __future__ import annotations

import argparse
import sys

from dpflows.errors import DpflowsError


def _add_data_commands(sub: argparse._SubParsersAction) -> None:
    """demo-city and ingest (dpflows.demo, dpflows.ingest)."""


def _add_service_commands(sub: argparse._SubParsersAction) -> None:
    """serve and admin (dpflows.service, api)."""


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
    """migrate: create or upgrade the ledger schema before hosts start (dpflows.ledger)."""
    import os

    parser = sub.add_parser(
        "migrate",
        help="create or upgrade the ledger's schema (idempotent; safe while other hosts start)",
        description="Create or upgrade the ledger's tables. Safe to run again, and from several hosts at "
        "once: PostgreSQL serializes migrations on an advisory lock. Prefer $DPFLOWS_LEDGER_URL to "
        "--ledger-url when the URL holds a password: arguments are visible to every user in `ps`.",
    )
    parser.add_argument(
        "--ledger-url", default=os.environ.get("DPFLOWS_LEDGER_URL"),
        required="DPFLOWS_LEDGER_URL" not in os.environ,
        help="sqlite:///PATH or postgresql://USER[:PASSWORD]@HOST[:PORT]/DB (default: $DPFLOWS_LEDGER_URL)",
    )
    parser.set_defaults(run=_run_migrate)


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
