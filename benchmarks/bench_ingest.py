"""Ingestion throughput and memory, against a plain Polars group-by over the same events.

For each city size: generate the demo city (7 days), then in separate child processes
(so peak RSS is per run, read with os.wait4):
- ingest: events → presence + stay-rule trips → per person-window bounding → aggregates;
- baseline: scan_parquet(events).group_by(person, day, hour, cell_id).len(), the presence
  step alone without sorting, trips or bounding.
Prints events/s, peak RSS, and ingest throughput as a ratio of the baseline's (goal ≥ 0.5×).
Both children read the same file in the same run. On a shared machine, --repeat N alternates N
(ingest, baseline) pairs and prints the median of each and the ratio's range; --stages also
prints where one ingestion's wall time goes (stage timers around dpflows' own functions; the
trips branch runs in a second thread, concurrently with presence and places).

    python benchmarks/bench_ingest.py [--persons 100000,1000000] [--days 7] [--repeat 5] [--stages]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

INGEST = """
import sys, time, json, datetime as dt
from dpflows.ingest.pipeline import IngestOptions, ingest_events
t = time.perf_counter()
ingest_events(sys.argv[1], sys.argv[2], sys.argv[3],
              IngestOptions(name="bench", first_day=dt.date.fromisoformat(sys.argv[4]),
                            end_day=dt.date.fromisoformat(sys.argv[5])))
print(json.dumps({"seconds": time.perf_counter() - t}))
"""

# the same ingestion with a wall-clock timer around each stage (one call may hold others: sort_events
# is inside bucket counting, the trips branch in its own thread); "other" is what no timer covers
STAGES = """
import sys, time, json, datetime as dt, functools, collections
from dpflows.ingest import pipeline, sorted_bucket
from dpflows.ingest.pipeline import IngestOptions, ingest_events
spent = collections.defaultdict(float)
def timed(module, name, label):
    real = getattr(module, name)
    @functools.wraps(real)
    def timer(*args, **kwargs):
        t = time.perf_counter()
        try:
            return real(*args, **kwargs)
        finally:
            spent[label] += time.perf_counter() - t
    setattr(module, name, timer)
for module, name, label in [
        (pipeline, "_check_events", "checking the events (in memory)"),
        (sorted_bucket, "bucket_counts", "deriving, bounding, counting (both threads), of which:"),
        (sorted_bucket, "sort_events", "  sorting by (person, time, cell)"),
        (sorted_bucket, "_presence", "  presence: one cell per person-hour"),
        (sorted_bucket, "homes_and_works", "  homes and work cells"),
        (sorted_bucket, "_trip_counts", "  trips, 2nd thread alongside: derive, bound, count"),
        (pipeline, "_table", "summing, sorting, naming the tables"),
        (pipeline, "write_aggregates", "writing the dataset (Parquet)"),
        (pipeline, "release_bounding_report", "bounding report (OpenDP)")]:
    timed(module, name, label)
real_bounded = sorted_bucket._bounded_counts
def bounded(*args, **kwargs):
    t = time.perf_counter()
    try:
        return real_bounded(*args, **kwargs)
    finally:
        if kwargs.get("cells") == ["cell"]:
            spent["  presence: bound and count"] += time.perf_counter() - t
sorted_bucket._bounded_counts = bounded
t = time.perf_counter()
ingest_events(sys.argv[1], sys.argv[2], sys.argv[3],
              IngestOptions(name="bench", first_day=dt.date.fromisoformat(sys.argv[4]),
                            end_day=dt.date.fromisoformat(sys.argv[5])))
print(json.dumps({"seconds": time.perf_counter() - t, "stages": spent}))
"""

BASELINE = """
import sys, time, json
import polars as pl
t = time.perf_counter()
out = (pl.scan_parquet(sys.argv[1])
       .group_by("person", pl.col("timestamp").dt.date().alias("day"), pl.col("timestamp").dt.hour().alias("hour"),
                 "cell_id").len().collect(engine="streaming"))
print(json.dumps({"seconds": time.perf_counter() - t, "groups": out.height}))
"""


def run_child(code: str, *args: str) -> tuple[float, float]:
    """Seconds measured inside the child, and its peak RSS in GiB."""
    out, rss = _child(code, *args)
    return float(out["seconds"]), rss


def _child(code: str, *args: str) -> tuple[dict, float]:
    """The child's JSON line, and its peak RSS in GiB."""
    proc = subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.stdout is not None
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"child failed with {proc.returncode}")
    return json.loads(out), usage.ru_maxrss / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--persons", default="100000,1000000")
    ap.add_argument("--days", type=int, default=7)
    ap.add_argument("--repeat", type=int, default=1, help="alternating (ingest, baseline) pairs per size")
    ap.add_argument("--stages", action="store_true", help="also time one ingestion stage by stage")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    import polars as pl

    from dpflows.demo import generate_city

    print(f"load average {os.getloadavg()[0]:.2f} (1 min) at start; {os.cpu_count()} CPUs")
    print(f"{'persons':>9} {'events':>12} {'ingest s':>9} {'events/s':>11} {'RSS GiB':>8} "
          f"{'group-by s':>10} {'events/s':>11} {'RSS GiB':>8} {'ratio':>6}")
    for persons in [int(p) for p in args.persons.split(",")]:
        with tempfile.TemporaryDirectory() as tmp:
            t = time.perf_counter()
            city = generate_city(Path(tmp) / "city", persons=persons, days=args.days)
            gen_s = time.perf_counter() - t
            events = pl.scan_parquet(city.events).select(pl.len()).collect().item()
            ingest_args = (str(city.events), str(city.cells), str(Path(tmp) / "ds"), str(city.first_day),
                           str(city.end_day))
            runs = [(*run_child(INGEST, *ingest_args), *run_child(BASELINE, str(city.events)))
                    for _ in range(args.repeat)]
            ingest_s, ingest_rss, base_s, base_rss = (statistics.median(r[k] for r in runs) for k in range(4))
            ratios = sorted(r[2] / r[0] for r in runs)
            spread = f", ratio {ratios[0]:.2f}-{ratios[-1]:.2f} over {len(runs)} pairs" if len(runs) > 1 else ""
            print(f"{persons:>9,} {events:>12,} {ingest_s:>9.1f} {events / ingest_s:>11,.0f} {ingest_rss:>8.2f} "
                  f"{base_s:>10.1f} {events / base_s:>11,.0f} {base_rss:>8.2f} {base_s / ingest_s:>5.2f}x"
                  f"   (generation {gen_s:.0f} s{spread}; load {os.getloadavg()[0]:.1f})", flush=True)
            if args.stages:
                out, _ = _child(STAGES, *ingest_args)
                stages = out["stages"]
                for label, seconds in stages.items():
                    print(f"{'':>9} {seconds:>8.2f} s  {label}")
                other = out["seconds"] - sum(v for k, v in stages.items() if not k.startswith("  "))
                print(f"{'':>9} {other:>8.2f} s  other: reading the input, splitting into buckets, "
                      f"spilling counts ({out['seconds']:.2f} s in all)", flush=True)
    print("ratio = ingest throughput / group-by throughput (goal >= 0.5x)")


if __name__ == "__main__":
    main()
