"""Ledger charges per second under contention, SQLite against PostgreSQL, each with its own baseline.

Run:  PYTHONPATH=. /tmp/venv/bin/python benchmarks/bench_ledger.py [--seconds 5] [--threads 8]
      [--windows 1] [--pg-url postgresql://...] [--no-pipeline] [--quick]

For each backend, in the same run and on the same machine:

* **uncontended**: one thread, one ledger handle, charging as fast as it can;
* **contended**: `--threads` threads released together, each with its own ledger handle (its
  own connection, as separate gunicorn workers or API hosts have) and its own client, all
  charging the same dataset and windows, so every charge serializes on the same all-clients
  spend rows (and, in both backends, on the audit chain's tail).

Every charge is a real `commit_release`: distinct query keys (no reuse), caps far above what
the run can spend, a stored answer and an audit row. Both backends run durable: SQLite with
`synchronous=FULL`; PostgreSQL with the server defaults (fsync on, synchronous_commit on) on a
throwaway server started from the installed binaries (tests/pg_server.py), unless --pg-url
points at one (its database must be empty or a previous run's).

Prints charges/s, median and 99th-percentile latency, contended/uncontended ratio per backend,
and PostgreSQL/SQLite ratios.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dpflows.budget import Epsilon
from dpflows.ledger import AuditEntry, Ledger, ReleaseRequest

DATASET = "bench"
CHARGE = Epsilon.parse("0.000001")
CAP = Epsilon.parse("1000")  # the hard maximum: 10^9 charges of CHARGE per window


@dataclass(frozen=True)
class Result:
    backend: str
    mode: str
    threads: int
    charges: int
    seconds: float
    latencies_s: list[float]

    @property
    def rate(self) -> float:
        return self.charges / self.seconds

    def row(self) -> str:
        lat = sorted(self.latencies_s)
        p50 = statistics.median(lat) * 1e3
        p99 = lat[min(len(lat) - 1, int(0.99 * len(lat)))] * 1e3
        return (f"{self.backend:<10} {self.mode:<12} {self.threads:>7} {self.charges:>8} "
                f"{self.rate:>10.0f} {p50:>9.2f} {p99:>9.2f}")


def _request(client_id: int, windows: tuple[int, ...]) -> ReleaseRequest:
    answer_id = uuid.uuid4().hex
    return ReleaseRequest(
        client_id=client_id, dataset=DATASET, query_key=uuid.uuid4().hex, windows=windows, loss=CHARGE,
        answer_id=answer_id, payload={"values": [0] * 16},
        audit=AuditEntry(action="query.flows", outcome="released", client_id=client_id, dataset=DATASET,
                         loss=CHARGE, answer_id=answer_id),
    )


def run(backend: str, mode: str, open_ledger: Callable[[], Ledger], clients: list[int], threads: int,
        windows: tuple[int, ...], seconds: float) -> Result:
    """`threads` workers, each with its own handle and client, charge until `seconds` have passed."""
    handles = [open_ledger() for _ in range(threads)]
    for h, cid in zip(handles, clients, strict=False):  # warm up: connections, prepared statements
        for _ in range(3):
            h.commit_release(_request(cid, windows))
    barrier = threading.Barrier(threads + 1)
    latencies: list[list[float]] = [[] for _ in range(threads)]
    errors: list[BaseException] = []
    stop_at = [0.0]

    def worker(i: int) -> None:
        try:
            barrier.wait()
            while (start := time.perf_counter()) < stop_at[0]:
                handles[i].commit_release(_request(clients[i], windows))
                latencies[i].append(time.perf_counter() - start)
        except BaseException as exc:
            errors.append(exc)

    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    began = time.perf_counter()
    stop_at[0] = began + seconds
    barrier.wait()
    for t in pool:
        t.join()
    elapsed = time.perf_counter() - began
    for h in handles:
        h.close()
    if errors:
        raise errors[0]
    flat = [x for per in latencies for x in per]
    return Result(backend, mode, threads, len(flat), elapsed, flat)


def bench_backend(backend: str, open_ledger: Callable[[], Ledger], args: argparse.Namespace) -> list[Result]:
    windows = tuple(range(args.windows))
    setup = open_ledger()
    run_id = uuid.uuid4().hex[:8]  # fresh client names, so a reused --pg-url database works too
    clients = []
    for i in range(args.threads):
        cid = setup.create_client(f"bench-{run_id}-{i}", "planner").id
        setup.set_cap(DATASET, CAP, client_id=cid, window=None)
        clients.append(cid)
    setup.set_cap(DATASET, CAP, client_id=None, window=None)
    setup.close()
    single = run(backend, "uncontended", open_ledger, clients[:1], 1, windows, args.seconds)
    many = run(backend, "contended", open_ledger, clients, args.threads, windows, args.seconds)
    return [single, many]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per phase")
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--windows", type=int, default=1, help="windows each charge touches")
    parser.add_argument("--pg-url", help="an existing PostgreSQL database instead of a throwaway server")
    parser.add_argument("--no-pipeline", action="store_true",
                        help="PostgreSQL without pipeline mode: one round trip per statement")
    parser.add_argument("--quick", action="store_true", help="1 second per phase (a smoke test)")
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds = 1.0

    from dpflows.ledger.sqlite import SqliteLedger

    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="dpflows-bench-") as tmp:
        path = Path(tmp) / "ledger.db"
        results += bench_backend("sqlite", lambda: SqliteLedger(path), args)

    from dpflows.ledger.postgres import PostgresLedger

    server = None
    url = args.pg_url
    if url is None:
        from tests.pg_server import PgServer, find_bindir

        bindir = find_bindir()
        if bindir is None:
            print("PostgreSQL binaries not found (run scripts/bootstrap.sh as root); pass --pg-url", file=sys.stderr)
            return 1
        server = PgServer(bindir, durable=True).start()
        url = server.create_database()
    try:
        pipeline = not args.no_pipeline
        results += bench_backend("postgres", lambda: PostgresLedger(url, max_size=2, pipeline=pipeline), args)
    finally:
        if server is not None:
            server.stop()

    print(f"\nledger commit_release, {args.windows} window(s) per charge, {args.seconds:g}s per phase, durable")
    print(f"{'backend':<10} {'mode':<12} {'threads':>7} {'charges':>8} {'charges/s':>10} {'p50 ms':>9} {'p99 ms':>9}")
    for r in results:
        print(r.row())
    by = {(r.backend, r.mode): r for r in results}
    print()
    for backend in ("sqlite", "postgres"):
        ratio = by[backend, "contended"].rate / by[backend, "uncontended"].rate
        print(f"{backend}: contended / uncontended = {ratio:.2f}")
    for mode in ("uncontended", "contended"):
        ratio = by["postgres", mode].rate / by["sqlite", mode].rate
        print(f"postgres / sqlite ({mode}) = {ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
