"""Accuracy of zone-level flows: noise against its theory, and bias from bounding.

On the demo city (default 20,000 persons, 4 weeks), ingested twice with the same seed:
bounded (L_trips = 20, the default) and effectively unbounded (L = 10^6). For flows by
district over week 1 and ε in {0.1, 0.5, 1, 2}, prints:
- RMSE of the released counts against the true *bounded* counts (the noise alone), over many
  releases, and its ratio to the discrete Laplace standard deviation sqrt(2·e^{-1/b})/(1-e^{-1/b})
  with b = L/ε (goal ≤ 1.05×);
- the bias from bounding: RMSE and total share of the bounded truth against the unbounded truth;
- the total error (noise + bounding) against the unbounded truth.

    python benchmarks/bench_accuracy.py [--persons 20000] [--releases 200]
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dpflows.aggregates import load_dataset  # noqa: E402
from dpflows.budget import Epsilon  # noqa: E402
from dpflows.demo import generate_city  # noqa: E402
from dpflows.ingest.pipeline import ZoningSpec, ingest_events  # noqa: E402
from dpflows.mechanisms import release_counts  # noqa: E402
from dpflows.queries import make_spec, prepare  # noqa: E402


def discrete_laplace_sd(scale: float) -> float:
    """Standard deviation of the discrete Laplace with P(k) ∝ exp(-|k|/scale)."""
    a = math.exp(-1.0 / scale)
    return math.sqrt(2 * a) / (1 - a)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--persons", type=int, default=20000)
    ap.add_argument("--releases", type=int, default=200)
    ap.add_argument("--bounds", default="5,10,20,40", help="L_trips values for the bias table")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        city = generate_city(root / "city", persons=args.persons, days=28)
        zonings = [ZoningSpec("districts", city.districts)]
        spec = make_spec("flows", dataset="acc", zoning="districts", start=dt.date(2024, 3, 4),
                         end=dt.date(2024, 3, 11))
        truth: dict[int, np.ndarray] = {}
        for bound in [10**6, *(int(b) for b in args.bounds.split(","))]:
            out = ingest_events(city.events, city.cells, root / f"L{bound}", name="acc", bound_trips=bound,
                                zonings=zonings, seed=42)
            truth[bound] = prepare(spec, load_dataset(out)).true_counts.astype(np.float64)
        unbounded = truth.pop(10**6)
        keys = unbounded.size
        print(f"demo city: {args.persons:,} persons; flows by district, week 1: {keys:,} keys, "
              f"{unbounded.sum():,.0f} trips before bounding")
        print("\nNoise alone (L_trips = 20), RMSE over "
              f"{args.releases} releases × {keys:,} keys against the bounded truth:")
        print(f"{'epsilon':>8} {'scale L/ε':>10} {'RMSE':>9} {'DL sd':>9} {'ratio':>7}")
        bounded = truth[20]
        for eps in ("0.1", "0.5", "1", "2"):
            errors = []
            for _ in range(args.releases):
                rel = release_counts(bounded.astype(np.int64), 20, Epsilon.parse(eps))
                errors.append(rel.values - bounded)
            rmse = float(np.sqrt(np.mean(np.square(errors))))
            sd = discrete_laplace_sd(rel.scale)
            print(f"{eps:>8} {rel.scale:>10.1f} {rmse:>9.2f} {sd:>9.2f} {rmse / sd:>6.3f}x")
        print("\nBias from bounding against the unbounded truth, and total error at ε = 1:")
        print(f"{'L_trips':>8} {'kept':>7} {'bias RMSE':>10} {'noise sd':>9} {'total RMSE':>11}")
        best = None
        for bound, counts in sorted(truth.items()):
            bias = float(np.sqrt(np.mean(np.square(counts - unbounded))))
            sd = discrete_laplace_sd(bound / 1.0)
            total = math.sqrt(bias**2 + sd**2)
            best = min(best or (total, bound), (total, bound))
            print(f"{bound:>8} {counts.sum() / unbounded.sum():>6.1%} {bias:>10.2f} {sd:>9.2f} {total:>11.2f}")
        print(f"\nlowest total error at ε = 1: L_trips = {best[1]} (RMSE {best[0]:.2f} per key)")


if __name__ == "__main__":
    main()
