"""Latency and throughput of the HTTP API, in-process and through real gunicorn on loopback.

Measures, in one run (the load average is printed with every section):
- the sampler's ceiling: OpenDP's exact discrete Laplace draws per second on this machine (one
  thread, and two at once: the draw releases the GIL), as 10,000-key answers per second;
- fresh zone-level flow queries (100 zones → 10,000 keys, 4 weeks), each one distinct (its
  hours differ) at the preset ε 0.5, so each is computed, noised, charged and stored: in-process
  (Flask's test client, the whole app) and through gunicorn, each with the noise pool warm
  (DPFLOWS_NOISE_POOL_VALUES, filled before timing) and disabled (every draw at request time);
- sustained fresh answers per second with 2 clients through gunicorn, past what the pools hold,
  against that ceiling;
- reused answers (the identical query again: one ledger read, a cached body, no noise, no charge)
  against a bare Flask endpoint returning a body of the same size (benchmarks/_bare_app.py), and
  where a reused request's time goes (in-process profile). Both are measured the same way: both
  servers up at once with the same gunicorn settings, warmed with the same requests, timed in
  alternating rounds (--rounds), with the CPU per request of the gunicorn processes and of this
  load generator; --before PATH adds another checkout's reused answers to the same rounds, on the
  same data and ledger (before and after a change); --reuse-only runs only these.

Goals (issue 16): fresh p50 ≤ 20 ms with the pool warm; reused throughput ≥ 0.8× the bare endpoint's.

    python benchmarks/bench_api.py [--requests 600] [--clients 4] [--workers 4] [--pool-values N]
                                   [--rounds 4] [--before ../other-checkout] [--reuse-only]

A warm pool serves as many fresh answers as it holds (pool values / 3 stocks / 10,000 keys per
worker); past that, answers wait on the sampler again, whose ceiling this run measures.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import datetime as dt
import gc
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
#: untimed requests sent to the service and to the bare endpoint alike before timing either
WARM_UP = 50


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


def load() -> str:
    """The load average, to state with every figure (the machine may be shared)."""
    one, five, fifteen = os.getloadavg()
    return f"load {one:.2f} {five:.2f} {fifteen:.2f}"


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


def server_cpu(server: GunicornServer) -> float:
    """CPU seconds (user + system) the server's master and workers have used so far (Linux /proc)."""
    total = 0
    for pid in (server.process.pid, *server.worker_pids()):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # a worker that exited
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / os.sysconf("SC_CLK_TCK")


def report(name: str, lat: list[float], elapsed: float, errors: int) -> float:
    lat = sorted(lat)
    p95 = lat[min(len(lat) - 1, int(len(lat) * 0.95))]
    p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
    rps = len(lat) / elapsed
    print(f"{name:<40} n={len(lat):>5}  p50={statistics.median(lat):7.2f} ms  p95={p95:7.2f} ms  "
          f"p99={p99:7.2f} ms  {rps:8.1f} req/s  errors={errors}  ({load()})")
    return rps


def fresh_bodies(base: dict, starts: tuple[str, ...] = ("2024-03-04",)) -> list[dict]:
    """Distinct fresh queries at the preset ε: every [from, to) hour range (300 of them) per start day."""
    return [{**base, "start": start, "epsilon": 0.5, "hours": [a, b]}
            for start in starts for a in range(24) for b in range(a + 1, 25)]


def sampler_ceiling(keys: int = 10_000, reps: int = 20) -> tuple[float, float]:
    """OpenDP's exact discrete Laplace, drawn at request time (no pool) as a fresh answer draws it, on one
    thread and on two at once; returns both rates in draws per second."""
    from dpflows.mechanisms import release_counts

    assert noise_pool.current() is None  # every draw at request time
    zeros = np.zeros(keys, dtype=np.int64)
    release_counts(zeros, 20, Epsilon.parse("0.5"))  # warm up

    def draw(n: int) -> None:
        for _ in range(n):
            release_counts(zeros, 20, Epsilon.parse("0.5"))

    rates = []
    for threads in (1, 2):
        t0 = time.perf_counter()
        workers = [threading.Thread(target=draw, args=(reps,)) for _ in range(threads)]
        for t in workers:
            t.start()
        for t in workers:
            t.join()
        rate = threads * reps * keys / (time.perf_counter() - t0)
        rates.append(rate)
        print(f"sampler ceiling, {threads} thread(s): {rate:,.0f} exact discrete Laplace draws/s = "
              f"{rate / keys:.1f} fresh {keys:,}-key answers/s at most ({1e6 / rate * threads:.2f} µs per draw "
              f"per thread; {load()})")
    return rates[0], rates[1]


