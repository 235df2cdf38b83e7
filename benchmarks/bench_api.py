"""Latency and throughput of the HTTP API, in-process and through real gunicorn on loopback.

Measures, in one run:
- fresh zone-level flow queries (100 zones → 10,000 keys, 4 weeks), each one distinct (its
  hours differ) at the preset ε 0.5, so each is computed, noised, charged and stored: in-process
  (Flask's test client, the whole app) and through gunicorn, each with the noise pool warm
  (DPFLOWS_NOISE_POOL_VALUES, filled before timing) and disabled (every draw at request time);
- reused answers (the identical query again: a ledger lookup, no noise, no charge);
- a bare Flask endpoint returning a JSON body of the same size (the baseline).

Goals (issue 4): fresh p50 ≤ 20 ms; reused throughput ≥ 0.5× the bare endpoint's.

    python benchmarks/bench_api.py [--requests 300] [--clients 4] [--workers N] [--pool-values N]

A warm pool serves as many fresh answers as it holds (pool values / 2 stocks / 10,000 keys);
past that, answers wait on the sampler again: its ceiling is one 10,000-key answer per ~65 ms
of one core (6.5 µs per value), shared by every worker of a host.
"""

from __future__ import annotations

import argparse
import cProfile
import datetime as dt
import io
import os
import pstats
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

from api import create_app  # noqa: E402
from dpflows import noise_pool  # noqa: E402
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
    p95 = lat[min(len(lat) - 1, int(len(lat) * 0.95))]
    p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
    rps = len(lat) / elapsed
    print(f"{name:<36} n={len(lat):>5}  p50={statistics.median(lat):7.2f} ms  p95={p95:7.2f} ms  "
          f"p99={p99:7.2f} ms  {rps:8.1f} req/s  errors={errors}")
    return rps


def fresh_bodies(base: dict) -> list[dict]:
    """Distinct fresh queries at the preset ε: every [from, to) hour range (300 of them)."""
    return [{**base, "epsilon": 0.5, "hours": [a, b]} for a in range(24) for b in range(a + 1, 25)]


#: (label, file, function): cumulative time per request of these, from the profile
PROFILE_PARTS = (("whole request", "flask/testing.py", "open"),
                 ("true counts (queries.prepare)", "dpflows/queries.py", "prepare"),
                 ("noise: pool take + add", "dpflows/noise_pool.py", "take"),
                 ("noise: OpenDP draws at request time", "dpflows/mechanisms.py", "_noised"),
                 ("pricing (scale, privacy map, bound)", "dpflows/service/context.py", "price"),
                 ("stored-answer lookup", "dpflows/ledger/_sql.py", "find_answer"),
                 ("ledger transaction", "dpflows/ledger/_sql.py", "commit_release"),
                 ("payload to JSON text", "dpflows/ledger/_sql.py", "_payload_text"),
                 ("describe (rows, bounds, budgets)", "dpflows/service/answering.py", "describe"),
                 ("value rows (per-row dicts)", "dpflows/service/answering.py", "value_rows"),
                 ("answer document", "api/renderers.py", "answer_document"),
                 ("response JSON (orjson)", "api/__init__.py", "_encode"),
                 ("request log line", "api/logs.py", "_log"))


