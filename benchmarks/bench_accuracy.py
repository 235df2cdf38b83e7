"""Accuracy of zone-level flows: noise against its theory, total error (bounding bias + noise)
against the unbounded truth for several L, and what the bounding report suggests.

On the demo city (default 20,000 persons, 4 weeks), ingested once effectively unbounded
(L = 10^6) and once per candidate L_trips, all with the same seed. For flows by district over
the first window, prints:
- RMSE of the released counts against the true *bounded* counts (the noise alone), over many
  releases, and its ratio to the discrete Laplace standard deviation sqrt(2·e^{-1/b})/(1-e^{-1/b})
  with b = L/ε (goal ≤ 1.05×);
- for each L at ε = 1: the share of trips kept, the bias from bounding, and the total error of
  released counts against the *unbounded* truth, as RMSE (exact: bias² + noise variance) and as
  mean absolute error (MAE, averaged over releases through OpenDP), with the best L marked;
- the bounding report (dpflows.contribution_report) over many draws at several report ε: its
  estimate of the share of trips dropped at L_trips = 20 against the truth, and the bound it
  suggests for this very query (K values at ε = 1), next to the best L found above.

    python benchmarks/bench_accuracy.py [--persons 20000] [--window-days 7] [--releases 200]
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import polars as pl

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dpflows.aggregates import load_dataset  # noqa: E402
from dpflows.budget import Epsilon  # noqa: E402
from dpflows.contribution_report import BoundingReport, TypicalQuery, summarize  # noqa: E402
from dpflows.demo import generate_city  # noqa: E402
from dpflows.ingest import derive  # noqa: E402
from dpflows.ingest.contribution_histograms import contribution_histogram  # noqa: E402
from dpflows.ingest.pipeline import IngestOptions, ZoningSpec, _index_cells, _with_window, ingest_events, read_cells  # noqa: E402
from dpflows.mechanisms import release_contribution_histograms, release_counts  # noqa: E402
from dpflows.queries import make_spec, prepare  # noqa: E402

UNBOUNDED = 10**6
QUERY_EPSILON = "1"


def discrete_laplace_sd(scale: float) -> float:
    """Standard deviation of the discrete Laplace with P(k) ∝ exp(-|k|/scale)."""
    a = math.exp(-1.0 / scale)
    return math.sqrt(2 * a) / (1 - a)


def exact_trip_histogram(events: Path, cells: Path, first_day: dt.date, window_days: int) -> np.ndarray:
    """The secret histogram ingestion computes (benchmark only: to draw many reports from it)."""
    _, lookup = read_cells(cells)
    frame = _index_cells(pl.scan_parquet(events), lookup, events, "cell_id", "cell").collect().lazy()
    rows = derive.trips(frame).with_columns(pl.col("timestamp").dt.date().alias("day"))
    return contribution_histogram(_with_window(rows, first_day, window_days))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--persons", type=int, default=20000)
    ap.add_argument("--window-days", type=int, default=7)
    ap.add_argument("--releases", type=int, default=200)
    ap.add_argument("--bounds", default="5,10,15,18,20,22,25,30,40,60",
                    help="L_trips values for the total-error table")
    ap.add_argument("--report-epsilons", default="0.05,0.1,0.2", help="report ε values to draw reports at")
    ap.add_argument("--report-draws", type=int, default=100, help="reports drawn at each report ε")
    args = ap.parse_args()
    bounds = sorted(int(b) for b in args.bounds.split(","))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        city = generate_city(root / "city", persons=args.persons, days=28)
        zonings = [ZoningSpec("districts", city.districts)]
        spec = make_spec("flows", dataset="acc", zoning="districts", start=city.first_day,
                         end=city.first_day + dt.timedelta(days=args.window_days))
        truth: dict[int, np.ndarray] = {}
        kept_all: dict[int, float] = {}
        for bound in [UNBOUNDED, *bounds]:
            out = ingest_events(city.events, city.cells, root / f"L{bound}",
                                IngestOptions(**city.span, name="acc", bound_trips=bound, zonings=zonings, seed=42,
                                              window_days=args.window_days, report_epsilon=0))
            data = load_dataset(out)
            truth[bound] = prepare(spec, data).true_counts.astype(np.float64)
            kept_all[bound] = float(data.frame("trips")["count"].sum())
        unbounded = truth.pop(UNBOUNDED)
        all_trips = kept_all.pop(UNBOUNDED)
        keys = unbounded.size
        print(f"demo city: {args.persons:,} persons, windows of {args.window_days} days; flows by district over "
              f"the first window: {keys:,} keys, {unbounded.sum():,.0f} trips before bounding")

        reference = 20 if 20 in truth else bounds[len(bounds) // 2]
        print(f"\nNoise alone (L_trips = {reference}), RMSE over {args.releases} releases × {keys:,} keys "
              "against the bounded truth:")
        print(f"{'epsilon':>8} {'scale L/ε':>10} {'RMSE':>9} {'DL sd':>9} {'ratio':>7}")
        bounded = truth[reference]
        for eps in ("0.1", "0.5", "1", "2"):
            errors = []
            for _ in range(args.releases):
                rel = release_counts(bounded.astype(np.int64), reference, Epsilon.parse(eps))
                errors.append(rel.values - bounded)
            rmse = float(np.sqrt(np.mean(np.square(errors))))
            sd = discrete_laplace_sd(rel.scale)
            print(f"{eps:>8} {rel.scale:>10.1f} {rmse:>9.2f} {sd:>9.2f} {rmse / sd:>6.3f}x")

        print(f"\nTotal error against the unbounded truth at ε = {QUERY_EPSILON} (per key; MAE over "
              f"{args.releases} releases):")
        print(f"{'L_trips':>8} {'kept':>7} {'bias RMSE':>10} {'noise sd':>9} {'total RMSE':>11} {'bias MAE':>9} "
              f"{'total MAE':>10}")
        rows = []
        for bound in bounds:
            counts = truth[bound]
            bias = counts - unbounded
            bias_rmse = float(np.sqrt(np.mean(np.square(bias))))
            sd = discrete_laplace_sd(bound / float(QUERY_EPSILON))
            total_rmse = math.sqrt(bias_rmse**2 + sd**2)
            mae = float(np.mean([np.mean(np.abs(release_counts(counts.astype(np.int64), bound,
                                                               Epsilon.parse(QUERY_EPSILON)).values - unbounded))
                                 for _ in range(args.releases)]))
            rows.append((bound, counts.sum() / unbounded.sum(), bias_rmse, sd, total_rmse,
                         float(np.mean(np.abs(bias))), mae))
        best_rmse = min(rows, key=lambda r: r[4])[0]
        best_mae = min(rows, key=lambda r: r[6])[0]
        for bound, kept, bias_rmse, sd, total_rmse, bias_mae, mae in rows:
            mark = " <- best RMSE" if bound == best_rmse else ""
            mark += " <- best MAE" if bound == best_mae else ""
            print(f"{bound:>8} {kept:>6.1%} {bias_rmse:>10.2f} {sd:>9.2f} {total_rmse:>11.2f} {bias_mae:>9.2f} "
                  f"{mae:>10.2f}{mark}")

        exact = exact_trip_histogram(city.events, city.cells, city.first_day, args.window_days)
        windows = load_dataset(root / f"L{bounds[0]}").metadata.window_count
        query = TypicalQuery(keys, float(QUERY_EPSILON), "this benchmark's query")
        true_dropped = {b: 1.0 - kept_all[b] / all_trips for b in bounds}
        probe = 20 if 20 in bounds else reference
        noiseless = BoundingReport(("trips",), {"trips": exact}, Epsilon.zero(), 1e-9, 1, "discrete_laplace", windows)
        exact_rule = summarize(noiseless, "trips", probe, query)
        print(f"\nBounding report: share of trips dropped at L_trips = {probe} (all windows; true "
              f"{true_dropped[probe]:.2%}) and the L it suggests for this query (K = {keys:,} values at "
              f"ε = {QUERY_EPSILON}), over {args.report_draws} report draws; the two histograms of a real "
              "report (trips and presence) share its ε, so trips alone are drawn at sensitivity 2:")
        print(f"  its rule on the exact histogram: share dropped {exact_rule.share_dropped:.2%}, suggests "
              f"L = {exact_rule.suggested_bound}  (best measured: RMSE L = {best_rmse}, MAE L = {best_mae})")
        print(f"{'report ε':>9} {'share dropped: median':>22} {'5%-95%':>16} {'suggested L (draws)':>30}")
        for text in args.report_epsilons.split(","):
            estimates, suggestions = [], Counter()
            for _ in range(args.report_draws):
                # the real report releases trips and presence together at sensitivity 2
                release = release_contribution_histograms([exact, np.zeros_like(exact)], Epsilon.parse(text))
                report = BoundingReport.from_release(("trips", "presence"), release, windows)
                s = summarize(report, "trips", probe, query)
                estimates.append(s.share_dropped)
                suggestions[s.suggested_bound] += 1
            lo, med, hi = np.percentile(estimates, [5, 50, 95])
            common = ", ".join(f"{b}: {n}" for b, n in sorted(suggestions.items()))
            print(f"{text:>9} {med:>22.2%} {f'{lo:.2%}-{hi:.2%}':>16} {common:>30}")
    questions(args.persons)


def questions(persons: int) -> None:
    """Issue 14's figures: residents and commuting against the generator's truth, one-hour presence (ε 0.5)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_questions import run

    print("\n-- the planners' questions at ε = 0.5 per window (benchmarks/bench_questions.py) --")
    run(persons, "0.5")


if __name__ == "__main__":
    main()
