"""Laplace (pure ε-DP) vs discrete Gaussian (zCDP) at equal (ε, δ) after k queries (issue 8, item 4).

    python benchmarks/bench_zcdp.py                  # ε = 1, δ = 1e-8 per window, k in 1, 10, 100
    python benchmarks/bench_zcdp.py --epsilon 2 --delta 1e-9 --draws 50000

A window's budget is one (ε, δ) target. Split over k equal queries:
- pure DP: each query gets ε/k (basic composition; (ε, 0)-DP meets any δ), discrete Laplace
  with scale L / (ε/k) from `scale_for_epsilon`;
- zCDP: the largest total ρ whose (ε, δ) conversion (OpenDP's, `rho_to_approx_dp`) is at most ε,
  found by bisection on nano-ρ; each query gets ρ/k, discrete Gaussian with the ℓ2 sensitivity
  of the query shape (`l2_sensitivity(L, per-key cap)`) and scale from `scale_for_rho`.

Three query shapes: a zone-level query where the per-key cap does not help (ℓ2 = ℓ1 = L), and
cell-level presence per day and per week where it does (each person adds at most 1 per cell-hour
row). For each, the stated 95% error per value (OpenDP's accuracy helpers) and the measured 95th
percentile of |noise| over --draws values drawn by the real release functions (OpenDP samplers).
"""

from __future__ import annotations

import argparse
import sys
import time
from fractions import Fraction
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dpflows.budget import Epsilon, Rho
from dpflows.mechanisms import (
    l2_sensitivity,
    release_counts,
    release_counts_gaussian,
    rho_to_approx_dp,
)

SHAPES = [
    # (name, L, per-key cap as it enters l2_sensitivity)
    ("trips, zone to zone, one week (l2 = L = 20)", 20, 20),
    ("presence, cell x hour, one day (cap 1: l2 = sqrt(100) = 10)", 100, 1),
    ("presence, cell x hour, one week (cap 7: l2 = 26.3)", 100, 7),
]


def largest_rho(epsilon: float, delta: float) -> Rho:
    """The largest ρ (nano-units) whose OpenDP (ε, δ) conversion stays at or below ε."""
    lo, hi = 0, 10**12
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if rho_to_approx_dp(Rho(mid), delta) <= epsilon:
            lo = mid
        else:
            hi = mid - 1
    return Rho(lo)


def measured_p95(values: np.ndarray) -> float:
    return float(np.quantile(np.abs(values), 0.95))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epsilon", type=float, default=1.0)
    parser.add_argument("--delta", type=float, default=1e-8)
    parser.add_argument("--draws", type=int, default=20_000, help="noise values drawn per configuration")
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 10, 100])
    args = parser.parse_args()
    rho_total = largest_rho(args.epsilon, args.delta)
    print(f"budget per window: (epsilon={args.epsilon:g}, delta={args.delta:g}); "
          f"zCDP equivalent rho={rho_total} (OpenDP conversion gives epsilon="
          f"{rho_to_approx_dp(rho_total, args.delta):.6f}); {args.draws:,} draws per cell of the table")
    zeros = np.zeros(args.draws, dtype=np.int64)
    for name, bound, cap in SHAPES:
        l2 = l2_sensitivity(bound, cap)
        print(f"\n{name}")
        print(f"{'k':>5} {'eps/query':>10} {'Laplace 95%':>12} {'measured':>9} {'rho/query':>10} "
              f"{'Gaussian 95%':>13} {'measured':>9} {'Gauss/Lap':>10}")
        for k in args.ks:
            eps_k = Epsilon(Epsilon.parse(args.epsilon).nanos // k)  # rounding down keeps k·ε_k <= ε
            rho_k = Rho(rho_total.nanos // k)
            start = time.perf_counter()
            lap = release_counts(zeros, bound, eps_k)
            gau = release_counts_gaussian(zeros, l2, rho_k)
            seconds = time.perf_counter() - start
            ratio = gau.error_bound_95 / lap.error_bound_95
            print(f"{k:>5} {float(eps_k.as_fraction()):>10.5f} {lap.error_bound_95:>12.1f} "
                  f"{measured_p95(lap.values):>9.1f} {float(Fraction(rho_k.nanos, 10**9)):>10.6f} "
                  f"{gau.error_bound_95:>13.1f} {measured_p95(gau.values):>9.1f} {ratio:>10.3f}"
                  f"   ({seconds:.1f} s)")
    print("\nGauss/Lap < 1: the Gaussian answers more accurately at the same (epsilon, delta).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
