"""admin commands on a dataset's stored windows: upgrade-dataset and retire-windows; and `open_service`."""

from __future__ import annotations

import argparse
import datetime as dt
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:

    from dpflows.service import Service


def open_service(args: argparse.Namespace) -> Service:
    """The Service over the store and ledger named on the command line (or by environment)."""
    from dpflows.aggregates import AggregateStore
    from dpflows.ledger import open_ledger
    from dpflows.service import Policy, Service
    from dpflows.settings import load_settings

    return Service(AggregateStore(args.data_dir), open_ledger(args.ledger_url), Policy.from_settings(load_settings()))


def _add_store_commands(admin_sub: argparse._SubParsersAction,
                        storage: Callable[[argparse.ArgumentParser], None]) -> None:
    p = admin_sub.add_parser(
        "upgrade-dataset", help="rewrite a dataset written before window files as window files (mapped once, shared "
                                "by every worker); counts, bounds, reports and stored answers kept; atomic switch")
    storage(p)
    p.add_argument("--dataset", required=True)
    p.set_defaults(run=_run_upgrade_dataset)

    p = admin_sub.add_parser(
        "retire-windows", help="delete the counts and stored answers of every window that ends before a date; "
                               "their charges and audit rows stay, queries touching them are refused")
    storage(p)
    p.add_argument("--dataset", required=True)
    p.add_argument("--before", required=True, type=dt.date.fromisoformat, metavar="YYYY-MM-DD",
                   help="windows whose last day is before this date are retired")
    p.set_defaults(run=_run_retire_windows)


def _run_upgrade_dataset(args: argparse.Namespace) -> int:
    from dpflows.aggregates import AggregateStore
    from dpflows.errors import NotFound
    from dpflows.legacy_aggregates import upgrade_dataset

    store = AggregateStore(args.data_dir)
    if args.dataset not in store.names():
        raise NotFound(f"--dataset {args.dataset!r} is not a dataset of {args.data_dir}; use one of {store.names()}",
                       field="dataset")
    upgrade_dataset(store.dataset_dir(args.dataset))
    print(f"dataset {args.dataset}: now stored as window files ({store.get(args.dataset).metadata.window_count} "
          "windows); running workers switch at their next request")
    return 0


def _run_retire_windows(args: argparse.Namespace) -> int:
    count = open_service(args).retire_windows(args.dataset, args.before)
    print(f"dataset {args.dataset}: windows 0..{count - 1} retired (counts and stored answers deleted; charges and "
          "audit rows kept)")
    return 0
