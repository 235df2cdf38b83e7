"""Serving memory and speed under gunicorn with 1, 3 and 5 workers (issue 20).

    python benchmarks/bench_serving.py --city var/data                 # the real-scale city, ingested once
    python benchmarks/bench_serving.py --city var/data --baseline var/legacy   # + format 1 at 1 worker
    python benchmarks/bench_serving.py                                 # the demo city only (made in a temp dir)

For each data root (a real-scale city ingested by `dpflows ingest` into DIR/datasets/city with
the zonings zones1000 and sectors (queried on sectors), and the demo city: 20,000 persons, 28 days, made here unless
--demo names one) and each worker count, a fresh SQLite ledger and a real gunicorn on loopback
(tests/servers.py):

* time to first answer: from starting gunicorn to the first 200 of a one-day flows query;
* fresh-query time (client side, median of --repeats, each a new ε so nothing is reused) for
  one day and for four weeks of the same zoning: flows (trips, the largest measure) and
  presence; and, in this process, `queries.prepare` alone for the same two spans;
* PSS from /proc/PID/smaps of every worker once the start-up warm-up has mapped every window:
  the workers' total, and the aggregate mappings' (the dataset's .arrow files) summed over
  workers. Goal: the aggregates' sum at 5 workers within 10% of its 1-worker figure (the page
  cache holds one copy; RSS would count it once per worker).

--baseline DIR serves the same city written in format 1 (whole-dataset Parquet read into every
worker, as before issue 20; `tests/legacy_layout.write_format1` or an older dpflows makes one)
at --baseline-workers (default 1: each such worker holds the whole city privately) for the
same figures, by the code in --baseline-code (e.g. `git archive` of the commit before issue 20
unpacked in a directory; default: this code, which still serves format 1). Printed with the
load average (the machine is shared).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dpflows.accounting import accounting  # noqa: E402
from dpflows.aggregates import AggregateStore  # noqa: E402
from dpflows.budget import Epsilon  # noqa: E402
from dpflows.ledger import DatasetGrid  # noqa: E402
from dpflows.ledger.sqlite import SqliteLedger  # noqa: E402
from dpflows.queries import make_spec, prepare  # noqa: E402
from dpflows.service import Service  # noqa: E402
from tests.servers import GunicornServer  # noqa: E402


@dataclass(frozen=True)
class Target:
    label: str
    data_dir: Path
    dataset: str
    flows_zoning: str
    presence_zoning: str
    first_day: dt.date


def _load() -> str:
    return "load " + " ".join(f"{x:.1f}" for x in os.getloadavg())


def _pss_kb(pid: int, under: Path) -> tuple[int, int]:
    """(the process's PSS, the PSS of its mappings of .arrow files under `under`), in kB."""
    total = agg = 0
    in_agg = False
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        parts = line.split()
        if len(parts) >= 5 and "-" in parts[0] and not line.endswith(" kB"):
            path = parts[5] if len(parts) >= 6 else ""
            in_agg = path.startswith(str(under)) and path.endswith(".arrow")
        elif parts and parts[0] == "Pss:":
            total += int(parts[1])
            if in_agg:
                agg += int(parts[1])
    return total, agg


def _mapped_files(pid: int, under: Path) -> int:
    maps = Path(f"/proc/{pid}/maps").read_text().splitlines()
    return len({line.split()[-1] for line in maps if line.endswith(".arrow") and str(under) in line})


def _seed(target: Target, work: Path, run: str) -> tuple[str, str]:
    """A new ledger with a planner with room for every query; caps set through the ledger (loading no counts)."""
    ledger_path = work / f"ledger-{run}.db"
    service = Service(AggregateStore(target.data_dir), SqliteLedger(ledger_path))
    planner, key = service.create_client("bench-planner", "planner")
    meta = service.store.metadata(target.dataset)
    grid = DatasetGrid(meta.name, meta.first_day.isoformat(), meta.window_days, accounting(meta.accounting).unit)
    for client_id in (planner.id, None):
        service.ledger.set_cap(target.dataset, Epsilon.parse("1000"), client_id=client_id, window=None, grid=grid)
    service.ledger.close()
    return f"sqlite:///{ledger_path}", key


class _Fresh:
    """A new ε per request (0.0100001, 0.0100002, ...): every query is released, never reused."""

    def __init__(self) -> None:
        self.n = 0

    def __call__(self) -> float:
        self.n += 1
        return round(0.01 + self.n * 1e-7, 9)


def _body(target: Target, kind: str, days: int, epsilon: float) -> dict[str, object]:
    start = target.first_day + dt.timedelta(days=8)  # a Tuesday of the second week
    if days > 1:
        start = target.first_day
    zoning = target.flows_zoning if kind == "flows" else target.presence_zoning
    body: dict[str, object] = {"dataset": target.dataset, "zoning": zoning, "start": start.isoformat(),
                               "end": (start + dt.timedelta(days=days)).isoformat(), "epsilon": epsilon}
    return body


def _timed(url: str, headers: dict[str, str], kind: str, body: dict[str, object]) -> float:
    t = time.perf_counter()
    r = requests.post(f"{url}/v1/{kind}", json=body, headers=headers, timeout=600)
    elapsed = time.perf_counter() - t
    if r.status_code != 200:
        raise RuntimeError(f"{kind} {body}: {r.status_code} {r.text[:300]}")
    return elapsed


def run_workers(target: Target, workers: int, work: Path, repeats: int, mapped: bool,
                code: Path = ROOT) -> dict[str, float]:
    run = f"{target.label.replace(' ', '-')}-{'mapped' if mapped else 'format1'}-{workers}"
    ledger_url, key = _seed(target, work, run)
    headers = {"Authorization": f"Bearer {key}"}
    fresh = _Fresh()
    env = {"DPFLOWS_RATE_LIMIT": "100000", "DPFLOWS_RATE_BURST": "100000", "DPFLOWS_TIMEOUT": "600",
           "DPFLOWS_NOISE_POOL_VALUES": "0"}
    start = time.perf_counter()
    with GunicornServer(target.data_dir, ledger_url, workers=workers, extra_env=env,
                        log_path=work / f"gunicorn-{run}.log", code=code) as srv:
        while True:
            try:
                _timed(srv.url, headers, "flows", _body(target, "flows", 1, fresh()))
                break
            except (RuntimeError, requests.RequestException):
                if time.perf_counter() - start > 900:
                    raise
                time.sleep(0.05)
        first = time.perf_counter() - start
        windows = AggregateStore(target.data_dir).metadata(target.dataset).window_count
        expected = windows * (4 if mapped else 0)  # trips, presence, residents, commuting .arrow per window
        deadline = time.monotonic() + 900
        while mapped and any(_mapped_files(p, target.data_dir) < expected for p in srv.worker_pids()):
            if time.monotonic() > deadline:
                raise RuntimeError("the warm-up did not map every window in 900 s")
            time.sleep(0.2)
        times: dict[str, list[float]] = {}
        for _ in range(repeats):
            for kind in ("flows", "presence"):
                for days in (1, 28):
                    times.setdefault(f"{kind}-{days}", []).append(
                        _timed(srv.url, headers, kind, _body(target, kind, days, fresh())))
        if not mapped:  # format 1: make sure every worker has loaded the dataset before measuring memory
            for _ in range(4 * workers):
                _timed(srv.url, headers, "flows", _body(target, "flows", 1, fresh()))
        pss = [_pss_kb(pid, target.data_dir) for pid in srv.worker_pids()]
        master, _ = _pss_kb(srv.process.pid, target.data_dir)
    out = {"first_s": first, "pss_total_mib": sum(p[0] for p in pss) / 1024, "pss_agg_mib": sum(p[1] for p in pss) / 1024,
           "master_mib": master / 1024}
    out |= {name: statistics.median(v) for name, v in times.items()}
    return out


def in_process(target: Target, repeats: int) -> dict[str, float]:
    """`queries.prepare` alone (true counts, no noise, no ledger) for one day and four weeks, after one warm read."""
    data = AggregateStore(target.data_dir).get(target.dataset)
    out = {}
    for kind in ("flows", "presence"):
        for days in (1, 28):
            body = _body(target, kind, days, 0.01)
            spec = make_spec(kind, dataset=target.dataset, zoning=str(body["zoning"]),
                             start=dt.date.fromisoformat(str(body["start"])), end=dt.date.fromisoformat(str(body["end"])))
            prepare(spec, data)
            runs = []
            for _ in range(repeats):
                t = time.perf_counter()
                prepare(spec, data)
                runs.append(time.perf_counter() - t)
            out[f"{kind}-{days}"] = statistics.median(runs)
    return out


def report(target: Target, workers: list[int], work: Path, repeats: int, mapped: bool = True,
           code: Path = ROOT) -> None:
    layout = "window files, mapped" if mapped else f"format 1, Parquet in every worker, code in {code}"
    print(f"\n== {target.label} ({layout}); {_load()}", flush=True)
    print("workers | first answer | PSS workers | PSS aggregates (sum) | master | flows 1 d | flows 28 d | ratio | "
          "presence 1 d | presence 28 d | ratio", flush=True)
    rows = {}
    for n in workers:
        r = run_workers(target, n, work, repeats, mapped, code)
        rows[n] = r
        print(f"{n:7d} | {r['first_s']:10.2f} s | {r['pss_total_mib']:7.0f} MiB | {r['pss_agg_mib']:16.1f} MiB | "
              f"{r['master_mib']:4.0f} MiB | {r['flows-1'] * 1000:6.0f} ms | {r['flows-28'] * 1000:7.0f} ms | "
              f"{r['flows-28'] / r['flows-1']:4.1f}× | {r['presence-1'] * 1000:9.0f} ms | "
              f"{r['presence-28'] * 1000:10.0f} ms | {r['presence-28'] / r['presence-1']:4.1f}×; {_load()}", flush=True)
    if mapped and 1 in rows and max(rows) > 1:
        top = max(rows)
        print(f"aggregates' PSS summed over {top} workers / 1 worker: "
              f"{rows[top]['pss_agg_mib'] / rows[1]['pss_agg_mib']:.3f} (goal: within 10%)", flush=True)
    if mapped:
        p = in_process(target, repeats)
        print(f"in process, queries.prepare only: flows 1 d {p['flows-1'] * 1000:.1f} ms, 28 d "
              f"{p['flows-28'] * 1000:.1f} ms ({p['flows-28'] / p['flows-1']:.1f}×); presence 1 d "
              f"{p['presence-1'] * 1000:.1f} ms, 28 d {p['presence-28'] * 1000:.1f} ms "
              f"({p['presence-28'] / p['presence-1']:.1f}×); {_load()}", flush=True)


def _demo(work: Path) -> Path:
    from dpflows.demo import generate_city
    from dpflows.ingest.pipeline import IngestOptions, ZoningSpec, ingest_events

    files = generate_city(work / "demo-raw", persons=20000, seed=1, days=28, start=dt.date(2024, 3, 4))
    ingest_events(files.events, files.cells, work / "demo" / "datasets" / "demo",
                  IngestOptions(name="demo", first_day=files.first_day, end_day=files.end_day,
                                zonings=[ZoningSpec("districts", files.districts),
                                         ZoningSpec("sectors", files.sectors, coarse=True, min_cells_per_zone=50)]))
    return work / "demo"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--city", type=Path, help="data root holding the real-scale city as datasets/city")
    parser.add_argument("--baseline", type=Path, help="data root holding the same city in format 1")
    parser.add_argument("--baseline-workers", default="1", help="worker counts of the real-scale baseline")
    parser.add_argument("--baseline-code", type=Path, default=ROOT,
                        help="a checkout of dpflows before issue 20 (git archive) serving the baselines (default: this "
                             "one, which reads format 1 as well); with it the demo city gets a format-1 baseline too")
    parser.add_argument("--demo", type=Path, help="data root holding the demo city as datasets/demo (default: made)")
    parser.add_argument("--no-demo", action="store_true")
    parser.add_argument("--workers", default="1,3,5")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    workers = [int(w) for w in args.workers.split(",")]
    first = dt.date(2024, 3, 4)
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
        work = Path(tmp)
        if args.city:
            city = Target("real-scale city", args.city.resolve(), "city", "sectors", "sectors", first)
            report(city, workers, work, args.repeats)
        if args.baseline:
            base = Target("real-scale city", args.baseline.resolve(), "city", "sectors", "sectors", first)
            report(base, [int(w) for w in args.baseline_workers.split(",")], work, args.repeats, mapped=False,
                   code=args.baseline_code.resolve())
        if not args.no_demo:
            demo_dir = args.demo.resolve() if args.demo else _demo(work)
            demo = Target("demo city", demo_dir, "demo", "districts", "districts", first)
            report(demo, workers, work, args.repeats)
            if args.baseline_code.resolve() != ROOT:
                from tests.legacy_layout import write_format1

                old = write_format1(demo_dir / "datasets" / "demo", work / "demo-format1" / "datasets" / "demo")
                report(Target("demo city", old.parents[1], "demo", "districts", "districts", first), workers, work,
                       args.repeats, mapped=False, code=args.baseline_code.resolve())


if __name__ == "__main__":
    main()