def in_process(root: Path, key: str, bodies: list[dict], pool_values: int, label: str, profile_start: str) -> int:
    """Fresh answers through the whole app in this process (no HTTP), and where their time goes."""
    app = create_app({"DPFLOWS_DATA_DIR": str(root), "DPFLOWS_LEDGER_URL": f"sqlite:///{root}/ledger.db",
                      "DPFLOWS_NOISE_POOL_VALUES": str(pool_values), "DPFLOWS_NOISE_POOL_EPSILONS": "0.5",
                      "DPFLOWS_RATE_LIMIT": "100000", "DPFLOWS_RATE_BURST": "100000"})
    import logging

    logging.getLogger("dpflows.api.request").disabled = True  # one JSON line per request: not the point here
    client = app.test_client()
    headers = {"Authorization": f"Bearer {key}"}
    pool = noise_pool.current()
    if pool is not None:
        share = pool.capacity // len(pool.keys())
        bodies = bodies[:max(1, share // 10_000 - 12)]  # a full stock serves these and the 10 profiled
        print(f"  pool: {len(pool.keys())} stocks (the dataset's public sensitivities at ε 0.5) of {share:,} values")
        pool.wait_full(600)
    lat: list[float] = []
    profile = cProfile.Profile()
    start = time.perf_counter()
    for body in bodies:
        t0 = time.perf_counter()
        r = client.post("/v1/flows", json=body, headers=headers)
        lat.append((time.perf_counter() - t0) * 1000)
        assert r.status_code == 200, r.get_data(as_text=True)
    elapsed = time.perf_counter() - start
    report(f"in-process fresh, {label}", lat, elapsed, 0)
    # Where the time goes: 10 more distinct answers, profiled (the profiler adds its own overhead).
    more = [{**body, "start": profile_start} for body in bodies[-10:]]
    for body in more:
        profile.enable()
        r = client.post("/v1/flows", json=body, headers=headers)
        profile.disable()
        assert r.status_code == 200 and not r.get_json()["reused"]
    stats = pstats.Stats(profile, stream=io.StringIO()).stats  # type: ignore[attr-defined]
    parts = []
    for name, path, func in PROFILE_PARTS:
        cum = max((v[3] for k, v in stats.items() if k[0].endswith(path) and k[2] == func), default=0.0)
        parts.append(f"{name} {cum / len(more) * 1000:.1f}")
    print("  profiled, ms per request: " + "; ".join(parts))
    if pool is not None:
        print(f"  pool hits {pool.hits}, misses {pool.misses} (timed and profiled)")
    return len(bodies)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--in-process-only", action="store_true", help="skip gunicorn")
    ap.add_argument("--fresh", type=int, default=100, help="fresh answers timed per in-process run")
    ap.add_argument("--pool-values", type=int, default=2_000_000,
                    help="DPFLOWS_NOISE_POOL_VALUES for the warm runs (8 bytes each)")
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
        fresh = fresh_bodies(base)
        print(f"in-process: up to {args.fresh} fresh answers each way, pool of {args.pool_values:,} values")
        n_warm = in_process(root, key, fresh[:args.fresh], args.pool_values, "pool warm", "2024-03-10")
        in_process(root, key, [{**b, "start": "2024-03-06"} for b in fresh[:n_warm]], 0, "pool disabled",
                   "2024-03-11")
        if args.in_process_only:
            return
        env = {"DPFLOWS_RATE_LIMIT": "100000", "DPFLOWS_RATE_BURST": "100000", "DPFLOWS_NOISE_POOL_EPSILONS": "0.5"}
        print(f"gunicorn: {args.workers} sync workers, loopback; fresh answers from 1 client, pool of "
              f"{args.pool_values:,} values per worker")
        for label, values, start in (("pool warm", args.pool_values, "2024-03-07"), ("pool disabled", 0, "2024-03-08")):
            with GunicornServer(root, f"sqlite:///{root}/ledger.db", workers=args.workers,
                                extra_env={**env, "DPFLOWS_NOISE_POOL_VALUES": str(values)}) as srv:
                # each worker fills its own pool after fork: ~6.5 µs per value, the workers sharing the cores
                if values:
                    time.sleep(1.5 * values * 6.5e-6 * args.workers / max(1, min(args.workers, os.cpu_count() or 1)) + 2)
                bodies = [{**b, "start": start} for b in fresh[:min(len(fresh), n_warm * args.workers // 2)]]
                lat, el, err = drive(srv.url, bodies, headers, 1, "/v1/flows")
                report(f"gunicorn fresh, 1 client, {label}", lat, el, err)
        with GunicornServer(root, f"sqlite:///{root}/ledger.db", workers=args.workers, extra_env=env) as srv:
            drive(srv.url, [{**base, "epsilon": 0.5}] * (2 * args.workers), headers, args.clients, "/v1/flows")  # warm up
            body_bytes = len(requests.post(srv.url + "/v1/flows", json={**base, "epsilon": 0.5}, headers=headers,
                                           timeout=60).content)
            lat, el, err = drive(srv.url, [{**b, "start": "2024-03-09"} for b in fresh[:args.requests]], headers,
                                 args.clients, "/v1/flows")
            report(f"fresh, {args.clients} clients, no pool", lat, el, err)
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
