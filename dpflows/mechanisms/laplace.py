"""Pure ε-DP: OpenDP's discrete Laplace, its privacy map, its error bounds, and pricing by error."""

from __future__ import annotations

import math
from fractions import Fraction
from functools import lru_cache

import numpy as np
import opendp.prelude as dp
from opendp.accuracy import (
    accuracy_to_discrete_laplacian_scale,
    discrete_laplacian_scale_to_accuracy,
)

from dpflows.budget import Epsilon, PrivacyLoss, Rho
from dpflows.errors import InvalidInput
from dpflows.mechanisms._base import (
    DEFAULT_CONFIDENCE,
    DISCRETE_GAUSSIAN,
    DISCRETE_LAPLACE,
    MechanismError,
    NoisyRelease,
    _below_floor,
    _check_confidence,
    _check_max_error,
    _integer_vector_space,
    _noised,
)
from dpflows.mechanisms.gaussian import gaussian_sum_error_bound


@lru_cache(maxsize=4096)
def _laplace(scale: float) -> dp.Measurement:
    try:
        return dp.m.make_laplace(*_integer_vector_space(), scale=scale)
    except dp.OpenDPException as exc:
        raise MechanismError(f"noise scale {scale!r} is not usable: {exc.message}") from exc


def privacy_loss(sensitivity: int, scale: float) -> Fraction:
    """ε of the discrete Laplace at this scale for neighbours at ℓ1 distance `sensitivity`, per OpenDP."""
    try:
        return Fraction(_laplace(scale).map(sensitivity))
    except dp.OpenDPException as exc:
        raise MechanismError(f"privacy map failed for sensitivity {sensitivity}: {exc.message}") from exc


def scale_for_epsilon(sensitivity: int, epsilon: Epsilon) -> float:
    """The smallest float scale whose OpenDP privacy map gives at most ε for `sensitivity`.

    L/ε in floating point can round down by an ulp, which would make map(L) exceed ε; we step
    the scale up until OpenDP's own map is within ε, compared exactly.
    """
    if sensitivity < 1:
        raise MechanismError(f"sensitivity={sensitivity} must be a positive integer bound")
    if epsilon.nanos <= 0:
        raise InvalidInput("epsilon=0 releases nothing useful; send a positive epsilon", field="epsilon")
    target = epsilon.as_fraction()
    scale = float(Fraction(sensitivity) / target)
    for _ in range(64):
        if privacy_loss(sensitivity, scale) <= target:
            return scale
        scale = math.nextafter(scale, math.inf)
    raise MechanismError(f"no noise scale meets epsilon={epsilon} for sensitivity {sensitivity}")


def error_bound(scale: float, confidence: float = DEFAULT_CONFIDENCE) -> float:
    """Per-value absolute error tolerance at `confidence`, from OpenDP's accuracy helper."""
    _check_confidence(confidence)
    try:
        return float(discrete_laplacian_scale_to_accuracy(scale=scale, alpha=1.0 - confidence))
    except dp.OpenDPException as exc:
        raise MechanismError(f"accuracy for scale {scale!r} is not computable: {exc.message}") from exc


def discrete_laplace_pmf(scale: float, support: int) -> np.ndarray:
    """P(X = x) for x in [-support, support] of the discrete Laplace at `scale` (analytic, not noise).

    p(x) = (1 − a)/(1 + a) · a^|x| with a = exp(−1/scale): OpenDP's discrete Laplace
    ("discrete Gaussian and Laplace", Canonne, Kamath and Steinke 2020).
    """
    a = math.exp(-1.0 / scale)
    x = np.abs(np.arange(-support, support + 1))
    return (1.0 - a) / (1.0 + a) * np.exp(-x / scale)


#: Largest FFT length of the windowed convolution: at most ~17 ms of CPU per (scale, k), measured
#: at k = 16 (scale·√k up to ~13,000); beyond it the noise is so wide (95% error above ~36,000) that
#: the Chernoff bound, about 40% looser, is used instead. A request computes one such bound per
#: distinct number of summed values, which the public zonings fix (not the client's numbers).
MAX_CONVOLUTION_POINTS = 1 << 18


