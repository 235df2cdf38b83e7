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


if __name__ == "__main__":
    sys.exit(main())
