"""Sparse, thresholded answers on the real-scale city (issue 15): time, memory, keys released and error.

    python benchmarks/bench_sparse.py --data-dir var/data --dataset city5000
    python benchmarks/bench_sparse.py --prepare var --persons 500000     # generate and ingest it first (minutes)

The dataset is the real-scale demo city (`dpflows demo-city --cells 5000 --persons 500000`, 28 days)
ingested with `--accounting approx_dp` (L_trips 5 by default, per-row cap 1, dense limit 100,000),
with the zoning zones1000 (k-means, ~1,000 zones). `--prepare DIR` makes it once under DIR (then
reused): both steps run as the `dpflows` command.

Questions, at ε = 1 (the planner's per-query cap) and the server's default δ = 1e-9:

- cell-level OD of the morning peak of one week: flows on zoning `cell` (25,000,000 keys), Monday
  to Friday, 07:00-10:00, 2024-03-04..2024-03-11: sparse;
- 1,000-zone OD of the same hours: flows on zones1000 (about 1,000,000 keys): sparse;
- baseline, the same hours on the coarse zoning `sectors`: dense (every key noised).

For each: the public facts (domain size, (ℓ0, ℓ1, ℓ∞), scale, threshold); a fresh answer's wall
time in this process (`Service.answer` on a fresh SQLite ledger each time: nothing is reused; the
first one pays the per-process key cache, then --repeats more) and its peak memory above the
process's resident set before it (VmHWM, reset through /proc/self/clear_refs); the same through HTTP
(gunicorn, one sync worker on 127.0.0.1, the worker's VmHWM); keys released against keys observed
(the observed count is read here, from the aggregates, never from an answer); and the error
against the truth (the bounded aggregates): on released keys (mean, i.e. the selection bias of
the threshold, and 95th percentile of |error| against the stated bound) and on the total flow
(the share of trips that the released keys hold, and the sum's error). Each fresh sparse answer is
also timed stage by stage (observed_counts, release_sparse, key_columns and the rest; the service's
own functions wrapped) with the process's CPU time; then, for the cell-level answer, each stage
alone: OpenDP's release on one thread and on THREADS (wall and CPU: more CPU than wall means the
threads ran at once, outside the GIL), and make_count_by alone (an upper bound of the conversions
into and out of OpenDP). Last, OpenDP's cost per
noised key in this run, and the spread of the fresh answers' times: what the timing of a sparse
answer can reveal (docs/privacy.md). Goal: a 5,000-cell OD answer in <= 2 s p50. The machine is
shared: the load average is printed before and after.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dpflows.aggregates import AggregateStore  # noqa: E402
from dpflows.budget import ApproxDP, Epsilon, parse_delta  # noqa: E402
from dpflows.ledger.sqlite import SqliteLedger  # noqa: E402
from dpflows.mechanisms import Contribution, plan_threshold, release_sparse  # noqa: E402
from dpflows.queries import QuerySpec, domain_size, key_columns, make_spec, prepare  # noqa: E402
from dpflows.sensitivity import query_sensitivity  # noqa: E402
from dpflows.service import QueryRequest, Service  # noqa: E402
from dpflows.sparse import is_sparse, observed_counts  # noqa: E402
from tests.servers import GunicornServer  # noqa: E402

EPSILON, DELTA = "1", "1e-9"
WEEK = (dt.date(2024, 3, 4), dt.date(2024, 3, 11))
PEAK = {"hours": [7, 10], "weekdays": [0, 1, 2, 3, 4]}


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _status_kb(pid: int | str, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def reset_peak(pid: int | str = "self") -> int:
    """Reset the process's peak RSS (Linux: 5 > clear_refs) and return its RSS now, in kB."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    return _status_kb(pid, "VmRSS")


def prepare_city(workdir: Path, persons: int) -> Path:
    """Generate and ingest the city once under `workdir` (absolute paths); the data root."""
    workdir = workdir.resolve()
    city, data = workdir / f"city5000-{persons}", workdir / "data"
    dpflows = [sys.executable, "-m", "dpflows.cli"]
    if not (city / "events.parquet").exists():
        subprocess.run([*dpflows, "demo-city", "--cells", "5000", "--persons", str(persons), "--out", str(city)],
                       check=True, cwd=ROOT)
    out = data / "datasets" / "city5000"
    if not (out / "CURRENT").exists():
        zonings = city / "zonings"
        subprocess.run([*dpflows, "ingest", str(city / "events.parquet"), "--cells", str(city / "cells.csv"),
                        "--out", str(out), "--first-day", "2024-03-04", "--end-day", "2024-04-01",
                        "--zoning", f"zones1000={zonings / 'zones1000.csv'}",
                        "--zoning", f"sectors={zonings / 'sectors.csv'}:coarse:919", "--accounting", "approx_dp"],
                       check=True, cwd=ROOT)
    return data