def _cumulative(stats: dict, path: str, func: str) -> float:
    return max((v[3] for k, v in stats.items() if k[0].endswith(path) and k[2] == func), default=0.0)


#: (label, file, function): cumulative time per request of these, from the profile
FRESH_PARTS = (("whole request", "flask/testing.py", "open"),
               ("true counts (queries.prepare)", "dpflows/queries.py", "prepare"),
               ("noise: pool take or OpenDP draw, + add", "dpflows/mechanisms/_base.py", "_noised"),
               ("pricing (scale, privacy map, bound)", "dpflows/service/context.py", "price"),
               ("stored-answer lookup", "dpflows/ledger/_sql_answers.py", "find_answer"),
               ("ledger transaction", "dpflows/ledger/_sql.py", "commit_release"),
               ("payload to JSON text", "dpflows/ledger/_sql_rules.py", "_payload_text"),
               ("content (columns, bounds)", "dpflows/service/answering.py", "describe_content"),
               ("render JSON template", "api/renderers.py", "json_template"),
               ("  of which values from columns", "api/renderers.py", "values_json"),
               ("body with per-request fields", "api/body_cache.py", "response"),
               ("request log line", "api/logs.py", "_log"))
REUSE_PARTS = (("whole request", "flask/testing.py", "open"),
               ("authenticate (key hash, ledger read)", "dpflows/service/admin.py", "authenticate"),
               ("rate limit (shared SQLite bucket)", "api/ratelimit.py", "take"),
               ("body validation (webargs, marshmallow)", "webargs/core.py", "parse"),
               ("dataset lookup", "dpflows/service/context.py", "dataset"),
               ("pricing", "dpflows/service/context.py", "price"),
               ("reuse key", "dpflows/service/context.py", "query_key"),
               ("answer id + budgets (one ledger read)", "dpflows/ledger/_sql.py", "find_reusable"),
               ("audit row queued", "dpflows/ledger/audit_queue.py", "put"),
               ("window statuses", "dpflows/service/context.py", "window_status"),
               ("cached body + per-request fields", "api/renderers.py", "render_answer"),
               ("request log line", "api/logs.py", "_log"))


def profile(client, requests_: list[tuple[dict, dict]], parts: tuple[tuple[str, str, str], ...]) -> str:
    prof = cProfile.Profile()
    for body, headers in requests_:
        prof.enable()
        r = client.post("/v1/flows", json=body, headers=headers)
        prof.disable()
        assert r.status_code == 200
    stats = pstats.Stats(prof, stream=io.StringIO()).stats  # type: ignore[attr-defined]
    return "; ".join(f"{name} {_cumulative(stats, path, func) / len(requests_) * 1000:.2f}"
                     for name, path, func in parts)


def make_app(root: Path, pool_values: int):
    app = create_app({"DPFLOWS_DATA_DIR": str(root), "DPFLOWS_LEDGER_URL": f"sqlite:///{root}/ledger.db",
                      "DPFLOWS_NOISE_POOL_VALUES": str(pool_values), "DPFLOWS_NOISE_POOL_EPSILONS": "0.5",
                      "DPFLOWS_RATE_LIMIT": "100000", "DPFLOWS_RATE_BURST": "100000"})
    import logging

    logging.getLogger("dpflows.api.request").disabled = True  # one JSON line per request: not the point here
    gc.freeze()  # as api/wsgi.py does in every gunicorn worker once the app is built
    return app


