"""Accuracy of the planners' questions (issue 14) on the demo city, against the generator's truth.

Generates the demo city with its ground truth (each person's true home and work cell, never
ingested), ingests it as the service does, and releases through the real service at ε = 0.5
per window:

- residents (home) per district and window, and home→work commuting per district pair and
  window: RMSE against the truth (persons whose true home / work lies there), split into the
  part that derivation misses (exact derived counts vs truth, no noise) and the noise;
- one-hour presence on one day: the 95% error bound calibrated to L_presence (what presence
  cost before one place per person-hour) and to the day-hour slots it covers (now).

    python benchmarks/bench_questions.py [--persons 20000] [--epsilon 0.5]
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--persons", type=int, default=20000)
    ap.add_argument("--epsilon", default="0.5")
    args = ap.parse_args()
    run(args.persons, args.epsilon)


def run(persons: int, epsilon: str) -> None:
    """The figures, for `persons` at `epsilon` per window (bench_accuracy.py calls this too)."""
    sys.path.insert(0, str(ROOT))
    import numpy as np
    import polars as pl

    from dpflows.aggregates import AggregateStore
    from dpflows.budget import Epsilon
    from dpflows.demo import generate_city
    from dpflows.ingest.pipeline import IngestOptions, Progress, ZoningSpec, ingest_events
    from dpflows.ledger.memory import MemoryLedger
    from dpflows.mechanisms import error_bound, scale_for_epsilon
    from dpflows.queries import make_spec, prepare
    from dpflows.service import QueryRequest, Service

    eps = Epsilon.parse(epsilon)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t = time.perf_counter()
        city = generate_city(root / "raw", persons=persons, days=28, ground_truth=True)
        ingest_events(city.events, city.cells, root / "datasets" / "demo",
                      IngestOptions(name="demo", **city.span, seed=5, report_epsilon=0,
                                    zonings=[ZoningSpec("districts", city.districts)]), progress=Progress(False))
        print(f"demo city: {persons} persons, 4 weeks, prepared in {time.perf_counter() - t:.1f} s")
        service = Service(AggregateStore(root), MemoryLedger())
        planner, _ = service.create_client("planner", "planner")
        service.set_cap("demo", Epsilon.parse("10"), client_id=planner.id, window=None)
        service.set_cap("demo", Epsilon.parse("10"), client_id=None, window=None)
        data = service.dataset("demo")
        zoning = data.zoning("districts")
        district = dict(zip(data.catalog.cell_ids, (zoning.zone_ids[z] for z in zoning.zone_of_cell), strict=True))
        truth = pl.read_parquet(city.truth)
        start, end = city.first_day, city.end_day
        windows = [(start + dt.timedelta(days=7 * w)).isoformat() for w in range(4)]

        def compare(kind: str, keys: list[str], true_counts: dict[tuple, int], **kw: object) -> None:
            spec = make_spec(kind, dataset="demo", zoning="districts", start=start, end=end, **kw)  # type: ignore[arg-type]
            answer = service.answer(QueryRequest(spec, epsilon=eps), planner)
            exact = prepare(spec, data).true_counts
            got = np.array([r["count"] for r in answer.values], dtype=float)
            want = np.array([true_counts.get(tuple(r[k] for k in keys), 0) for r in answer.values], dtype=float)
            rmse = math.sqrt(float(np.mean((got - want) ** 2)))
            derivation = math.sqrt(float(np.mean((exact - want) ** 2)))
            noise = math.sqrt(float(np.mean((got - exact) ** 2)))
            print(f"{kind:10s} {len(got):6d} values: RMSE vs truth {rmse:7.1f} = derivation {derivation:7.1f} "
                  f"(+) noise {noise:5.1f} (noise sd {math.sqrt(2) * answer.noise_scale:.1f}; mean true count "
                  f"{want.mean():.1f}; 95% bound ±{answer.error_bound_95:.1f})")

        homes: dict[tuple, int] = {}
        for cell in truth["home"].to_list():
            for w in windows:
                homes[(district[cell], w)] = homes.get((district[cell], w), 0) + 1
        compare("residents", ["zone", "window"], homes, place="home")
        commutes: dict[tuple, int] = {}
        for home, work in truth.filter(pl.col("work") != pl.col("home")).select("home", "work").iter_rows():
            for w in windows:
                key = (district[home], district[work], w)
                commutes[key] = commutes.get(key, 0) + 1
        compare("commuting", ["home", "work", "window"], commutes)
        before = error_bound(scale_for_epsilon(data.metadata.bound_presence, eps))
        one_hour = make_spec("presence", dataset="demo", zoning="districts", start=start,
                             end=start + dt.timedelta(days=1), hours=[8, 9])
        after = service.answer(QueryRequest(one_hour, epsilon=eps), planner)
        print(f"one-hour presence on one day: 95% bound ±{before:.1f} calibrated to L_presence="
              f"{data.metadata.bound_presence}, ±{after.error_bound_95:.1f} calibrated to its 1 day-hour slot "
              f"(sensitivity {after.sensitivity}, count unit {after.count_unit}): {before / after.error_bound_95:.0f}x "
              "smaller")


if __name__ == "__main__":
    main()