def spec_of(dataset: str, zoning: str) -> QuerySpec:
    return make_spec("flows", dataset=dataset, zoning=zoning, start=WEEK[0], end=WEEK[1], **PEAK)


def fresh_service(store: AggregateStore, tmp: Path, n: int) -> tuple[Service, Any]:
    service = Service(store, SqliteLedger(tmp / f"ledger-{uuid.uuid4().hex}.db"))
    client, _ = service.create_client("bench", "planner")
    for who in (client.id, None):
        service.set_cap(DATASET, ApproxDP.parse_pair("100", "1e-5"), client_id=who, window=None)
    return service, client


DATASET = "city5000"


def truth_of(spec: QuerySpec, store: AggregateStore) -> tuple[dict[tuple[str, ...], int], int, int]:
    """(key -> true count) of the observed keys, their number, and the true total: benchmark only."""
    data = store.get(spec.dataset)
    if is_sparse(spec, data):
        observed = observed_counts(spec, data)
        columns = key_columns(spec, data, observed.keys)
        keys = list(zip(*(columns.columns[f] for f in columns.fields), strict=True))
        return dict(zip(keys, observed.counts.tolist(), strict=True)), len(observed), int(observed.counts.sum())
    prepared = prepare(spec, data)
    keys = list(zip(*(prepared.domain.columns[f] for f in prepared.domain.fields), strict=True))
    counts = prepared.true_counts.tolist()
    return (dict(zip(keys, counts, strict=True)), int(np.count_nonzero(prepared.true_counts)),
            int(prepared.true_counts.sum()))


def accuracy(values: list[dict], fields: tuple[str, ...], truth: dict[tuple[str, ...], int],
             total: int) -> dict[str, float]:
    released = [(tuple(v[f] for f in fields), int(v["count"])) for v in values]
    errors = np.asarray([c - truth.get(k, 0) for k, c in released], dtype=np.float64)
    held = sum(truth.get(k, 0) for k, _ in released)
    return {"released": len(released), "bias": float(errors.mean()) if len(errors) else float("nan"),
            "abs95": float(np.quantile(np.abs(errors), 0.95)) if len(errors) else float("nan"),
            "share": held / total if total else float("nan"),
            "sum_error": (sum(c for _, c in released) - total) / total if total else float("nan")}


#: The stages of a sparse answer, timed inside each fresh answer (benchmark only: the service's own names wrapped).
STAGES = ("observed_counts", "release_sparse", "key_columns")