@lru_cache(maxsize=4096)
def sum_error_bound(scale: float, terms: int, confidence: float = DEFAULT_CONFIDENCE,
                    mechanism: str = DISCRETE_LAPLACE) -> float:
    """A bound t with P(|S| > t) ≤ 1 − confidence for S a sum of `terms` independent noises at `scale`.

    Discrete Gaussian noise: see `gaussian_sum_error_bound`. Discrete Laplace noise, as follows.

    The error of an answer derived by summing k released values (each with its own independent
    noise) is such a sum. One term: OpenDP's own accuracy figure, as for every answer. Several:
    the smallest integer t whose tail, computed by a windowed convolution (`_convolution_bound`),
    meets the level; where that window would exceed MAX_CONVOLUTION_POINTS, a Chernoff bound with
    the exact moment generating function (`_chernoff_bound`). Cached: a request asks for the same
    (scale, k) many times (every zone of a relative change, every total of a table).
    """
    if mechanism == DISCRETE_GAUSSIAN:
        return gaussian_sum_error_bound(scale, terms, confidence)
    _check_confidence(confidence)
    if terms < 1:
        raise MechanismError(f"terms={terms} must be at least 1")
    if terms == 1:
        return error_bound(scale, confidence)
    return float(_convolution_bound(scale, terms, 1.0 - confidence))


def _folded_laplace_pmf(scale: float, n: int) -> np.ndarray:
    """P(X ≡ r mod n) for r in 0..n−1, X discrete Laplace: c·(a^r + a^(n−r)) / (1 − a^n), c = (1−a)/(1+a).

    Exact (two geometric series, no truncation): Σ_{j≥0} a^(r+jn) + Σ_{j≥1} a^(jn−r).
    """
    inv = 1.0 / scale
    r = np.arange(n, dtype=np.float64)
    c = -math.expm1(-inv) / (1.0 + math.exp(-inv))
    return c * (np.exp(-r * inv) + np.exp(-(n - r) * inv)) / -math.expm1(-n * inv)


def _convolution_bound(scale: float, terms: int, alpha: float) -> int:
    """Smallest t with P(|S| > t) ≤ alpha, S a sum of `terms` discrete Laplace(scale), at a cost ∝ √k·scale.

    Let e be the Chernoff point at level η = alpha·1e-6 (P(|S| > e) ≤ η) and n ≥ 2e + 2 a power of
    two. Convolving the pmf of X mod n (exact, `_folded_laplace_pmf`) k times by FFT gives the law of
    S mod n. For |x| ≤ e < n/2 the residues are distinct and P(S ≡ x) ≥ P(S = x), so
    P(|S| > t) ≤ Σ_{t<|x|≤e} P(S ≡ x mod n) + η, plus an allowance for FFT round-off
    (1e-15·n·(k + 64); measured ≤ 2e-13 in all for k ≤ 2000 against an extended-precision
    direct convolution). Gives the same t as a convolution over the full support (k·61·scale
    points) at ~√k times less work. No t meets the level (alpha tiny next to the allowance), or
    the window is too large: the Chernoff bound itself.
    """
    eta = alpha * 1e-6
    edge = _chernoff_bound(scale, terms, eta)
    n = 1 << (2 * edge + 1).bit_length()  # > 2·edge + 1
    if n > MAX_CONVOLUTION_POINTS:
        return _chernoff_bound(scale, terms, alpha)
    dist = np.fft.irfft(np.fft.rfft(_folded_laplace_pmf(scale, n)) ** terms, n)
    dist = np.clip(dist, 0.0, None)  # round-off below zero; clipping only adds mass
    x = np.arange(1, edge + 1)
    both = dist[x] + dist[n - x]  # P(|S| = x mod n), x = 1..edge
    # tail[t] = Σ_{x=t+1}^{edge} both[x], t = 0..edge
    tail = np.concatenate([np.cumsum(both[::-1])[::-1], [0.0]]) + eta + 1e-15 * n * (terms + 64)
    ok = np.flatnonzero(tail <= alpha)
    if len(ok) == 0:
        return _chernoff_bound(scale, terms, alpha)
    return int(ok[0])