def in_process(root: Path, key: str, bodies: list[dict], pool_values: int, label: str, profile_start: str) -> int:
    """Fresh answers through the whole app in this process (no HTTP), and where their time goes."""
    client = make_app(root, pool_values).test_client()
    headers = {"Authorization": f"Bearer {key}"}
    pool = noise_pool.current()
    if pool is not None:
        share = pool.capacity // len(pool.keys())
        bodies = bodies[:max(1, share // 10_000 - 12)]  # a full stock serves these and the 10 profiled
        print(f"  pool: {len(pool.keys())} stocks (the dataset's public sensitivities at ε 0.5) of {share:,} values")
        pool.wait_full(600)
    lat: list[float] = []
    start = time.perf_counter()
    for body in bodies:
        t0 = time.perf_counter()
        r = client.post("/v1/flows", json=body, headers=headers)
        lat.append((time.perf_counter() - t0) * 1000)
        assert r.status_code == 200, r.get_data(as_text=True)
    elapsed = time.perf_counter() - start
    report(f"in-process fresh, {label}", lat, elapsed, 0)
    # Where the time goes: 10 more distinct answers, profiled (the profiler adds its own overhead).
    print("  profiled, ms per request: " + profile(client, [({**b, "start": profile_start}, headers)
                                                            for b in bodies[-10:]], FRESH_PARTS))
    if pool is not None:
        print(f"  pool hits {pool.hits}, misses {pool.misses} (timed and profiled)")
    return len(bodies)


def reuse_in_process(root: Path, key: str, base: dict, n: int = 300) -> None:
    """Reused answers in this process: their latency, and where a reused request's time goes."""
    client = make_app(root, 0).test_client()
    headers = {"Authorization": f"Bearer {key}"}
    body = {**base, "epsilon": 0.5}
    for _ in range(3):
        assert client.post("/v1/flows", json=body, headers=headers).status_code == 200
    lat = []
    start = time.perf_counter()
    for _ in range(n):
        t0 = time.perf_counter()
        client.post("/v1/flows", json=body, headers=headers)
        lat.append((time.perf_counter() - t0) * 1000)
    report("in-process reused", lat, time.perf_counter() - start, 0)
    print("  profiled, ms per request: " + profile(client, [(body, headers)] * 100, REUSE_PARTS))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=600, help="reused and bare requests timed (each)")
    ap.add_argument("--before", type=Path, help="another checkout of dpflows whose reused answers are timed in the "
                    "same rounds, on the same data and ledger (before and after a change)")
    ap.add_argument("--rounds", type=int, default=4, help="alternating rounds the reused and bare requests are timed in")
    ap.add_argument("--clients", type=int, default=4, help="clients for the reused and bare runs")
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--in-process-only", action="store_true", help="skip gunicorn")
    ap.add_argument("--skip-fresh", action="store_true", help="through gunicorn, only reused vs bare")
    ap.add_argument("--reuse-only", action="store_true",
                    help="only the reused answers (in-process, and through gunicorn against the bare endpoint)")
    ap.add_argument("--fresh", type=int, default=100, help="fresh answers timed per in-process run")
    ap.add_argument("--sustained", type=int, default=400, help="fresh answers in the 2-client sustained run")
    ap.add_argument("--pool-values", type=int, default=2_000_000,
                    help="DPFLOWS_NOISE_POOL_VALUES for the warm runs (8 bytes each)")
    args = ap.parse_args()
    print(f"bench_api: {os.cpu_count()} cores; {load()}")
    one_thread, ceiling = (float("inf"), 1.0) if args.reuse_only else sampler_ceiling()
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
        n_warm = 0
        if not args.reuse_only:
            n_warm = in_process(root, key, fresh[:args.fresh], args.pool_values, "pool warm", "2024-03-10")
            in_process(root, key, [{**b, "start": "2024-03-06"} for b in fresh[:n_warm]], 0, "pool disabled",
                       "2024-03-11")
        reuse_in_process(root, key, base)
        if args.in_process_only:
            return
        env = {"DPFLOWS_RATE_LIMIT": "100000", "DPFLOWS_RATE_BURST": "100000", "DPFLOWS_NOISE_POOL_EPSILONS": "0.5"}
        # each worker fills its own pool after fork, at the measured one-thread rate, the workers sharing the cores
        fill_s = 1.3 * args.pool_values * args.workers / (one_thread * min(args.workers, os.cpu_count() or 1)) + 2
        print(f"gunicorn: {args.workers} sync workers, loopback; pool of {args.pool_values:,} values per worker "
              f"(filled after fork: {fill_s:.0f} s allowed)")
        for label, values, start in (("pool warm", args.pool_values, "2024-03-07"), ("pool disabled", 0, "2024-03-08")):
            if args.skip_fresh or args.reuse_only:
                break
            with GunicornServer(root, f"sqlite:///{root}/ledger.db", workers=args.workers,
                                extra_env={**env, "DPFLOWS_NOISE_POOL_VALUES": str(values)}) as srv:
                if values:
                    time.sleep(fill_s)
                bodies = [{**b, "start": start} for b in fresh[:min(len(fresh), n_warm * args.workers // 2)]]
                lat, el, err = drive(srv.url, bodies, headers, 1, "/v1/flows")
                report(f"gunicorn fresh, 1 client, {label}", lat, el, err)
        if not (args.skip_fresh or args.reuse_only):
            with GunicornServer(root, f"sqlite:///{root}/ledger.db", workers=args.workers,
                                extra_env={**env, "DPFLOWS_NOISE_POOL_VALUES": str(args.pool_values)}) as srv:
                time.sleep(fill_s)
                held = args.workers * (args.pool_values // 3 // 10_000)
                bodies = fresh_bodies(base, ("2024-03-12", "2024-03-13"))[:args.sustained]
                lat, el, err = drive(srv.url, bodies, headers, 2, "/v1/flows")
                rps = report("gunicorn fresh, 2 clients, sustained", lat, el, err)
                print(f"  {len(bodies)} fresh answers, past the ~{held} the full pools held; the sampler's ceiling on "
                      f"this machine: {ceiling / 10_000:.1f} answers/s (two threads drawing, measured above): "
                      f"{rps / (ceiling / 10_000):.2f}x of it")
        # Reused answers against the bare endpoint, measured the same way: both servers up at once with the same
        # gunicorn settings (4 sync workers), both warmed with the same requests (every worker has rendered its
        # body), then timed in alternating rounds, so that the other jobs on the machine weigh on both alike.
        # No pool: no refill thread competes for the cores, as none would once pools are full.
        reuse_body = {**base, "epsilon": 0.5}
        with GunicornServer(root, f"sqlite:///{root}/ledger.db", workers=args.workers, extra_env=env) as srv:
            drive(srv.url, [reuse_body] * WARM_UP, headers, args.clients, "/v1/flows")
            body_bytes = len(requests.post(srv.url + "/v1/flows", json=reuse_body, headers=headers, timeout=60).content)
            with contextlib.ExitStack() as more:
                bare = more.enter_context(GunicornServer(root, "sqlite:///unused", workers=args.workers,
                                                         app="benchmarks._bare_app:app",
                                                         extra_env={"BARE_BODY_BYTES": str(body_bytes)}))
                drive(bare.url, [{}] * WARM_UP, {}, args.clients, "/bare")
                sides = {"reused": (srv.url, reuse_body, headers, "/v1/flows"), "bare": (bare.url, {}, {}, "/bare")}
                if args.before:  # the same ledger and data served by another checkout: before and after, same run
                    before = more.enter_context(GunicornServer(root, f"sqlite:///{root}/ledger.db", workers=args.workers,
                                                               extra_env=env, code=args.before))
                    drive(before.url, [reuse_body] * WARM_UP, headers, args.clients, "/v1/flows")
                    sides["before"] = (before.url, reuse_body, headers, "/v1/flows")
                servers = {"reused": srv, "bare": bare, **({"before": before} if args.before else {})}
                timed: dict[str, tuple[list[float], float, int]] = {side: ([], 0.0, 0) for side in sides}
                cpu = {side: [0.0, 0.0] for side in sides}  # (server, client) CPU seconds
                per_round = max(1, args.requests // args.rounds)
                for round_ in range(args.rounds):
                    order = list(sides) if round_ % 2 == 0 else list(reversed(sides))
                    rates = {}
                    for side in order:
                        url, body, head, path = sides[side]
                        server0, client0 = server_cpu(servers[side]), time.process_time()
                        lat, el, err = drive(url, [body] * per_round, head, args.clients, path)
                        cpu[side][0] += server_cpu(servers[side]) - server0
                        cpu[side][1] += time.process_time() - client0
                        rates[side] = len(lat) / el
                        got = timed[side]
                        timed[side] = (got[0] + lat, got[1] + el, got[2] + err)
                    print(f"  round {round_ + 1}: " + ", ".join(f"{side} {rate:.1f} req/s" for side, rate in rates.items())
                          + f" (reused/bare {rates['reused'] / rates['bare']:.2f}x; {load()})")
        print("  CPU per request (gunicorn master and workers; this load generator): " + "; ".join(
            f"{side} {cpu[side][0] / len(timed[side][0]) * 1000:.2f} ms + {cpu[side][1] / len(timed[side][0]) * 1000:.2f} ms"
            for side in timed))
        reused_rps = report(f"gunicorn reused, {args.clients} clients", *timed["reused"])
        bare_rps = report(f"bare Flask, {args.clients} clients", *timed["bare"])
        if "before" in timed:
            before_rps = report(f"gunicorn reused, {args.before.name} (before)", *timed["before"])
            print(f"before / bare throughput: {before_rps / bare_rps:.2f}x")
        print(f"answer body: {body_bytes:,} bytes (10,000 keys)")
        print(f"reused / bare throughput: {reused_rps / bare_rps:.2f}x (goal >= 0.8x); {load()}")

if __name__ == "__main__":
    main()
