"""Ingestion throughput and memory, against a plain Polars group-by over the same events.

For each city size: generate the demo city (7 days), then in separate child processes
(so peak RSS is per run, read with os.wait4):
- ingest: events → presence + stay-rule trips → per person-window bounding → aggregates;
- baseline: scan_parquet(events).group_by(person, day, hour, cell_id).len(), the presence
  step alone without sorting, trips or bounding.
Prints events/s, peak RSS, and ingest throughput as a ratio of the baseline's (goal ≥ 0.5×).

    python benchmarks/bench_ingest.py [--persons 100000,1000000] [--days 7]
"""

from __future__ import annotations

import argparse
import json
import os
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
    proc = subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.stdout is not None
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"child failed with {proc.returncode}")
    return float(json.loads(out)["seconds"]), usage.ru_maxrss / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--persons", default="100000,1000000")
    ap.add_argument("--days", type=int, default=7)
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    import polars as pl

    from dpflows.demo import generate_city

    print(f"{'persons':>9} {'events':>12} {'ingest s':>9} {'events/s':>11} {'RSS GiB':>8} "
          f"{'group-by s':>10} {'events/s':>11} {'RSS GiB':>8} {'ratio':>6}")
    for persons in [int(p) for p in args.persons.split(",")]:
        with tempfile.TemporaryDirectory() as tmp:
            t = time.perf_counter()
            city = generate_city(Path(tmp) / "city", persons=persons, days=args.days)
            gen_s = time.perf_counter() - t
            events = pl.scan_parquet(city.events).select(pl.len()).collect().item()
            ingest_s, ingest_rss = run_child(INGEST, str(city.events), str(city.cells), str(Path(tmp) / "ds"),
                                              str(city.first_day), str(city.end_day))
            base_s, base_rss = run_child(BASELINE, str(city.events))
            print(f"{persons:>9,} {events:>12,} {ingest_s:>9.1f} {events / ingest_s:>11,.0f} {ingest_rss:>8.2f} "
                  f"{base_s:>10.1f} {events / base_s:>11,.0f} {base_rss:>8.2f} {base_s / ingest_s:>5.2f}x"
                  f"   (generation {gen_s:.0f} s)", flush=True)
    print("ratio = ingest throughput / group-by throughput (goal >= 0.5x)")


if __name__ == "__main__":
    main()
