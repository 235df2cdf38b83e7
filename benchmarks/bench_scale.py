"""Ingestion at scale: Spark vs Polars on the demo city (design §7).

    python benchmarks/bench_scale.py                       # 1,000,000 persons × 7 days
    python benchmarks/bench_scale.py --persons 10000 100000 --master 'local[*]'

For each size: generate the demo city once (cached under --workdir), ingest it with Polars in
a child process (wall time, and its peak RSS from resource.getrusage(RUSAGE_CHILDREN), read
in a fresh wrapper process per size so sizes do not mix), then with Spark in this process
(session start-up timed separately). Both use the default bounds, which are active, so the
kept totals must agree exactly (Σ min(n, L) per person-window) and are printed as a check.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import polars as pl

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _city(workdir: Path, persons: int, days: int):
    from dpflows.demo import CityFiles, generate_city

    out = workdir / f"city-{persons}-{days}"
    done = out / ".done"
    if done.exists():
        return CityFiles(out / "events.parquet", out / "cells.csv", out / "zonings" / "districts.csv",
                         out / "zonings" / "sectors.csv", *json.loads(done.read_text()))
    start = time.perf_counter()
    files = generate_city(out, persons=persons, seed=1, days=days)
    print(f"  generated {persons:,} persons × {days} days in {time.perf_counter() - start:.1f} s", flush=True)
    done.write_text(json.dumps([files.first_day.isoformat(), files.days]))
    return files


def _totals(out: Path) -> tuple[int, int]:
    return (int(pl.read_parquet(out / "trips.parquet")["count"].sum()),
            int(pl.read_parquet(out / "presence.parquet")["count"].sum()))


def _polars_child(events: str, cells: str, out: str) -> None:
    """Runs in a child process: the Polars ingestion alone, its wall time on stdout."""
    from dpflows.ingest.pipeline import Progress, ingest_events

    start = time.perf_counter()
    ingest_events(events, cells, out, name="bench", seed=7, progress=Progress(False))
    print(json.dumps({"seconds": time.perf_counter() - start}))


def _polars_measure(events: str, cells: str, out: str) -> None:
    """A fresh wrapper per size: runs the Polars child, reports its time and peak RSS (children only)."""
    done = subprocess.run([sys.executable, __file__, "--_polars", events, cells, out],
                          check=True, capture_output=True, text=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # KiB on Linux
    print(json.dumps(result))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--persons", type=int, nargs="+", default=[1_000_000])
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/dpflows-bench-scale"))
    parser.add_argument("--master", default="local[*]", help="Spark master for this benchmark (the library sets none)")
    parser.add_argument("--driver-memory", default="4g")
    parser.add_argument("--polars-only", action="store_true", help="skip Spark (e.g. a size too large for it here)")
    parser.add_argument("--_polars", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--_measure", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._polars:
        _polars_child(*args._polars)
        return 0
    if args._measure:
        _polars_measure(*args._measure)
        return 0

    from pyspark.sql import SparkSession

    from dpflows.ingest.pipeline import Progress
    from dpflows.ingest.spark import ingest_events_spark

    spark = None
    rows = []
    try:
        for persons in sorted(args.persons):
            print(f"{persons:,} persons × {args.days} days", flush=True)
            city = _city(args.workdir, persons, args.days)
            events = pl.scan_parquet(city.events).select(pl.len()).collect().item()
            out_polars = args.workdir / f"out-polars-{persons}"
            done = subprocess.run([sys.executable, __file__, "--_measure", str(city.events), str(city.cells),
                                   str(out_polars)], check=True, capture_output=True, text=True)
            polars = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"  polars: {polars['seconds']:.1f} s, peak RSS {polars['peak_rss_mb']:.0f} MiB", flush=True)
            if args.polars_only:
                rows.append((persons, events, polars["seconds"], float("nan"), float("nan"), polars["peak_rss_mb"]))
                continue
            if spark is None:
                start = time.perf_counter()
                spark = (SparkSession.builder.master(args.master).appName("dpflows-bench-scale")
                         .config("spark.driver.memory", args.driver_memory)
                         .config("spark.ui.enabled", "false")
                         .config("spark.driver.host", "127.0.0.1")
                         .config("spark.driver.bindAddress", "127.0.0.1")
                         .getOrCreate())
                spark.sparkContext.setLogLevel("ERROR")
                print(f"  spark session start-up: {time.perf_counter() - start:.1f} s (not counted)", flush=True)
            out_spark = args.workdir / f"out-spark-{persons}"
            start = time.perf_counter()
            ingest_events_spark(city.events, city.cells, out_spark, name="bench", seed=7, spark=spark,
                                progress=Progress(False))
            spark_seconds = time.perf_counter() - start
            ratio = spark_seconds / polars["seconds"]
            same = _totals(out_polars) == _totals(out_spark)
            print(f"  spark: {spark_seconds:.1f} s; spark/polars = {ratio:.2f}; kept totals equal: {same} "
                  f"{_totals(out_spark)}", flush=True)
            rows.append((persons, events, polars["seconds"], spark_seconds, ratio, polars["peak_rss_mb"]))
    finally:
        if spark is not None:
            spark.stop()
    print("\npersons      events  polars_s  spark_s  spark/polars  polars_peak_rss_MiB")
    for persons, events, p, s, r, rss in rows:
        print(f"{persons:>9,} {events:>11,} {p:>9.1f} {s:>8.1f} {r:>13.2f} {rss:>20.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
