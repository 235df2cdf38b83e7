"""The `dpflows` command: demo city, ingestion, serving and admin tasks."""

from __future__ import annotations

import argparse
import sys

from dpflows.cli.data_commands import _add_data_commands, ingest_options
from dpflows.cli.service_commands import _add_migrate_command, _add_service_commands, open_service
from dpflows.errors import DpflowsError

__all__ = ["build_parser", "ingest_options", "main", "open_service"]


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
