"""Beyond one host (issue 5): ledgers under contention, two API hosts on one PostgreSQL ledger,
and ingestion at scale (Spark vs Polars on the demo city, Polars' peak memory).

    python benchmarks/bench_scale.py --only ledger two-hosts          # the serving side, ~1 minute

    python benchmarks/bench_scale.py                       # 1,000,000 persons × 7 days
    python benchmarks/bench_scale.py --persons 10000 100000 --master 'local[*]'
    python benchmarks/bench_scale.py --persons 1000000 --buckets auto 1 --polars-only   # bucketed vs not
    python benchmarks/bench_scale.py --persons 2000000 --polars-only                   # ≈ 100 M events

ledger: benchmarks/bench_ledger.py's durable commit_release charges/s, SQLite and PostgreSQL,
uncontended and with --ledger-threads (default 8) concurrent clients, each on its own connection.

two-hosts: two gunicorn instances (2 workers each) on loopback share one throwaway PostgreSQL
ledger; 16 threads alternate between them sending distinct queries worth 10× a client's cap of
1 in one window. Printed: answers and refusals, the ledger's total against the cap (it must be
exactly the cap), the sum of ε the answers say they charged (it must equal the total), and
whether an answer released through one host is reused, free and identical, through the other.

ingest — for each size: generate the demo city once (cached under --workdir), ingest it with Polars in
a child process for each --buckets setting (wall time, and its peak RSS from
resource.getrusage(RUSAGE_CHILDREN), read in a fresh wrapper process per run so runs do not
mix), then with Spark in this process (session start-up timed separately). All use the default
bounds, which are active, so the kept totals must agree exactly (Σ min(n, L) per person-window)
and are printed as a check; the Polars outputs of different bucket counts must be identical.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import polars as pl

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dpflows.aggregates import read_interchange  # noqa: E402


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
    return (int(read_interchange(out, "trips").collect()["count"].sum()),
            int(read_interchange(out, "presence").collect()["count"].sum()))


def _same_output(a: Path, b: Path) -> bool:
    return all(read_interchange(a, f).collect().equals(read_interchange(b, f).collect()) for f in ("trips", "presence"))


def _polars_child(events: str, cells: str, out: str, buckets: str) -> None:
    """Runs in a child process: the Polars ingestion alone, its wall time and bucket count on stdout."""
    from dpflows.ingest.pipeline import IngestOptions, Progress, choose_buckets, ingest_events

    b = choose_buckets(pl.scan_parquet(events).select(pl.len()).collect().item()) if buckets == "auto" else int(buckets)
    start = time.perf_counter()
    # the generated cities start on 2024-03-04 (generate_city's default); the span covers any length used here
    ingest_events(events, cells, out,
                  IngestOptions(name="bench", seed=7, buckets=b, first_day=dt.date(2024, 3, 4),
                                end_day=dt.date(2024, 3, 4) + dt.timedelta(days=366)), progress=Progress(False))
    print(json.dumps({"seconds": time.perf_counter() - start, "buckets": b}))


def _polars_measure(events: str, cells: str, out: str, buckets: str) -> None:
    """A fresh wrapper per run: runs the Polars child, reports its time and peak RSS (children only)."""
    done = subprocess.run([sys.executable, __file__, "--_polars", events, cells, out, buckets],
                          check=True, capture_output=True, text=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # KiB on Linux
    print(json.dumps(result))


def bench_two_hosts(workdir: Path) -> None:
    """Two gunicorn hosts on one PostgreSQL ledger, hammered for 10× the cap; prints the totals."""
    import itertools
    import threading
    from fractions import Fraction

    import requests

    from dpflows.aggregates import AggregateStore
    from dpflows.ledger.postgres import PostgresLedger
    from dpflows.service import Service
    from tests.api.conftest import FLOWS, seed_clients
    from tests.conftest import build_small_dataset
    from tests.pg_server import PgServer, find_bindir
    from tests.servers import GunicornServer

    bindir = find_bindir()
    if bindir is None:
        print("two-hosts: PostgreSQL binaries not found (run scripts/bootstrap.sh as root); skipped", flush=True)
        return
    root = workdir / "two-hosts"
    if root.exists():
        shutil.rmtree(root)
    build_small_dataset(root)
    server = PgServer(bindir, durable=True).start()
    try:
        url = server.create_database()
        setup = Service(AggregateStore(root), PostgresLedger(url))
        keys = seed_clients(setup)  # planner cap 1 per window, global 3
        setup.ledger.close()
        env = {"DPFLOWS_RATE_LIMIT": "100000", "DPFLOWS_RATE_BURST": "100000"}
        with GunicornServer(root, url, workers=2, extra_env=env) as a, \
                GunicornServer(root, url, workers=2, extra_env=env) as b:
            hosts = [a.url, b.url]
            week3 = {**FLOWS, "start": "2024-03-18", "end": "2024-03-25"}
            first = requests.post(a.url + "/v1/flows", json=week3, headers=keys.h("planner"), timeout=30).json()
            again = requests.post(b.url + "/v1/flows", json=week3, headers=keys.h("planner"), timeout=30).json()
            reused = again["reused"] and again["answer_id"] == first["answer_id"] and again["values"] == first["values"]
            statuses: list[int] = []
            charged: list[Fraction] = []
            lock = threading.Lock()
            combos = list(itertools.product(range(24), range(7)))
            threads_n, per_thread = 16, 10  # 160 distinct queries at ε 0.0625 = 10 ε against a cap of 1

            def worker(t: int) -> None:
                session = requests.Session()
                for i in range(per_thread):
                    h, d = combos[t * per_thread + i]
                    body = {**FLOWS, "start": "2024-03-11", "end": "2024-03-18", "hours": [h, h + 1],
                            "weekdays": [d], "epsilon": 0.0625}
                    r = session.post(hosts[(t + i) % 2] + "/v1/flows", json=body, headers=keys.h("planner"),
                                     timeout=60)
                    with lock:
                        statuses.append(r.status_code)
                        if r.status_code == 200:
                            charged.append(Fraction(str(r.json()["epsilon_charged"])))

            start = time.perf_counter()
            pool = [threading.Thread(target=worker, args=(t,)) for t in range(threads_n)]
            for t in pool:
                t.start()
            for t in pool:
                t.join()
            seconds = time.perf_counter() - start
        ledger = PostgresLedger(url)
        total = ledger.total_charged("small", 1, keys.planner_id).as_fraction()
        ledger.close()
    finally:
        server.stop()
    print(f"two-hosts: {len(statuses)} requests in {seconds:.1f} s over 2 hosts × 2 workers: "
          f"{statuses.count(200)} answered, {statuses.count(409)} refused (budget), "
          f"{len(statuses) - statuses.count(200) - statuses.count(409)} other", flush=True)
    print(f"two-hosts: ledger total in window 1 = {float(total):g} against a cap of 1 "
          f"(exactly the cap: {total == 1}); sum of epsilon_charged over answers = {float(sum(charged)):g} "
          f"(equal: {sum(charged) == total}); reuse across hosts: {reused}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--persons", type=int, nargs="+", default=[1_000_000])
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/dpflows-bench-scale"))
    parser.add_argument("--master", default="local[*]", help="Spark master for this benchmark (the library sets none)")
    parser.add_argument("--driver-memory", default="4g")
    parser.add_argument("--polars-only", action="store_true", help="skip Spark (e.g. a size too large for it here)")
    parser.add_argument("--buckets", nargs="+", default=["auto"],
                        help="Polars bucket counts to run: 'auto' (from the input size) and/or numbers; "
                        "1 is the unbucketed path (default: auto)")
    parser.add_argument("--only", nargs="+", choices=["ledger", "two-hosts", "ingest"],
                        default=["ledger", "two-hosts", "ingest"], help="parts to run (default: all)")
    parser.add_argument("--ledger-seconds", type=float, default=3.0, help="measured seconds per ledger phase")
    parser.add_argument("--ledger-threads", type=int, default=8)
    parser.add_argument("--_polars", nargs=4, help=argparse.SUPPRESS)
    parser.add_argument("--_measure", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._polars:
        _polars_child(*args._polars)
        return 0
    if args._measure:
        _polars_measure(*args._measure)
        return 0

    print(f"load average {os.getloadavg()[0]:.2f} (1 min) at start; {os.cpu_count()} CPUs", flush=True)
    if "ledger" in args.only:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import bench_ledger

        bench_ledger.main(["--seconds", str(args.ledger_seconds), "--threads", str(args.ledger_threads)])
    if "two-hosts" in args.only:
        args.workdir.mkdir(parents=True, exist_ok=True)
        bench_two_hosts(args.workdir)
    if "ingest" not in args.only:
        return 0

    from pyspark.sql import SparkSession

    from dpflows.ingest.pipeline import IngestOptions, Progress
    from dpflows.ingest.spark import ingest_events_spark

    spark = None
    rows = []
    try:
        for persons in sorted(args.persons):
            print(f"{persons:,} persons × {args.days} days", flush=True)
            city = _city(args.workdir, persons, args.days)
            events = pl.scan_parquet(city.events).select(pl.len()).collect().item()
            runs = {}  # --buckets setting -> its result and output directory
            for buckets in args.buckets:
                out_polars = args.workdir / f"out-polars-{persons}-b{buckets}"
                done = subprocess.run([sys.executable, __file__, "--_measure", str(city.events), str(city.cells),
                                       str(out_polars), buckets], check=True, capture_output=True, text=True)
                runs[buckets] = (json.loads(done.stdout.strip().splitlines()[-1]), out_polars)
                polars = runs[buckets][0]
                print(f"  polars, {polars['buckets']} bucket(s): {events:,} events in {polars['seconds']:.1f} s, "
                      f"peak RSS {polars['peak_rss_mb']:,.0f} MiB ({polars['peak_rss_mb'] / 1024:.2f} GiB; "
                      f"{polars['peak_rss_mb'] * 2**20 / events:.1f} bytes/event); load average "
                      f"{os.getloadavg()[0]:.2f}", flush=True)
            (polars, out_polars), *others = runs.values()
            for other, out_other in others:
                print(f"  {polars['buckets']} vs {other['buckets']} bucket(s): time ×"
                      f"{polars['seconds'] / other['seconds']:.2f}, peak RSS ×"
                      f"{polars['peak_rss_mb'] / other['peak_rss_mb']:.2f}; outputs identical: "
                      f"{_same_output(out_polars, out_other)}", flush=True)
            rows += [(persons, events, r["buckets"], r["seconds"], r["peak_rss_mb"]) for r, _ in runs.values()]
            if args.polars_only:
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
            ingest_events_spark(city.events, city.cells, out_spark,
                                IngestOptions(**city.span, name="bench", seed=7), spark=spark, progress=Progress(False))
            spark_seconds = time.perf_counter() - start
            same = _totals(out_polars) == _totals(out_spark)
            print(f"  spark: {spark_seconds:.1f} s; spark/polars ({polars['buckets']} bucket(s)) = "
                  f"{spark_seconds / polars['seconds']:.2f}; kept totals equal: {same} {_totals(out_spark)}",
                  flush=True)
            rows.append((persons, events, "spark", spark_seconds, float("nan")))
    finally:
        if spark is not None:
            spark.stop()
    print(f"\n  persons       events  buckets  seconds  peak_rss_MiB  (load average now {os.getloadavg()[0]:.2f})")
    for persons, events, buckets, seconds, rss in rows:
        print(f"{persons:>9,} {events:>12,} {buckets!s:>8} {seconds:>8.1f} {rss:>13,.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
