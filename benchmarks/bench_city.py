"""The real-scale demo city (issue 15 item 6): generate it, ingest it, load its zonings.

    python benchmarks/bench_city.py                                   # 5,000 cells, 500,000 persons, 28 days
    python benchmarks/bench_city.py --cells 300 --persons 2000 --zones 60   # a quick check

Each of the two heavy steps runs as the `dpflows` command in a child process, under a fresh
wrapper process that reads the child's peak RSS from getrusage(RUSAGE_CHILDREN), so the steps'
figures do not mix (as in bench_scale.py):

1. `dpflows demo-city --cells N --persons P --zones Z` (events written in chunks of persons);
2. `dpflows ingest` of its events with zonings zones<Z> and sectors (coarse), Polars, person-hash
   buckets chosen from the input size, the bounding report at its default ε.

Then, in this process: the zones<Z> zoning loaded again from its GeoJSON polygons (checked equal
to the CSV zoning) and a 1 km grid, through dpflows.zoning_sources, with their times.
Printed: wall time, peak RSS, events, file sizes, load average (the machine is shared).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def measure(cmd: list[str]) -> dict[str, float]:
    """Run cmd under a fresh wrapper; its wall time and the peak RSS of cmd alone."""
    done = subprocess.run([sys.executable, __file__, "--_measure", *cmd], check=True, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    return json.loads(done.stdout.strip().splitlines()[-1])


def _measure_child(cmd: list[str]) -> None:
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode:
        sys.stderr.write(done.stdout + done.stderr)
        sys.exit(done.returncode)
    print(json.dumps({"seconds": time.perf_counter() - start,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
                      "stdout": done.stdout}))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--_measure":
        _measure_child(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", type=int, default=5000)
    parser.add_argument("--persons", type=int, default=500_000)
    parser.add_argument("--zones", type=int, default=1000)
    parser.add_argument("--days", type=int, default=28)
    parser.add_argument("--workdir", default=None, help="keep the city and dataset here (default: a temporary dir)")
    args = parser.parse_args()

    import polars as pl
    import pyarrow.parquet as pq

    from dpflows.aggregates import AggregateStore
    from dpflows.ledger.sqlite import SqliteLedger
    from dpflows.service import Service
    from dpflows.zoning_sources import add_zoning, read_geojson

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.workdir or tmp)
        city, data = work / "city", work / "data"
        dpflows = [sys.executable, "-m", "dpflows.cli"]
        print(f"real-scale city: {args.cells:,} cells, {args.persons:,} persons, {args.days} days, "
              f"{args.zones:,} zones; load average {os.getloadavg()[0]:.1f} at start", flush=True)
        gen = measure([*dpflows, "demo-city", "--cells", str(args.cells), "--persons", str(args.persons),
                       "--zones", str(args.zones), "--days", str(args.days), "--out", str(city)])
        zname = f"zones{min(args.zones, args.cells)}"
        meta = pq.ParquetFile(city / "events.parquet").metadata
        size_mb = (city / "events.parquet").stat().st_size / 2**20
        print(f"generate: {gen['seconds']:.1f} s, peak RSS {gen['peak_rss_mb']:.0f} MiB; {meta.num_rows:,} events "
              f"({size_mb:,.0f} MiB Parquet, {meta.num_row_groups} row groups)", flush=True)
        zonings = {zname: city / "zonings" / f"{zname}.csv", "sectors": city / "zonings" / "sectors.csv"}
        polygons = city / "zonings" / f"{zname}.geojson"
        coarse = pl.read_csv(zonings["sectors"]).group_by("zone_id").len()["len"].min()
        out = data / "datasets" / "city"
        ing = measure([*dpflows, "ingest", str(city / "events.parquet"), "--cells", str(city / "cells.csv"),
                       "--out", str(out), "--first-day", "2024-03-04",
                       "--end-day", str(dt.date(2024, 3, 4) + dt.timedelta(days=args.days)),
                       "--zoning", f"{zname}={zonings[zname]}",
                       "--zoning", f"sectors={zonings['sectors']}:coarse:{coarse}"])
        agg_mb = sum(p.stat().st_size for p in out.rglob("*.parquet")) / 2**20
        print(f"ingest: {ing['seconds']:.1f} s, peak RSS {ing['peak_rss_mb']:.0f} MiB, "
              f"{meta.num_rows / ing['seconds'] / 1e6:.2f} M events/s; aggregates {agg_mb:,.1f} MiB", flush=True)

        service = Service(AggregateStore(data), SqliteLedger(work / "ledger.db"))
        start = time.perf_counter()
        added = add_zoning(service, "city", f"{zname}-polygons", geojson=read_geojson(polygons),
                           id_field="zone_id", source=polygons.name)
        poly_s = time.perf_counter() - start
        data_set = service.dataset("city")
        same = (data_set.zoning(f"{zname}-polygons").zone_of_cell == data_set.zoning(zname).zone_of_cell).all()
        start = time.perf_counter()
        grid = add_zoning(service, "city", "grid-1km", grid_km=1.0)
        grid_s = time.perf_counter() - start
        print(f"zonings: {zname} from its GeoJSON polygons {poly_s:.2f} s ({added.zones:,} zones, "
              f"{len(added.assigned_to_nearest)} cells outside every polygon, same as the CSV: {bool(same)}); "
              f"1 km grid {grid_s:.2f} s ({grid.zones:,} non-empty squares); "
              f"load average {os.getloadavg()[0]:.1f} at the end", flush=True)
        service.ledger.close()


if __name__ == "__main__":
    main()
