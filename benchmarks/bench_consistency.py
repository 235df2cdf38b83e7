"""Error against the truth of flows on the 'small' test dataset, before and after consistent post-processing.

For each setting, draws many releases of the districts OD matrix (8 x 8) through the real
mechanism (OpenDP discrete Laplace), then reports RMSE and max absolute error over all draws
of: the cells, the departures and arrivals per zone, and the grand total, for

- raw:        the released noisy values (unbiased), totals summed from them;
- clamped:    negative cells set to 0, totals summed from the clamped cells (biased up);
- consistent: dpflows.postprocess.consistent_table (non-negative, totals agree exactly).

Run: PYTHONPATH=. /tmp/venv/bin/python benchmarks/bench_consistency.py [--draws 500]
"""

from __future__ import annotations

import argparse
import datetime as dt
import tempfile
import time
from pathlib import Path

import numpy as np

from dpflows.aggregates import AggregateStore
from dpflows.budget import Epsilon
from dpflows.mechanisms import release_counts
from dpflows.postprocess import consistent_table
from dpflows.queries import make_spec, prepare
from tests.conftest import FIRST_DAY, build_small_dataset

SETTINGS = [
    ("all hours, 7 days", None, "0.25"),
    ("all hours, 7 days", None, "1"),
    ("02-04h, 7 days (sparse)", [2, 4], "0.25"),
    ("02-04h, 7 days (sparse)", [2, 4], "1"),
]


def errors(est: np.ndarray, truth: np.ndarray) -> dict[str, np.ndarray]:
    return {
        "cells": (est - truth).ravel(),
        "departures": (est.sum(axis=1) - truth.sum(axis=1)).ravel(),
        "arrivals": (est.sum(axis=0) - truth.sum(axis=0)).ravel(),
        "total": np.array([est.sum() - truth.sum()]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--draws", type=int, default=500)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        build_small_dataset(Path(tmp))
        data = AggregateStore(tmp).get("small")
        print(f"flows by districts (8x8) on dataset 'small', {args.draws} draws per setting; "
              "RMSE / max |error| against the truth")
        for label, hours, eps in SETTINGS:
            spec = make_spec("flows", dataset="small", zoning="districts", start=FIRST_DAY,
                             end=FIRST_DAY + dt.timedelta(days=7), hours=hours)
            prepared = prepare(spec, data)
            truth = prepared.true_counts.reshape(8, 8)
            acc: dict[str, dict[str, list[np.ndarray]]] = {m: {} for m in ("raw", "clamped", "consistent")}
            started = time.perf_counter()
            post_time = 0.0
            for _ in range(args.draws):
                noisy = release_counts(prepared.true_counts, prepared.sensitivity, Epsilon.parse(eps))
                raw = noisy.values.reshape(8, 8)
                t0 = time.perf_counter()
                cons = consistent_table(raw).cells
                post_time += time.perf_counter() - t0
                for method, est in (("raw", raw), ("clamped", np.maximum(raw, 0)), ("consistent", cons)):
                    for part, err in errors(est, truth).items():
                        acc[method].setdefault(part, []).append(err)
            elapsed = time.perf_counter() - started
            print(f"\n{label}, epsilon={eps} (scale {noisy.scale:g}); true cells: mean {truth.mean():.1f}, "
                  f"{(truth == 0).mean():.0%} zero; consistent_table {1000 * post_time / args.draws:.2f} ms/draw, "
                  f"total {elapsed:.1f}s")
            print(f"  {'':11s}" + "".join(f"{p:>22s}" for p in ("cells", "departures", "arrivals", "total")))
            for method, parts in acc.items():
                row = ""
                for part in ("cells", "departures", "arrivals", "total"):
                    e = np.concatenate(parts[part])
                    row += f"{np.sqrt(np.mean(e.astype(float) ** 2)):>12.1f} / {np.max(np.abs(e)):>6d}  "
                bias = np.mean(np.concatenate(parts["total"]))
                print(f"  {method:11s}{row}  (mean total error {bias:+.1f})")


if __name__ == "__main__":
    main()
