"""Latency and throughput of the HTTP API through real gunicorn on loopback.

Measures, in one run and under the same gunicorn settings:
- fresh zone-level flow queries (100 zones → 10,000 keys, 4 weeks): each one distinct, so each
  is computed, noised, charged and stored;
- reused answers (the identical query again: a ledger lookup, no noise, no charge);
- a bare Flask endpoint returning a JSON body of the same size (the baseline).

Goals (issue 4): fresh p50 ≤ 20 ms; reused throughput ≥ 0.5× the bare endpoint's.

    python benchmarks/bench_api.py [--requests 300] [--clients 4] [--workers N]
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import polars as pl
import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dpflows.aggregates import AggregateStore, DatasetMetadata, write_aggregates  # noqa: E402
from dpflows.budget import Epsilon  # noqa: E402
from dpflows.ledger.sqlite import SqliteLedger  # noqa: E402
from dpflows.service import Service  # noqa: E402
from tests.servers import GunicornServer  # noqa: E402

FIRST = dt.date(2024, 3, 4)


def build_city(root: Path, cells: int = 1000, zones: int = 100, days: int = 28, rows: int = 1_000_000) -> None:
    """A synthetic 4-week dataset: `rows` trip aggregates between `cells` cells in `zones` zones."""
    rng = np.random.default_rng(7)  # synthetic benchmark data, not noise
    ids = [f"c{i:04d}" for i in range(cells)]
    cell_df = pl.DataFrame({"cell_id": ids, "lat": rng.uniform(52.4, 52.6, cells), "lon": rng.uniform(13.2, 13.6, cells)})
    o, d = rng.integers(0, cells, rows), rng.integers(0, cells, rows)
    trips = pl.DataFrame({
        "day": pl.Series([FIRST + dt.timedelta(days=int(x)) for x in range(days)])[rng.integers(0, days, rows)],
        "hour": rng.integers(0, 24, rows).astype(np.int8),
        "origin": pl.Series(ids)[o], "dest": pl.Series(ids)[d], "count": rng.integers(1, 5, rows),
    }).group_by("day", "hour", "origin", "dest").agg(pl.col("count").sum())
    presence = pl.DataFrame({"day": [FIRST], "hour": [8], "cell": [ids[0]], "count": [1]})
    meta = DatasetMetadata("bench", FIRST, FIRST + dt.timedelta(days=days), 7, 20, 100)
    write_aggregates(root / "datasets" / "bench", meta, cell_df, trips, presence)
    service = Service(AggregateStore(root), SqliteLedger(root / "setup.db"))
    service.add_zoning("bench", "zones100", "cell_id,zone_id\n" + "".join(f"{c},z{i % zones:03d}\n" for i, c in enumerate(ids)))
    service.ledger.close()
    (root / "setup.db").unlink()


def drive(url: str, bodies: list[dict], headers: dict, clients: int, path: str) -> tuple[list[float], float, int]:
    """Send every body once over `clients` threads; return latencies (ms), elapsed s, errors."""
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    it = iter(bodies)

    def run() -> None:
        nonlocal errors
        session = requests.Session()
        while True:
            with lock:
                body = next(it, None)
            if body is None:
                return
            t0 = time.perf_counter()
            r = session.post(url + path, json=body, headers=headers, timeout=60)
            ms = (time.perf_counter() - t0) * 1000
            with lock:
                latencies.append(ms)
                errors += r.status_code != 200

    start = time.perf_counter()
    threads = [threading.Thread(target=run) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, time.perf_counter() - start, errors


def report(name: str, lat: list[float], elapsed: float, errors: int) -> float:
    lat = sorted(lat)
    p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
    rps = len(lat) / elapsed
    print(f"{name:<28} n={len(lat):>5}  p50={statistics.median(lat):7.2f} ms  p99={p99:7.2f} ms  "
          f"{rps:8.1f} req/s  errors={errors}")
    return rps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--workers", type=int, default=4)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        build_city(root)
        print(f"dataset: 1,000 cells, 100 zones, 28 days, built in {time.perf_counter() - t0:.1f} s")
        setup = Service(AggregateStore(root), SqliteLedger(root / "ledger.db"))
        planner, key = setup.create_client("bench", "planner")
        setup.set_cap("bench", Epsilon.parse("1000"), client_id=planner.id, window=None)
        setup.set_cap("bench", Epsilon.parse("1000"), client_id=None, window=None)
        setup.ledger.close()
        headers = {"Authorization": f"Bearer {key}"}
        base = {"dataset": "bench", "zoning": "zones100", "start": "2024-03-04", "end": "2024-04-01"}
        fresh = [{**base, "epsilon": round(0.01 + i * 1e-6, 6)} for i in range(args.requests)]
        env = {"DPFLOWS_RATE_LIMIT": "100000", "DPFLOWS_RATE_BURST": "100000"}
        print(f"gunicorn: {args.workers} sync workers, {args.clients} concurrent clients, loopback")
        with GunicornServer(root, f"sqlite:///{root}/ledger.db", workers=args.workers, extra_env=env) as srv:
            drive(srv.url, [{**base, "epsilon": 0.5}] * (2 * args.workers), headers, args.clients, "/v1/flows")  # warm up
            body_bytes = len(requests.post(srv.url + "/v1/flows", json={**base, "epsilon": 0.5}, headers=headers,
                                           timeout=60).content)
            lat, el, err = drive(srv.url, fresh[:50], headers, 1, "/v1/flows")
            report("fresh, 1 client", lat, el, err)
            lat, el, err = drive(srv.url, fresh[50:], headers, args.clients, "/v1/flows")
            report(f"fresh, {args.clients} clients", lat, el, err)
            reuse = [{**base, "epsilon": 0.5}] * args.requests * 2
            lat, el, err = drive(srv.url, reuse, headers, args.clients, "/v1/flows")
            reused_rps = report(f"reused, {args.clients} clients", lat, el, err)
        with GunicornServer(root, "sqlite:///unused", workers=args.workers, app="benchmarks._bare_app:app",
                            extra_env={"BARE_BODY_BYTES": str(body_bytes)}) as bare:
            drive(bare.url, [{}] * 50, {}, args.clients, "/bare")
            lat, el, err = drive(bare.url, [{}] * args.requests * 2, {}, args.clients, "/bare")
            bare_rps = report(f"bare Flask, {args.clients} clients", lat, el, err)
        print(f"answer body: {body_bytes:,} bytes (10,000 keys)")
        print(f"reused / bare throughput: {reused_rps / bare_rps:.2f}x (goal >= 0.5x)")


if __name__ == "__main__":
    main()
