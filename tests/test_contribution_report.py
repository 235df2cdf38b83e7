"""The bounding report's post-processing: exact arithmetic on known histograms, and statistical
sanity of the estimates under real OpenDP noise."""

from __future__ import annotations

import numpy as np
import pytest

from dpflows.budget import Epsilon
from dpflows.contribution_report import (
    BIN_COUNT,
    BIN_UPPER,
    BoundingReport,
    TypicalQuery,
    bin_ranges,
    mean_absolute_noise,
    report_document,
    summarize,
)
from dpflows.errors import InvalidData
from dpflows.mechanisms import discrete_laplace_pmf, release_contribution_histograms

TYPICAL = TypicalQuery(keys=100, epsilon=1.0, description="test")


def report_of(trips: np.ndarray, *, scale: float = 0.5, windows: int = 1) -> BoundingReport:
    """A report holding given values, as if released at `scale` (for testing the arithmetic only)."""
    return BoundingReport.from_json({
        "format": 1, "bin_upper": list(BIN_UPPER), "measures": ["trips"],
        "noisy_counts": {"trips": [int(v) for v in trips]}, "mechanism": "discrete_laplace",
        "noise_scale": scale, "sensitivity": 1, "epsilon_nanos": 2 * 10**9, "windows": windows,
    })


def histogram(units: dict[int, int]) -> np.ndarray:
    """records per person-window -> person-windows, binned."""
    h = np.zeros(BIN_COUNT, dtype=np.int64)
    for records, n in units.items():
        h[int(np.searchsorted(BIN_UPPER, records, side="left"))] += n
    return h


def test_share_dropped_quantiles_and_over_are_exact_on_single_value_bins() -> None:
    units = {1: 100, 2: 200, 5: 400, 8: 200, 10: 100}  # all in bins of one value each
    s = summarize(report_of(histogram(units)), "trips", 5, TYPICAL)
    total = sum(c * n for c, n in units.items())
    dropped = sum(max(c - 5, 0) * n for c, n in units.items())
    assert s.person_windows == 1000 and s.share_dropped == pytest.approx(dropped / total)
    assert s.share_over == pytest.approx(300 / 1000)
    assert [(q.q, q.lower, q.upper) for q in s.quantiles] == [(0.5, 5, 5), (0.9, 8, 8), (0.95, 10, 10),
                                                              (0.99, 10, 10)]
    assert {c.bound: c.share_dropped for c in s.candidates}[10] == 0.0


def test_records_inside_a_wide_bin_count_as_uniform() -> None:
    s = summarize(report_of(histogram({35: 300})), "trips", 30, TYPICAL)  # bin 31..40: mean 35.5, all above 30
    assert s.share_dropped == pytest.approx((35.5 - 30) / 35.5) and s.share_over == 1.0
    s = summarize(report_of(histogram({35: 300})), "trips", 38, TYPICAL)  # L inside the bin: 39, 40 drop 1, 2
    assert s.share_dropped == pytest.approx((3 / 10) / 35.5) and s.share_over == pytest.approx(2 / 10)


def test_suggested_bound_minimises_the_stated_error_bound() -> None:
    rng = np.random.default_rng(5)  # synthetic population, not noise
    units = {int(c): int(n) for c, n in zip(*np.unique(rng.poisson(17, 20_000) + 1, return_counts=True),
                                            strict=True)}
    h = histogram(units)
    s = summarize(report_of(h, windows=2), "trips", 20, TypicalQuery(2500, 1.0, "flows"))
    total = sum(c * n for c, n in units.items())

    def mae(bound: int) -> float:  # records exactly, and the within-bin uniform reading, agree closely
        dropped = sum(max(c - bound, 0) * n for c, n in units.items())
        return dropped / 2 / 2500 + mean_absolute_noise(bound / 1.0)

    by_bound = {c.bound: c.mae_bound for c in s.candidates}
    assert s.suggested_bound == min(by_bound, key=lambda b: (by_bound[b], b))
    for bound in (1, 10, 20, 30):
        assert by_bound[bound] == pytest.approx(mae(bound), rel=0.05, abs=0.5), bound
    # raising L past it pays only while more than K/ε person-windows per window exceed L
    over = {c.bound: c.share_over * s.person_windows / 2 for c in s.candidates}
    assert over[s.suggested_bound] <= 2500 * 1.5 and total > 0


def test_mean_absolute_noise_matches_the_pmf() -> None:
    for scale in (0.7, 5.0, 40.0):
        support = int(scale * 60)
        pmf = discrete_laplace_pmf(scale, support)
        assert mean_absolute_noise(scale) == pytest.approx(float(pmf @ np.abs(np.arange(-support, support + 1))))


