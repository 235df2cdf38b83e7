"""The noise dpflows adds is the discrete Laplace it claims, and its stated error bound is honest.

We release N = 200,000 zeros through `dpflows.mechanisms.release_counts` (so the values *are*
the noise) and compare them with the exact discrete Laplace pmf at the release's own `scale`:

    P(k) = (1 - a) / (1 + a) · a^|k|,   a = exp(-1/scale),   P(k > K) = P(k < -K) = a^(K+1) / (1 + a).

Chi-square goodness of fit over the signed bins -K..K plus one tail bin on each side, where K
is the largest |k| whose expected count is still at least 20 (so the chi-square approximation
is sound). Signed bins catch an off-centre or asymmetric sampler as well as a wrong scale.

Why alpha = 1e-7: this test runs on every CI run for every configuration; a false alarm should
never happen in the project's lifetime (one in ten million runs), and the sample is large
enough that the test keeps its power at that level. Computed with the noncentral chi-square
at N = 200,000: a scale 3% off is caught with probability > 0.9999 (scale 5: 70 df, critical
value 149.7, noncentrality 181; scale 2: 32 df, critical 92.1, noncentrality 187), and at
scale 2 a rounded continuous Laplace (the floating-point sampler Mironov attacked) is caught
with probability ≈ 1 (noncentrality 608).

Error bound: OpenDP defines the accuracy b at level alpha by alpha = P(|noise| >= b). Noise is
an integer, so the true coverage P(|noise| < b) is at least 95% and a little above it. We
check the empirical coverage is within 6 binomial standard deviations of the exact coverage
from the pmf (a 6-sd miss has probability < 2e-9), that the exact coverage is >= 95%, and that
the bound is tight: one count less would cover less than 95%.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from dpflows.budget import Epsilon
from dpflows.mechanisms import error_bound, release_counts

N = 200_000
ALPHA = 1e-7
MIN_EXPECTED = 20

#: two releases of 200,000 values take about 4-5 s in all: slow
pytestmark = pytest.mark.slow

CONFIGS = [
    pytest.param((5, "1", 5.0), id="L5-eps1-scale5"),
    pytest.param((1, "0.5", 2.0), id="L1-eps0.5-scale2"),
]


def discrete_laplace_pmf(scale: float, k: np.ndarray) -> np.ndarray:
    a = math.exp(-1.0 / scale)
    return (1 - a) / (1 + a) * a ** np.abs(k)


def discrete_laplace_tail(scale: float, cut: int) -> float:
    """P(noise > cut) = P(noise < -cut) for cut >= 0."""
    a = math.exp(-1.0 / scale)
    return a ** (cut + 1) / (1 + a)


def coverage(scale: float, bound: float) -> float:
    """Exact P(|noise| < bound)."""
    largest_inside = math.ceil(bound) - 1  # integers k with |k| < bound
    return 1.0 - 2.0 * discrete_laplace_tail(scale, largest_inside)


@pytest.fixture(scope="module", params=CONFIGS)
def zeros_release(request: pytest.FixtureRequest):
    sensitivity, eps, expected_scale = request.param
    release = release_counts(np.zeros(N, dtype=np.int64), sensitivity, Epsilon.parse(eps))
    assert release.scale == pytest.approx(expected_scale, rel=1e-12)
    return release


def test_noise_matches_exact_discrete_laplace_pmf(zeros_release) -> None:
    scale = zeros_release.scale
    noise = zeros_release.values
    a = math.exp(-1.0 / scale)
    # largest K with expected count N·P(K) >= MIN_EXPECTED
    cut = math.floor(scale * math.log(N * (1 - a) / (1 + a) / MIN_EXPECTED))
    ks = np.arange(-cut, cut + 1)
    tail = discrete_laplace_tail(scale, cut)
    expected = N * np.concatenate([[tail], discrete_laplace_pmf(scale, ks), [tail]])
    assert expected.min() >= MIN_EXPECTED
    inside = np.clip(noise, -cut - 1, cut + 1) + cut + 1  # -cut-1 -> bin 0 (low tail), cut+1 -> high tail
    observed = np.bincount(inside, minlength=2 * cut + 3)
    assert observed.sum() == N and expected.sum() == pytest.approx(N)
    chi2, p_value = stats.chisquare(observed, expected)
    assert p_value > ALPHA, f"chi2={chi2:.1f} on {len(observed) - 1} df, p={p_value:.2e}"
    # The mean and the variance agree with the pmf too (variance 2a/(1-a)^2), as a readable cross-check.
    assert abs(noise.mean()) < 6 * math.sqrt(2 * a / (1 - a) ** 2 / N)


def test_error_bound_95_covers_95_percent(zeros_release) -> None:
    scale = zeros_release.scale
    bound = zeros_release.error_bound_95
    assert bound == error_bound(scale, 0.95)
    exact = coverage(scale, bound)
    assert exact >= 0.95
    assert coverage(scale, bound - 1) < 0.95, "the bound is loose by a whole count"
    empirical = float(np.mean(np.abs(zeros_release.values) < bound))
    sd = math.sqrt(exact * (1 - exact) / N)
    assert abs(empirical - exact) < 6 * sd, f"coverage {empirical:.4f}, exact {exact:.4f}, sd {sd:.5f}"
    assert empirical > 0.95 - 6 * math.sqrt(0.95 * 0.05 / N)