def _chernoff_bound(scale: float, terms: int, alpha: float) -> int:
    """Smallest t with 2·min_λ exp(−λ(t+1))·M(λ)^k ≤ alpha, a bound on P(|S| > t).

    ``M(λ) = (1 − a)² / ((1 − a e^λ)(1 − a e^−λ))``, a = e^(−1/scale), is the exact moment generating
    function for 0 < λ < 1/scale, so any grid of λ gives a valid bound. Logs through expm1, so
    that scales of 1e10 (a within 1e-10 of 1) lose no precision; a bisection over t after at
    most 1,100 doublings: O(1) work whatever the scale and k.
    """
    inv = 1.0 / scale
    # 0 < λ < −ln a: even steps, and geometric ones towards 0 where long sums have their optimum (~z/sd)
    lam = np.concatenate([np.geomspace(1e-12, 1e-3, 2000), np.linspace(0.0, 1.0, 4002)[1:-1]]) * inv
    log_m = 2.0 * math.log(-math.expm1(-inv)) - np.log(-np.expm1(lam - inv)) - np.log(-np.expm1(-lam - inv))

    def tail(t: int) -> float:
        return float(2.0 * np.exp(np.min(-lam * (t + 1.0) + terms * log_m))) * (1.0 + 1e-9)

    hi = 1
    for _ in range(1100):
        if tail(hi) <= alpha:
            break
        hi *= 2
    else:
        raise MechanismError(f"no error bound found for {terms} noises at scale {scale!r}")
    lo = 0
    while lo < hi:
        mid = (lo + hi) // 2
        if tail(mid) <= alpha:
            hi = mid
        else:
            lo = mid + 1
    return lo


def epsilon_for_error(sensitivity: int, max_error: float, confidence: float = DEFAULT_CONFIDENCE, *,
                      floor: Epsilon | None = None) -> Epsilon:
    """Accuracy-first: the smallest ε (in nano-units, at least `floor`) whose noise meets `max_error`.

    OpenDP's accuracy-to-scale search for the discrete Laplace is a bisection over closed forms:
    microseconds for any max_error. A max_error that ε = `floor` already meets is refused, naming
    that ε and its error, rather than priced below the floor.
    """
    _check_confidence(confidence)
    _check_max_error(max_error)
    try:
        scale = float(accuracy_to_discrete_laplacian_scale(accuracy=float(max_error), alpha=1.0 - confidence))
    except dp.OpenDPException as exc:
        raise InvalidInput(
            f"max_error={max_error} at confidence={confidence} is not reachable: {exc.message}",
            field="max_error",
        ) from exc
    # Rounding ε up to nano-units only shrinks the scale, so the error target still holds.
    epsilon = Epsilon.from_privacy_map(float(privacy_loss(sensitivity, scale)))
    if floor is not None and epsilon < floor:
        raise _below_floor(max_error, floor, error_bound(scale_for_epsilon(sensitivity, floor), confidence),
                           confidence)
    return epsilon


def release_counts(true_counts: np.ndarray, sensitivity: int, epsilon: Epsilon) -> NoisyRelease:
    """Add discrete Laplace noise to every key's count, zeros included (rule 5)."""
    scale = scale_for_epsilon(sensitivity, epsilon)
    measurement = _laplace(scale)
    loss = Epsilon.from_privacy_map(float(privacy_loss(sensitivity, scale)))
    if loss > epsilon:  # cannot happen after scale_for_epsilon; a guard, not a branch we expect
        raise MechanismError(f"privacy map gives {loss} above the requested epsilon={epsilon}")
    return NoisyRelease(
        values=_noised(true_counts, DISCRETE_LAPLACE, scale, measurement),
        mechanism=DISCRETE_LAPLACE,
        scale=scale,
        sensitivity=sensitivity,
        epsilon=epsilon,
        error_bound_95=error_bound(scale),
    )