class StageClock:
    """Wraps the stage functions dpflows.service.answering calls and adds up their wall time per answer."""

    def __init__(self) -> None:
        from dpflows.service import answering

        self.module, self.spent = answering, dict.fromkeys(STAGES, 0.0)
        self.originals = {name: getattr(answering, name) for name in STAGES}

    def __enter__(self) -> StageClock:
        for name, fn in self.originals.items():
            setattr(self.module, name, self._timed(name, fn))
        return self

    def __exit__(self, *exc: object) -> None:
        for name, fn in self.originals.items():
            setattr(self.module, name, fn)

    def _timed(self, name: str, fn: Any) -> Any:
        def run(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.spent[name] += time.perf_counter() - start
        return run

    def take(self) -> dict[str, float]:
        out, self.spent = self.spent, dict.fromkeys(STAGES, 0.0)
        return out


def in_process(store: AggregateStore, spec: QuerySpec, repeats: int, tmp: Path) -> dict:
    times, cpus, peaks, answers, stage_times = [], [], [], [], []
    with StageClock() as clock:
        for n in range(repeats + 1):
            service, client = fresh_service(store, tmp, n)
            rss = reset_peak()
            clock.take()
            start, cpu = time.perf_counter(), time.process_time()
            answer = service.answer(QueryRequest(spec, epsilon=Epsilon.parse(EPSILON), delta=parse_delta(DELTA)),
                                    client)
            times.append(time.perf_counter() - start)
            cpus.append(time.process_time() - cpu)
            stage_times.append(clock.take())
            peaks.append((_status_kb("self", "VmHWM") / 1024, rss / 1024))
            answers.append(answer)
            service.ledger.close()
    return {"first": times[0], "times": times[1:], "cpus": cpus[1:], "stages": stage_times[1:],
            "peak": max(p for p, _ in peaks), "grew": max(p - r for p, r in peaks), "answers": answers}


def print_answer_stages(run: dict) -> None:
    """p50 of each stage over the fresh answers (after the first), and of what is left of the answer's time."""
    med = {name: statistics.median(st[name] for st in run["stages"]) for name in STAGES}
    rest = statistics.median(t - sum(st.values()) for t, st in zip(run["times"], run["stages"], strict=True))
    print("  stages of each fresh answer, p50: " + ", ".join(f"{name} {med[name] * 1e3:,.0f} ms" for name in STAGES)
          + f", the rest (pricing, ledger transaction, describing) {rest * 1e3:,.0f} ms; CPU of the process "
          f"p50 {statistics.median(run['cpus']):.2f} s")


def through_http(data_dir: Path, specs: list[QuerySpec], repeats: int, tmp: Path) -> dict[str, dict]:
    ledger_path = tmp / "http-ledger.db"
    setup = Service(AggregateStore(data_dir), SqliteLedger(ledger_path))
    client, key = setup.create_client("bench-http", "planner")
    for who in (client.id, None):
        setup.set_cap(DATASET, ApproxDP.parse_pair("1000", "1e-3"), client_id=who, window=None)
    setup.ledger.close()
    env = {"DPFLOWS_RATE_LIMIT": "100000", "DPFLOWS_RATE_BURST": "100000"}
    out: dict[str, dict] = {}
    headers = {"Authorization": f"Bearer {key}"}
    with GunicornServer(data_dir, f"sqlite:///{ledger_path}", workers=1, extra_env=env,
                        log_path=tmp / "gunicorn.log") as server:
        [worker] = server.worker_pids()
        for spec in specs:
            body = {"dataset": spec.dataset, "zoning": spec.zoning, "start": WEEK[0].isoformat(),
                    "end": WEEK[1].isoformat(), **PEAK, "delta": float(DELTA)}
            times, peaks = [], []
            for n in range(repeats + 1):  # the first loads the dataset and the key cache in the worker
                reset_peak(worker)
                start = time.perf_counter()
                # ε a hair apart each time: a fresh answer (the identical query would be reused)
                resp = requests.post(f"{server.url}/v1/flows", json={**body, "epsilon": 1 - n * 1e-6},
                                     headers=headers, timeout=600)
                elapsed = time.perf_counter() - start
                resp.raise_for_status()
                if n:
                    times.append(elapsed)
                    peaks.append(_status_kb(worker, "VmHWM") / 1024)
            out[spec.zoning] = {"times": times, "peaks": peaks, "bytes": len(resp.content)}
    return out


def reach(store: AggregateStore, spec: QuerySpec, epsilons: tuple[str, ...]) -> list[str]:
    """Benchmark only: for other ε and spans, the threshold and how many observed keys' true counts reach it."""
    data = store.get(spec.dataset)
    out = []
    for weeks in (1, 4):
        wide = make_spec("flows", dataset=spec.dataset, zoning=spec.zoning, start=WEEK[0],
                         end=WEEK[0] + dt.timedelta(days=7 * weeks), **PEAK)
        observed = observed_counts(wide, data)
        contribution = query_sensitivity(wide, data).contribution
        for eps in epsilons:
            _, threshold = plan_threshold(contribution, ApproxDP.parse_pair(eps, DELTA))
            above = observed.counts >= threshold
            out.append(f"{weeks} week(s), epsilon {eps}: threshold {threshold}, {int(above.sum()):,} of "
                       f"{len(observed):,} observed keys reach it, holding {observed.counts[above].sum() / max(1, observed.counts.sum()):.1%} "
                       "of the trips")
    return out


def timed(work: Any) -> tuple[Any, float, float]:
    """(result, wall s, CPU s of the whole process: > wall when threads ran outside the GIL at once)."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = work()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def stages(store: AggregateStore, spec: QuerySpec) -> dict[str, float]:
    """Benchmark only: a sparse answer's stages, each timed alone (wall s; `cpu_*` the process's CPU s)."""
    import opendp.prelude as dp

    from dpflows.mechanisms import threshold

    data = store.get(spec.dataset)
    contribution = query_sensitivity(spec, data).contribution
    loss = ApproxDP.parse_pair(EPSILON, DELTA)
    observed, out = observed_counts(spec, data), {}
    _, out["observed"], _ = timed(lambda: observed_counts(spec, data))
    out["keys"] = len(observed)
    kept = threshold.THREADS
    try:
        for threads in sorted({1, kept}):
            threshold.THREADS = threads
            released, out[f"release_{threads}"], out[f"cpu_release_{threads}"] = timed(
                lambda: release_sparse(observed.keys, observed.counts, contribution, loss))
    finally:
        threshold.THREADS = kept
    count_by = dp.t.make_count_by(dp.vector_domain(dp.atom_domain(T="i64")), dp.symmetric_distance(), TV="i64")
    records = np.repeat(observed.keys, observed.counts)
    _, out["count_by"], _ = timed(lambda: count_by(records))
    _, out["key_columns"], _ = timed(lambda: key_columns(spec, data, released.keys))
    return out


def print_stages(st: dict[str, float], in_process: float, http: float | None) -> None:
    from dpflows.mechanisms.threshold import THREADS

    keys = st["keys"]
    print(f"\nstages of the cell-level answer ({keys:,} observed keys), each timed alone, load {load()}:")
    print(f"  observed_counts (the week's rows reduced to observed keys): {st['observed'] * 1e3:.0f} ms")
    for threads in sorted({1, THREADS}):
        wall, cpu = st[f"release_{threads}"], st[f"cpu_release_{threads}"]
        print(f"  OpenDP's release on {threads} thread(s): {wall:.2f} s wall ({wall / keys * 1e6:.2f} µs a key), "
              f"{cpu:.2f} s CPU ({cpu / keys * 1e6:.2f} µs a key; {cpu / wall:.2f} cores busy)")
    print(f"    of which at most the conversions: count_by alone (numpy records -> OpenDP's map -> a Python dict of "
          f"every key) {st['count_by'] * 1e3:.0f} ms ({st['count_by'] / keys * 1e6:.2f} µs a key); the rest is the "
          "sampler")
    print(f"  key columns of the released keys: {st['key_columns'] * 1e3:.1f} ms")
    if http is not None:
        print(f"  HTTP, JSON and gunicorn: {(http - in_process) * 1e3:+.0f} ms (HTTP p50 minus in-process p50)")


def opendp_cost_per_key(threads: int, n: int = 200_000) -> float:
    """µs of wall time per noised key of the thresholded mechanism on `threads` threads, at this run's load
    (the timing side channel's unit)."""
    from dpflows.mechanisms import threshold

    kept, threshold.THREADS = threshold.THREADS, threads
    try:
        keys = np.arange(n, dtype=np.int64)
        start = time.perf_counter()
        release_sparse(keys, np.ones(n, dtype=np.int64), Contribution(5, 5, 5), ApproxDP.parse_pair("1", "1e-9"))
        return (time.perf_counter() - start) / n * 1e6
    finally:
        threshold.THREADS = kept


def main() -> None:
    global DATASET
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, default=ROOT / "var" / "data")
    ap.add_argument("--dataset", default="city5000")
    ap.add_argument("--prepare", type=Path, default=None, metavar="DIR", help="generate and ingest the city under DIR")
    ap.add_argument("--persons", type=int, default=500_000)
    ap.add_argument("--repeats", type=int, default=5, help="fresh answers per question, after the first")
    ap.add_argument("--http-repeats", type=int, default=3)
    ap.add_argument("--no-http", action="store_true")
    ap.add_argument("--questions", default="cell,zones1000,sectors",
                    help="zonings to ask, comma-separated (cell first: the stages and the timing line need it)")
    args = ap.parse_args()
    DATASET = args.dataset
    data_dir = prepare_city(args.prepare, args.persons) if args.prepare else args.data_dir
    print(f"load average at start: {load()}")
    store = AggregateStore(data_dir)
    start = time.perf_counter()
    data = store.get(DATASET)
    meta = data.metadata
    print(f"dataset {DATASET}: {len(data.catalog):,} cells, {sum(data.window(w).trips.rows for w in range(meta.window_count)):,} trip rows, L_trips "
          f"{meta.bound_trips}, accounting {meta.accounting}, dense limit {meta.dense_limit:,}; loaded in "
          f"{time.perf_counter() - start:.1f} s")
    specs = [spec_of(DATASET, z) for z in args.questions.split(",")]
    loss = ApproxDP.parse_pair(EPSILON, DELTA)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        results = {}
        for spec in specs:
            sparse = is_sparse(spec, data)
            sens = query_sensitivity(spec, data)
            line = (f"\n{spec.zoning}: morning peak (Mon-Fri 07-10) of {WEEK[0]}..{WEEK[1]}, {domain_size(spec, data):,} "
                    f"keys, {'sparse' if sparse else 'dense'}")
            if sparse:
                scale, threshold = plan_threshold(sens.contribution, loss)
                line += (f"; (l0, l1, linf) = {sens.contribution.as_tuple()}, scale {scale:g}, threshold {threshold} at "
                         f"epsilon {EPSILON}, delta {DELTA}")
            print(line)
            truth, observed, total = truth_of(spec, store)
            run = in_process(store, spec, args.repeats, tmp)
            acc = [accuracy(a.values, a.key_fields, truth, total) for a in run["answers"]]
            times = run["times"]
            print(f"  in-process fresh answer: first {run['first']:.2f} s (key cache), then p50 "
                  f"{statistics.median(times):.2f} s (min {min(times):.2f}, max {max(times):.2f}, n={len(times)}); "
                  f"peak RSS of the process {run['peak']:.0f} MB, at most {run['grew']:.0f} MB above its RSS before")
            if sparse:
                print_answer_stages(run)
            released = statistics.mean(a["released"] for a in acc)
            print(f"  keys released {released:,.0f} of {observed:,} observed ({released / max(observed, 1):.2%}); "
                  f"true total {total:,} trips")
            print(f"  error on released keys: mean {statistics.mean(a['bias'] for a in acc):+.2f} (selection bias), "
                  f"95% of |error| <= {statistics.mean(a['abs95'] for a in acc):.1f} (stated bound "
                  f"{run['answers'][-1].error_bound_95:.1f})")
            print(f"  total flow: released keys hold {statistics.mean(a['share'] for a in acc):.1%} of the trips; sum of "
                  f"released values vs true total {statistics.mean(a['sum_error'] for a in acc):+.1%}")
            results[spec.zoning] = (run, threshold if sparse else None)
            if sparse:
                for line in reach(store, spec, ("1", "2", "4")):
                    print(f"  (truth, benchmark only) {line}")
        if not args.no_http:
            print(f"\nthrough HTTP (gunicorn, 1 sync worker, 127.0.0.1), load {load()}:")
            http = through_http(data_dir, specs, args.http_repeats, tmp)
            for zoning, r in http.items():
                print(f"  {zoning}: fresh answer p50 {statistics.median(r['times']):.2f} s (max {max(r['times']):.2f}, "
                      f"n={len(r['times'])}); the worker's peak RSS while answering {max(r['peaks']):.0f} MB; "
                      f"body {r['bytes'] / 1024:.0f} KiB")
    st = stages(store, specs[0])
    print_stages(st, statistics.median(results["cell"][0]["times"]),
                 None if args.no_http else statistics.median(http["cell"]["times"]))
    per_key, per_key_2 = opendp_cost_per_key(1), opendp_cost_per_key(2)
    cell = results["cell"][0]["times"]
    spread = (max(cell) - min(cell)) * 1e3
    print(f"\ntiming: OpenDP's thresholded Laplace costs {per_key:.1f} µs per noised key on one thread in this run "
          f"({per_key_2:.1f} µs of wall time per key on two); one person "
          f"changes the observed keys by at most l0 = {query_sensitivity(specs[0], data).contribution.l0}, i.e. "
          f"{per_key * query_sensitivity(specs[0], data).contribution.l0:.0f} µs, against a spread of {spread:.0f} ms "
          f"between fresh cell-level answers ({spread * 1e3 / (per_key * 5):,.0f}x)")
    print(f"goal: 5,000-cell OD p50 <= 2 s: {'met' if statistics.median(cell) <= 2 else 'NOT met'} "
          f"({statistics.median(cell):.2f} s in-process)")
    print(f"load average at end: {load()}")


if __name__ == "__main__":
    main()