def test_an_isolated_noisy_far_bin_is_cut_but_a_detected_run_is_kept() -> None:
    h = histogram({5: 5000})
    report = report_of(h, scale=10.0)
    t1, t2, *_ = report.detection_thresholds()
    assert t1 > t2 > 0
    far = h.copy()
    far[BIN_COUNT - 2] = int(t1) - 1  # 50,001..100,000 records: noise below t1 alone is not data
    assert report_of(far, scale=10.0).support_end("trips") == int(np.searchsorted(BIN_UPPER, 5)) + 1
    assert summarize(report_of(far, scale=10.0), "trips", 5, TYPICAL).share_dropped == 0.0
    run = h.copy()
    run[BIN_UPPER.index(500)] = run[BIN_UPPER.index(600)] = int(np.ceil(t2))  # two neighbours above t2
    assert report_of(run, scale=10.0).support_end("trips") == BIN_UPPER.index(500) + 1


def test_stored_reports_are_checked() -> None:
    doc = report_of(histogram({1: 1})).to_json()
    for bad in ({**doc, "format": 2}, {**doc, "bin_upper": [1, 2]}, {**doc, "mechanism": "gaussian"},
                {**doc, "noisy_counts": {"trips": [1, 2]}}, {k: v for k, v in doc.items() if k != "windows"}):
        with pytest.raises(InvalidData):
            BoundingReport.from_json(bad)


def test_document_lists_every_bin_with_its_noisy_count() -> None:
    h = histogram({3: 10, 200_000: 1})
    doc = report_document(report_of(h), {"trips": 20, "presence": 100}, zones=7)
    [m] = doc["measures"]
    assert [(b["lower"], b["upper"]) for b in m["histogram"]] == bin_ranges()
    assert [b["noisy_count"] for b in m["histogram"]] == h.tolist()
    assert m["typical_query"] == {"keys": 49, "epsilon": 1.0, "description": "flows between 7 zones over one window"}


# -- statistical sanity under real OpenDP noise -------------------------------------------------------------

POPULATION = {**{c: 2000 for c in range(1, 11)}, 14: 6000, 18: 6000, 23: 3000, 28: 1000, 33: 500,  # most
              45: 1200, 55: 1200, 450: 600}  # a heavy tail  # a heavy tail, as the demo city's presence has
RELEASES = 200


def test_estimates_under_noise_are_close_to_the_binned_truth() -> None:
    """200 releases at ε = 0.05 (scale 20 for one histogram).

    Share dropped at L = 20: the estimator sums noisy bins within the support, so it is unbiased
    there, with sd ≈ scale·√2·‖weights‖/total; the support is found correctly except with
    probability ≤ 5% (the detection thresholds' guarantee; the heavy bins are far above t_1).
    So at least 85% of releases must lie within 5 sd (P(Binomial(200, 0.05) > 30) < 1e-6).
    The median's rank error (a 95% bound on the share at or below its upper end) must cover the
    truth in at least 85% of releases.
    """
    exact = histogram(POPULATION)
    truth = summarize(report_of(exact, scale=1e-9), "trips", 20, TYPICAL)
    records = sum(c * n for c, n in POPULATION.items())
    assert truth.share_dropped == pytest.approx(sum(max(c - 20, 0) * n for c, n in POPULATION.items()) / records,
                                                abs=0.01)  # the uniform-in-bin reading is close to exact
    support = int(np.searchsorted(BIN_UPPER, 450)) + 1
    reps = np.array([(lo + (hi or lo)) / 2 for lo, hi in bin_ranges()])[:support]
    weights = reps - np.minimum(reps, 20) - truth.share_dropped * reps  # d(share)/d(bin) · total
    sd = 20.0 * np.sqrt(2.0) * float(np.linalg.norm(weights)) / records
    close = covered = 0
    for _ in range(RELEASES):
        release = release_contribution_histograms([exact], Epsilon.parse("0.05"))
        report = BoundingReport.from_release(("trips",), release, windows=1)
        s = summarize(report, "trips", 20, TYPICAL)
        close += abs(s.share_dropped - truth.share_dropped) <= 5 * sd
        median = s.quantiles[0]
        j = BIN_UPPER.index(median.upper)
        read = report.within_support("trips")
        noisy_share = read[: j + 1].sum() / read.sum()  # the share at or below `upper` the report read
        true_share = exact[: j + 1].sum() / exact.sum()
        covered += abs(noisy_share - true_share) <= median.rank_error_95
    assert close >= 0.85 * RELEASES, (close, sd)
    assert covered >= 0.85 * RELEASES, covered