def release_contribution_histograms(histograms: list[np.ndarray], epsilon: Epsilon) -> NoisyRelease:
    """The bounding report's one release: discrete Laplace on the measures' histograms, concatenated.

    Each histogram counts person-windows per bin of their number of records (dpflows.ingest.contribution_histograms).
    Neighbouring datasets differ by one person's records in one window (added or removed, the
    reading under which a count has sensitivity L): that moves one person-window into or out of
    one bin of each histogram, so the ℓ1 sensitivity of the concatenation is the number of
    histograms, and OpenDP's map(len(histograms)) <= ε as for every other release.
    """
    if not histograms:
        raise MechanismError("no histogram to release")
    return release_counts(np.concatenate([np.asarray(h, dtype=np.int64) for h in histograms]), len(histograms),
                          epsilon)


def pure_dp_as_rho(sensitivity: int, scale: float) -> Fraction:
    """ρ of a discrete Laplace release at `scale`, for a zCDP ledger: OpenDP's pure-DP → zCDP
    conversion of that very measurement (ε-DP is ε²/2-zCDP; Bun and Steinke 2016, Prop. 1.4)."""
    try:
        return Fraction(dp.c.make_pureDP_to_zCDP(_laplace(scale)).map(sensitivity))
    except dp.OpenDPException as exc:
        raise MechanismError(f"zCDP conversion failed for sensitivity {sensitivity}: {exc.message}") from exc


#: A discrete Laplace at this scale has privacy map d_in / 1e9: its loss at d_in = ε in nano-units is ε itself.
_NANO_SCALE = 1e9


def epsilon_as_rho(epsilon: PrivacyLoss) -> Rho:
    """The ρ an ε-DP charge costs in a zCDP population, by OpenDP's pure-DP → zCDP conversion, rounded up.

    Any ε-DP mechanism is (ε²/2)-zCDP (Bun and Steinke 2016, Prop. 1.4). The figure is OpenDP's: the
    conversion (`make_pureDP_to_zCDP`) of a discrete Laplace whose own privacy map gives at least ε at
    d_in = ε's nano-units (scale 1e9: map(n) = n / 1e9, rounded up by OpenDP), then rounded up to nanos.
    """
    if epsilon.nanos == 0:
        return Rho.zero()
    try:
        measurement = _laplace(_NANO_SCALE)
        if Fraction(measurement.map(epsilon.nanos)) < epsilon.as_fraction():  # OpenDP rounds up: a guard
            raise MechanismError(f"the privacy map at epsilon={epsilon} rounds below it; report this")
        return Rho.from_privacy_map(Fraction(dp.c.make_pureDP_to_zCDP(measurement).map(epsilon.nanos)))
    except dp.OpenDPException as exc:
        raise MechanismError(f"epsilon={epsilon} cannot be converted to rho: {exc.message}") from exc


def largest_epsilon_within(rho: PrivacyLoss) -> Epsilon:
    """The largest ε whose conversion (`epsilon_as_rho`) fits in `rho`: what a ρ budget leaves an ε-DP client.

    For display and quotes (a client's remaining budget in its dataset's measure); the ledger checks the
    converted charge itself. ε²/2 ≤ ρ gives the candidate ⌊√(2ρ)⌋ in nanos, stepped down until OpenDP's
    conversion (which rounds up) fits."""
    nanos = math.isqrt(2 * rho.nanos * 1_000_000_000)
    while nanos > 0 and epsilon_as_rho(Epsilon(nanos)).nanos > rho.nanos:
        nanos -= 1
    return Epsilon(nanos)
