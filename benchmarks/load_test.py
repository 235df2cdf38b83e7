"""A bounded load test against a real gunicorn on loopback, with exact budget totals afterwards.

Run:  PYTHONPATH=. /tmp/venv/bin/python benchmarks/load_test.py [--requests 20000] [--threads 8]
      [--workers 3] [--seed 1]

Builds the small synthetic test dataset and a fresh SQLite ledger in a temporary directory,
starts `gunicorn api.wsgi:app` on 127.0.0.1 (tests/servers.py), and sends exactly
`--requests` requests from `--threads` threads (one requests.Session each), drawn from a fixed
mix:

* fresh     35%  a query never asked before (planner: flows/presence/patterns; analyst: coarse flows)
* reused    25%  a query already answered, asked again (by any client): must cost 0
* read      20%  GET /v1/budget or /v1/datasets
* refused   20%  no key (401), analyst asking presence (403), ε above the per-query cap (403),
                 ε = -1 (422), unknown dataset (404), and a 'greedy' planner whose small cap runs
                 out (409 once spent)

The per-key rate limit is raised for the run (it bounds CPU per key, not privacy). Prints
error rate (5xx, broken connections, or a status not allowed for the request's kind), latency
p50/p90/p99 per kind and overall, requests/s, and the exact budget totals: the ledger's charge
rows against the sum of `epsilon_charged` × windows over the 200 answers clients received
(equal, or the run fails), and every client's and the global spending against its cap.
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import sqlite3
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dpflows.aggregates import AggregateStore
from dpflows.budget import Epsilon
from dpflows.ledger.sqlite import SqliteLedger
from dpflows.service import Service

FIRST_DAY = dt.date(2024, 3, 4)
WINDOWS = 4
FRESH_EPSILON = "0.001"
GREEDY_EPSILON = "0.01"
CAPS = {"planner": "1", "analyst": "0.5", "greedy": "0.02", "global": "3"}
MIX = (("fresh", 35), ("reused", 25), ("read", 20), ("refused", 20))
ALLOWED = {"fresh": {200, 409}, "reused": {200}, "read": {200}, "refused": {401, 403, 404, 409, 422},
           "greedy": {200, 409}}


@dataclass
class Clients:
    keys: dict[str, str]  # role name -> API key
    ids: dict[str, int]


def seed(service: Service, dataset: str = "small") -> Clients:
    """An admin, a planner, an analyst and a 'greedy' planner with a small cap, all capped per window."""
    keys, ids = {}, {}
    for name, role in (("admin", "admin"), ("planner", "planner"), ("analyst", "analyst"), ("greedy", "planner")):
        client, key = service.create_client(name, role)
        keys[name], ids[name] = key, client.id
        if name != "admin":
            service.set_cap(dataset, Epsilon.parse(CAPS[name]), client_id=client.id, window=None)
        if name in ("planner", "analyst"):  # one sharing group: "reused" asks each other's answers again
            service.set_group(client.id, "city")
    service.set_cap(dataset, Epsilon.parse(CAPS["global"]), client_id=None, window=None)
    return Clients(keys, ids)


def fresh_query(k: int, *, analyst: bool, dataset: str = "small") -> tuple[str, dict[str, Any]]:
    """The k-th query of an injective enumeration, so every fresh query is new (one window each)."""
    window, rest = k % WINDOWS, k // WINDOWS
    start_hour, rest = rest % 24, rest // 24
    length, rest = 1 + rest % 23, rest // 23
    mask, rest = 1 + rest % 127, rest // 127
    shape = rest % 4
    stop = (start_hour + length) % 24 or 24
    start = FIRST_DAY + dt.timedelta(days=7 * window)
    body: dict[str, Any] = {"dataset": dataset, "start": start.isoformat(),
                            "end": (start + dt.timedelta(days=7)).isoformat(), "hours": [start_hour, stop],
                            "weekdays": [d for d in range(7) if mask >> d & 1], "epsilon": float(FRESH_EPSILON),
                            "case_ref": "load-test"}  # required of analysts, harmless for planners
    if analyst or shape == 0:
        return "flows", {**body, "zoning": "sectors"}
    if shape == 1:
        return "flows", {**body, "zoning": "districts"}
    if shape == 2:
        return "presence", {**body, "zoning": "districts"}
    return "patterns", {**body, "zoning": "districts", "measure": "trips"}


@dataclass
class Outcome:
    kind: str
    status: int  # 0: broken connection or timeout
    seconds: float
    answer: tuple[str, int, int] | None = None  # fresh 200: (answer_id, ε nanos, windows)


@dataclass
class LoadResult:
    outcomes: list[Outcome] = field(default_factory=list)
    wall_s: float = 0.0

    @property
    def errors(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == 0 or o.status >= 500 or o.status not in ALLOWED[o.kind]]

    def received(self) -> dict[str, tuple[int, int]]:
        return {o.answer[0]: (o.answer[1], o.answer[2]) for o in self.outcomes if o.answer}

    def summary(self) -> dict[str, Any]:
        def pct(xs: list[float], q: float) -> float:
            xs = sorted(xs)
            return 1000 * xs[min(len(xs) - 1, int(q * len(xs)))] if xs else 0.0

        kinds: dict[str, list[float]] = defaultdict(list)
        for o in self.outcomes:
            kinds[o.kind].append(o.seconds)
        everything = [o.seconds for o in self.outcomes]
        return {
            "requests": len(self.outcomes),
            "errors": len(self.errors),
            "error_rate": len(self.errors) / max(1, len(self.outcomes)),
            "requests_per_s": len(self.outcomes) / self.wall_s if self.wall_s else 0.0,
            "latency_ms": {"p50": pct(everything, 0.5), "p90": pct(everything, 0.9), "p99": pct(everything, 0.99)},
            "by_kind": {k: {"n": len(v), "p50_ms": pct(v, 0.5), "p99_ms": pct(v, 0.99)}
                        for k, v in sorted(kinds.items())},
            "statuses": dict(sorted(Counter((o.kind, o.status) for o in self.outcomes).items())),
        }


def run_load(url: str, clients: Clients, *, total: int, threads: int, seed_: int = 1,
             dataset: str = "small", deadline_s: float = 1800.0) -> LoadResult:
    """Send exactly `total` requests from `threads` threads; bounded in count and in time."""
    rng = random.Random(seed_)
    kinds = [k for k, w in MIX for _ in range(w)]
    plan = [rng.choice(kinds) for _ in range(total)]
    lock = threading.Lock()
    next_index = 0
    fresh_counter = 0
    answered: list[tuple[str, dict[str, Any], str]] = []  # (path kind, body, role) of fresh 200s
    result = LoadResult()
    stop_at = time.monotonic() + deadline_s

    def h(role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {clients.keys[role]}"}

    def build(kind: str, r: random.Random) -> tuple[str, str, dict[str, Any] | None, dict[str, str], str]:
        nonlocal fresh_counter
        if kind == "reused":
            with lock:
                previous = r.choice(answered) if answered else None
            if previous is not None:
                qkind, body, role = previous
                asker = role if role == "analyst" or qkind != "flows" or body["zoning"] != "sectors" \
                    else r.choice(["planner", "analyst"])
                return "POST", f"/v1/{qkind}", body, h(asker), "reused"
            kind = "fresh"
        if kind == "fresh":
            with lock:
                k = fresh_counter
                fresh_counter += 1
            role = "analyst" if k % 5 == 4 else "planner"
            qkind, body = fresh_query(k, analyst=role == "analyst", dataset=dataset)
            return "POST", f"/v1/{qkind}", body, h(role), "fresh"
        if kind == "read":
            if r.random() < 0.7:
                return "GET", f"/v1/budget?dataset={dataset}", None, h(r.choice(["planner", "analyst", "greedy"])), kind
            return "GET", "/v1/datasets", None, h(r.choice(["planner", "analyst", "admin"])), kind
        _, base = fresh_query(r.randrange(10**6), analyst=True, dataset=dataset)
        choice = r.randrange(6)
        if choice == 0:
            return "POST", "/v1/flows", base, {}, kind
        if choice == 1:
            return "POST", "/v1/presence", {**base, "zoning": "districts"}, h("analyst"), kind
        if choice == 2:
            return "POST", "/v1/flows", {**base, "epsilon": 5}, h("planner"), kind
        if choice == 3:
            return "POST", "/v1/flows", {**base, "epsilon": -1}, h("planner"), kind
        if choice == 4:
            return "POST", "/v1/flows", {**base, "dataset": "nowhere"}, h("planner"), kind
        with lock:
            k = fresh_counter
            fresh_counter += 1
        _, greedy = fresh_query(k, analyst=True, dataset=dataset)
        return "POST", "/v1/flows", {**greedy, "epsilon": float(GREEDY_EPSILON)}, h("greedy"), "greedy"

    def worker(t: int) -> None:
        nonlocal next_index
        r = random.Random(seed_ * 1000 + t)
        session = requests.Session()
        try:
            while time.monotonic() < stop_at:
                with lock:
                    if next_index >= total:
                        return
                    kind = plan[next_index]
                    next_index += 1
                method, path, body, headers, kind = build(kind, r)
                started = time.perf_counter()
                answer = None
                try:
                    resp = session.request(method, url + path, json=body, headers=headers, timeout=60)
                    status = resp.status_code
                    if status == 200 and method == "POST":
                        doc = resp.json()
                        if not doc["reused"]:
                            answer = (doc["answer_id"], Epsilon.parse(str(doc["epsilon_charged"])).nanos,
                                      len(doc["windows"]))
                            if kind == "fresh":
                                with lock:
                                    answered.append((path.rsplit("/", 1)[1], body, _role_of(headers, clients)))
                except requests.RequestException:
                    status = 0
                elapsed = time.perf_counter() - started
                with lock:
                    result.outcomes.append(Outcome(kind, status, elapsed, answer))
        finally:
            session.close()

    started = time.perf_counter()
    pool = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
    for th in pool:
        th.start()
    for th in pool:
        th.join(timeout=deadline_s + 120)
    result.wall_s = time.perf_counter() - started
    return result


def _role_of(headers: dict[str, str], clients: Clients) -> str:
    key = headers.get("Authorization", "").removeprefix("Bearer ")
    return next(role for role, k in clients.keys.items() if k == key)


def budget_totals(ledger_path: Path, clients: Clients, result: LoadResult, dataset: str = "small") -> dict[str, Any]:
    """Ledger charge rows against what clients received, per window and client, against the caps."""
    received = sum(eps * n for eps, n in result.received().values())
    con = sqlite3.connect(f"file:{ledger_path}?mode=ro", uri=True)
    try:
        charged = int(con.execute("SELECT COALESCE(SUM(nanos), 0) FROM charges").fetchone()[0])
        per = {(w, c): int(n) for w, c, n in con.execute(
            "SELECT win, client_id, SUM(nanos) FROM charges WHERE dataset = ? GROUP BY win, client_id", (dataset,))}
    finally:
        con.close()
    over = []
    for w in range(WINDOWS):
        total_w = sum(n for (win, _), n in per.items() if win == w)
        if total_w > Epsilon.parse(CAPS["global"]).nanos:
            over.append(("global", w, total_w))
        for name, cid in clients.ids.items():
            if name != "admin" and per.get((w, cid), 0) > Epsilon.parse(CAPS[name]).nanos:
                over.append((name, w, per[(w, cid)]))
    return {
        "ledger_charged": str(Epsilon(charged)),
        "received_charged": str(Epsilon(received)),
        "equal": charged == received,
        "per_window_client": {f"w{w}/{next(n for n, i in clients.ids.items() if i == c)}": str(Epsilon(n))
                              for (w, c), n in sorted(per.items())},
        "over_cap": over,
    }


def report(summary: dict[str, Any], totals: dict[str, Any]) -> str:
    lat = summary["latency_ms"]
    lines = [
        f"requests {summary['requests']}  errors {summary['errors']} ({summary['error_rate']:.4%})  "
        f"{summary['requests_per_s']:.1f} requests/s",
        f"latency ms  p50 {lat['p50']:.1f}  p90 {lat['p90']:.1f}  p99 {lat['p99']:.1f}",
    ]
    for kind, s in summary["by_kind"].items():
        lines.append(f"  {kind:8s} n={s['n']:6d}  p50 {s['p50_ms']:.1f} ms  p99 {s['p99_ms']:.1f} ms")
    lines.append("statuses " + ", ".join(f"{k}/{s}: {n}" for (k, s), n in summary["statuses"].items()))
    lines.append(f"ε charged in the ledger {totals['ledger_charged']}; ε of the 200 answers received "
                 f"{totals['received_charged']}; equal: {totals['equal']}; over a cap: {totals['over_cap'] or 'none'}")
    lines.append("per window/client: " + ", ".join(f"{k}={v}" for k, v in totals["per_window_client"].items()))
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--log", type=Path, help="keep gunicorn's log here (default: discarded with the temp dir)")
    args = parser.parse_args()

    from tests.conftest import build_small_dataset
    from tests.servers import GunicornServer

    with tempfile.TemporaryDirectory(prefix="dpflows-load-") as tmp:
        root = Path(tmp)
        build_small_dataset(root)
        ledger_path = root / "ledger.db"
        setup = Service(AggregateStore(root), SqliteLedger(ledger_path))
        clients = seed(setup)
        setup.ledger.close()
        env = {"DPFLOWS_RATE_LIMIT": "100000", "DPFLOWS_RATE_BURST": "100000", "DPFLOWS_LOG_LEVEL": "warning",
               "DPFLOWS_AUTH_FAILURE_LIMIT": "100000", "DPFLOWS_AUTH_FAILURE_BURST": "100000"}  # keyless 401s
        with GunicornServer(root, f"sqlite:///{ledger_path}", workers=args.workers, extra_env=env,
                            log_path=args.log) as srv:
            result = run_load(srv.url, clients, total=args.requests, threads=args.threads, seed_=args.seed)
        totals = budget_totals(ledger_path, clients, result)
        print(f"{args.requests} requests, {args.threads} client threads, {args.workers} gunicorn workers, "
              "SQLite ledger, loopback")
        print(report(result.summary(), totals))
        return 0 if totals["equal"] and not totals["over_cap"] and not result.errors else 1


if __name__ == "__main__":
    raise SystemExit(main())
