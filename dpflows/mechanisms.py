"""The one module that imports OpenDP: every noise draw and every privacy-loss figure.

Why OpenDP only: floating-point noise samplers are attackable (Mironov 2012); OpenDP's
discrete Laplace samples exactly on integers, and its privacy maps round conservatively.
Every OpenDP error becomes a `MechanismError` with a client-safe message.

Mechanisms (design §3):

- pure ε-DP (default): the discrete Laplace on the whole integer vector of an answer's keys,
  with ℓ1 sensitivity L (the dataset's contribution bound) and scale chosen so that the
  measurement's own privacy map satisfies ``map(L) <= ε`` exactly (compared as rationals);
- zCDP (datasets ingested with ``accounting=zcdp``): the discrete Gaussian on the same vector,
  with the ℓ2 sensitivity that the per-key contribution cap gives (`l2_sensitivity`), and scale
  chosen so that OpenDP's map gives ``map(Δ2) <= ρ``. ρ composes by addition in the ledger;
  `rho_to_approx_dp` shows the (ε, δ) a total ρ implies, through OpenDP's own conversion.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from typing import Any, Protocol

import numpy as np
import opendp.prelude as dp
from opendp.accuracy import (
    accuracy_to_discrete_gaussian_scale,
    accuracy_to_discrete_laplacian_scale,
    discrete_gaussian_scale_to_accuracy,
    discrete_laplacian_scale_to_accuracy,
)

from dpflows.budget import Epsilon, PrivacyLoss, Rho
from dpflows.errors import InvalidInput

dp.enable_features("contrib")

DISCRETE_LAPLACE = "discrete_laplace"
DISCRETE_GAUSSIAN = "discrete_gaussian"
#: 95% coverage: the error bound is the tolerance t with P(|noise| >= t) = 1 - confidence.
DEFAULT_CONFIDENCE = 0.95


class MechanismError(InvalidInput):
    code = "mechanism_error"


def _integer_vector_space() -> tuple[dp.Domain, dp.Metric]:
    return dp.vector_domain(dp.atom_domain(T="i64")), dp.l1_distance(T="i64")


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


def _tail_beyond(scale: float, t: int) -> float:
    """P(|X| > t) for one discrete Laplace value: 2 a^(t+1) / (1 + a)."""
    a = math.exp(-1.0 / scale)
    return 2.0 * math.exp(-(t + 1) / scale) / (1.0 + a)


#: Exact convolution is used while the sum's truncated support has at most this many points.
MAX_CONVOLUTION_POINTS = 1 << 22


def sum_error_bound(scale: float, terms: int, confidence: float = DEFAULT_CONFIDENCE,
                    mechanism: str = DISCRETE_LAPLACE) -> float:
    """A bound t with P(|S| > t) ≤ 1 − confidence for S a sum of `terms` independent noises at `scale`.

    Discrete Gaussian noise: see `gaussian_sum_error_bound`. Discrete Laplace noise, as follows.

    The error of an answer derived by summing k released values (each with its own independent
    noise) is such a sum. One term: OpenDP's own accuracy figure, as for every answer. Several:
    the smallest integer t whose tail, computed by exact convolution of the pmf (via FFT,
    truncated at a per-term tail mass below 1e-13 whose total is added back), meets the level;
    for sums too long to convolve, a Chernoff bound with the exact moment generating function
    ``M(λ) = (1 − a)² / ((1 − a e^λ)(1 − a e^−λ))``, which is valid for every λ and so
    conservative on any grid of λ.
    """
    if mechanism == DISCRETE_GAUSSIAN:
        return gaussian_sum_error_bound(scale, terms, confidence)
    _check_confidence(confidence)
    if terms < 1:
        raise MechanismError(f"terms={terms} must be at least 1")
    if terms == 1:
        return error_bound(scale, confidence)
    alpha = 1.0 - confidence
    trunc = 1e-13
    support = max(1, math.ceil(scale * math.log(2.0 / trunc)))
    if terms * (2 * support) + 1 <= MAX_CONVOLUTION_POINTS:
        return float(_convolution_bound(scale, terms, alpha, support))
    return float(_chernoff_bound(scale, terms, alpha))


def _convolution_bound(scale: float, terms: int, alpha: float, support: int) -> int:
    pmf = discrete_laplace_pmf(scale, support)
    lost = terms * _tail_beyond(scale, support)  # mass dropped by truncation, added back below
    size = terms * (len(pmf) - 1) + 1
    n_fft = 1 << (size - 1).bit_length()
    dist = np.fft.irfft(np.fft.rfft(pmf, n_fft) ** terms, n_fft)[:size]
    dist = np.clip(dist, 0.0, None)
    fft_err = 1e-12 * size  # a generous allowance for FFT round-off in the summed tail
    centre = terms * support  # index of S = 0
    # tail[t] = P(|S| > t) = mass at indices < centre - t plus > centre + t.
    left = np.cumsum(dist)  # left[i] = P(S <= i - centre)
    right = np.cumsum(dist[::-1])  # right[i] = P(S >= centre - i)
    t = np.arange(0, centre + 1)
    below = np.where(centre - t - 1 >= 0, left[np.clip(centre - t - 1, 0, None)], 0.0)
    above = np.where(centre - t - 1 >= 0, right[np.clip(centre - t - 1, 0, None)], 0.0)
    tail = below + above + lost + fft_err
    ok = np.flatnonzero(tail <= alpha)
    if len(ok) == 0:
        return _chernoff_bound(scale, terms, alpha)
    return int(ok[0])


def _chernoff_bound(scale: float, terms: int, alpha: float) -> int:
    a = math.exp(-1.0 / scale)
    lam = np.linspace(0.0, 1.0 / scale, 4002)[1:-1]  # 0 < λ < −ln a

    def tail(t: int) -> float:  # P(|S| > t) <= 2 min_λ exp(−λ(t+1)) M(λ)^k
        log_m = 2 * math.log1p(-a) - np.log1p(-a * np.exp(lam)) - np.log1p(-a * np.exp(-lam))
        return float(2.0 * np.exp(np.min(-lam * (t + 1) + terms * log_m)))

    lo, hi = 0, 1
    while tail(hi) > alpha:
        hi *= 2
    while lo < hi:
        mid = (lo + hi) // 2
        if tail(mid) <= alpha:
            hi = mid
        else:
            lo = mid + 1
    return lo


def epsilon_for_error(sensitivity: int, max_error: float, confidence: float = DEFAULT_CONFIDENCE) -> Epsilon:
    """Accuracy-first: the smallest ε (in nano-units) whose noise meets `max_error` at `confidence`."""
    _check_confidence(confidence)
    if not (isinstance(max_error, int | float) and math.isfinite(max_error) and max_error > 0):
        raise InvalidInput(
            f"max_error={max_error!r} must be a finite positive number of counts, such as 10",
            field="max_error",
        )
    try:
        scale = float(accuracy_to_discrete_laplacian_scale(accuracy=float(max_error), alpha=1.0 - confidence))
    except dp.OpenDPException as exc:
        raise InvalidInput(
            f"max_error={max_error} at confidence={confidence} is not reachable: {exc.message}",
            field="max_error",
        ) from exc
    # Rounding ε up to nano-units only shrinks the scale, so the error target still holds.
    return Epsilon.from_privacy_map(float(privacy_loss(sensitivity, scale)))


def _check_confidence(confidence: float) -> None:
    if not (isinstance(confidence, int | float) and 0.5 <= confidence < 1.0):
        raise InvalidInput(
            f"confidence={confidence!r} must be in [0.5, 1), such as 0.95", field="confidence"
        )


@dataclass(frozen=True)
class NoisyRelease:
    """A noisy integer vector and the facts about how it was made."""

    values: np.ndarray
    mechanism: str
    scale: float
    sensitivity: float  # ℓ1 (an integer) for the Laplace, ℓ2 for the Gaussian
    epsilon: PrivacyLoss  # ε or ρ as the privacy map says, rounded up; <= what was asked
    error_bound_95: float


def release_counts(true_counts: np.ndarray, sensitivity: int, epsilon: Epsilon) -> NoisyRelease:
    """Add discrete Laplace noise to every key's count, zeros included (rule 5)."""
    scale = scale_for_epsilon(sensitivity, epsilon)
    measurement = _laplace(scale)
    loss = Epsilon.from_privacy_map(float(privacy_loss(sensitivity, scale)))
    if loss > epsilon:  # cannot happen after scale_for_epsilon; a guard, not a branch we expect
        raise MechanismError(f"privacy map gives {loss} above the requested epsilon={epsilon}")
    data = [int(v) for v in np.asarray(true_counts, dtype=np.int64)]
    try:
        noisy = measurement(data)
    except dp.OpenDPException as exc:
        raise MechanismError(f"noise could not be drawn: {exc.variant}") from exc
    return NoisyRelease(
        values=np.asarray(noisy, dtype=np.int64),
        mechanism=DISCRETE_LAPLACE,
        scale=scale,
        sensitivity=sensitivity,
        epsilon=epsilon,
        error_bound_95=error_bound(scale),
    )


# -- zCDP: the discrete Gaussian ------------------------------------------------------------------


def l2_sensitivity(l1_bound: int, key_cap: int) -> float:
    """The ℓ2 sensitivity of a count vector when one unit adds ≤ `l1_bound` in all and ≤ `key_cap` per key.

    max Σ v_k² subject to Σ v_k ≤ L and 0 ≤ v_k ≤ c is q·c² + r² with L = q·c + r (put c in as
    many keys as possible: the sum of squares is convex). The exact integer is then rounded *up*
    to a float, so the sensitivity handed to OpenDP is never below the truth.
    """
    if l1_bound < 1 or key_cap < 1:
        raise MechanismError(f"bounds l1={l1_bound}, per-key={key_cap} must be positive integers")
    cap = min(key_cap, l1_bound)
    q, r = divmod(l1_bound, cap)
    squared = q * cap * cap + r * r
    value = math.sqrt(squared)
    while Fraction(value) ** 2 < squared:
        value = math.nextafter(value, math.inf)
    return value


@lru_cache(maxsize=4096)
def _gaussian(scale: float) -> dp.Measurement:
    try:
        return dp.m.make_gaussian(dp.vector_domain(dp.atom_domain(T="i64")), dp.l2_distance(T="f64"), scale=scale)
    except dp.OpenDPException as exc:
        raise MechanismError(f"noise scale {scale!r} is not usable: {exc.message}") from exc


def rho_loss(l2: float, scale: float) -> Fraction:
    """ρ of the discrete Gaussian at this scale for neighbours at ℓ2 distance `l2`, per OpenDP."""
    try:
        return Fraction(_gaussian(scale).map(l2))
    except dp.OpenDPException as exc:
        raise MechanismError(f"privacy map failed for l2 sensitivity {l2}: {exc.message}") from exc


def scale_for_rho(l2: float, rho: Rho) -> float:
    """The smallest float scale whose OpenDP privacy map gives at most ρ for ℓ2 sensitivity `l2`."""
    if not l2 > 0:
        raise MechanismError(f"l2 sensitivity {l2} must be positive")
    if rho.nanos <= 0:
        raise InvalidInput("rho=0 releases nothing useful; send a positive rho", field="rho")
    target = rho.as_fraction()
    scale = l2 / math.sqrt(2.0 * float(target))  # ρ = Δ2² / (2σ²)
    for _ in range(64):
        if rho_loss(l2, scale) <= target:
            return scale
        scale = math.nextafter(scale, math.inf)
    raise MechanismError(f"no noise scale meets rho={rho} for l2 sensitivity {l2}")


def gaussian_error_bound(scale: float, confidence: float = DEFAULT_CONFIDENCE) -> float:
    """Per-value absolute error tolerance of the discrete Gaussian at `confidence`, per OpenDP."""
    _check_confidence(confidence)
    try:
        return float(discrete_gaussian_scale_to_accuracy(scale=scale, alpha=1.0 - confidence))
    except dp.OpenDPException as exc:
        raise MechanismError(f"accuracy for scale {scale!r} is not computable: {exc.message}") from exc


def gaussian_sum_error_bound(scale: float, terms: int, confidence: float = DEFAULT_CONFIDENCE) -> float:
    """A bound on the sum of `terms` independent discrete Gaussians(scale) at `confidence`.

    The discrete Gaussian with scale σ is σ²-subgaussian (Canonne, Kamath and Steinke 2020,
    Prop. 5), so a sum of k is kσ²-subgaussian and P(|S| ≥ t) ≤ 2·exp(−t²/(2kσ²)): the bound is
    σ·sqrt(2k·ln(2/α)), rounded up to an integer. One term: OpenDP's own figure.
    """
    _check_confidence(confidence)
    if terms < 1:
        raise MechanismError(f"terms={terms} must be at least 1")
    if terms == 1:
        return gaussian_error_bound(scale, confidence)
    return float(math.ceil(scale * math.sqrt(2.0 * terms * math.log(2.0 / (1.0 - confidence)))))


def rho_for_error(l2: float, max_error: float, confidence: float = DEFAULT_CONFIDENCE) -> Rho:
    """Accuracy-first under zCDP: the smallest ρ (nano-units) whose noise meets `max_error`."""
    _check_confidence(confidence)
    if not (isinstance(max_error, int | float) and math.isfinite(max_error) and max_error > 0):
        raise InvalidInput(
            f"max_error={max_error!r} must be a finite positive number of counts, such as 10",
            field="max_error",
        )
    try:
        scale = float(accuracy_to_discrete_gaussian_scale(accuracy=float(max_error), alpha=1.0 - confidence))
    except dp.OpenDPException as exc:
        raise InvalidInput(
            f"max_error={max_error} at confidence={confidence} is not reachable: {exc.message}",
            field="max_error",
        ) from exc
    return Rho.from_privacy_map(rho_loss(l2, scale))


@lru_cache(maxsize=1024)
def _approx_dp_of_rho(rho_nanos: int, delta: float) -> float:
    # A scalar Gaussian at scale 1 has ρ = d²/2; its map at d = sqrt(2ρ), rounded up, is ≥ ρ,
    # and OpenDP's zCDP → (ε, δ) conversion of that measurement is the figure we show.
    rho = Fraction(rho_nanos, 1_000_000_000)
    d_in = math.sqrt(2.0 * float(rho))
    while Fraction(d_in) ** 2 < 2 * rho:
        d_in = math.nextafter(d_in, math.inf)
    try:
        meas = dp.m.make_gaussian(dp.atom_domain(T=float, nan=False), dp.absolute_distance(T=float), scale=1.0)
        return float(dp.c.make_zCDP_to_approxDP(meas).map(d_in).epsilon(delta))
    except dp.OpenDPException as exc:
        raise MechanismError(f"rho={rho_nanos / 1e9:g} cannot be converted at delta={delta}: {exc.message}") from exc


def rho_to_approx_dp(rho: PrivacyLoss, delta: float) -> float:
    """The ε such that a total ρ-zCDP is (ε, δ)-DP, by OpenDP's conversion; for display, never accounting."""
    if not 0 < delta < 1:
        raise InvalidInput(f"delta={delta!r} must be in (0, 1), such as 1e-8", field="delta")
    if rho.nanos == 0:
        return 0.0
    return _approx_dp_of_rho(rho.nanos, delta)


def release_counts_gaussian(true_counts: np.ndarray, l2: float, rho: Rho) -> NoisyRelease:
    """Add discrete Gaussian noise to every key's count, zeros included (rule 5)."""
    scale = scale_for_rho(l2, rho)
    loss = Rho.from_privacy_map(rho_loss(l2, scale))
    if loss > rho:  # cannot happen after scale_for_rho; a guard
        raise MechanismError(f"privacy map gives {loss} above the requested rho={rho}")
    data = [int(v) for v in np.asarray(true_counts, dtype=np.int64)]
    try:
        noisy = _gaussian(scale)(data)
    except dp.OpenDPException as exc:
        raise MechanismError(f"noise could not be drawn: {exc.variant}") from exc
    return NoisyRelease(
        values=np.asarray(noisy, dtype=np.int64),
        mechanism=DISCRETE_GAUSSIAN,
        scale=scale,
        sensitivity=l2,
        epsilon=rho,
        error_bound_95=gaussian_error_bound(scale),
    )


def noise_error_bound(mechanism: str, scale: float, confidence: float = DEFAULT_CONFIDENCE) -> float:
    """The per-value error bound of either mechanism at `confidence`."""
    if mechanism == DISCRETE_GAUSSIAN:
        return gaussian_error_bound(scale, confidence)
    return error_bound(scale, confidence)


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


# -- one protocol, one implementation per noise family --------------------------------------------


class NoiseMechanism(Protocol):
    """A noise family as the accountings use it (dpflows.accounting): calibrate, release, bound."""

    name: str

    def scale(self, sensitivity: float, loss: PrivacyLoss) -> float: ...
    def release(self, true_counts: np.ndarray, sensitivity: float, loss: PrivacyLoss) -> NoisyRelease: ...
    def error_bound(self, scale: float, confidence: float = DEFAULT_CONFIDENCE) -> float: ...
    def sum_error_bound(self, scale: float, terms: int, confidence: float = DEFAULT_CONFIDENCE) -> float: ...
    def loss_for_error(self, sensitivity: float, max_error: float,
                       confidence: float = DEFAULT_CONFIDENCE) -> PrivacyLoss: ...
    def parse_sensitivity(self, stored: Any) -> float: ...


class DiscreteLaplace:
    """Pure ε-DP: ℓ1 sensitivity L (an integer), scale with OpenDP's map(L) ≤ ε."""

    name = DISCRETE_LAPLACE

    def scale(self, sensitivity: float, loss: PrivacyLoss) -> float:
        return scale_for_epsilon(int(sensitivity), Epsilon(loss.nanos))

    def release(self, true_counts: np.ndarray, sensitivity: float, loss: PrivacyLoss) -> NoisyRelease:
        return release_counts(true_counts, int(sensitivity), Epsilon(loss.nanos))

    def error_bound(self, scale: float, confidence: float = DEFAULT_CONFIDENCE) -> float:
        return error_bound(scale, confidence)

    def sum_error_bound(self, scale: float, terms: int, confidence: float = DEFAULT_CONFIDENCE) -> float:
        return sum_error_bound(scale, terms, confidence, DISCRETE_LAPLACE)

    def loss_for_error(self, sensitivity: float, max_error: float,
                       confidence: float = DEFAULT_CONFIDENCE) -> PrivacyLoss:
        return epsilon_for_error(int(sensitivity), max_error, confidence)

    def parse_sensitivity(self, stored: Any) -> float:
        return int(stored)


class DiscreteGaussian:
    """ρ-zCDP: ℓ2 sensitivity (a float rounded up), scale with OpenDP's map(Δ2) ≤ ρ."""

    name = DISCRETE_GAUSSIAN

    def scale(self, sensitivity: float, loss: PrivacyLoss) -> float:
        return scale_for_rho(float(sensitivity), Rho(loss.nanos))

    def release(self, true_counts: np.ndarray, sensitivity: float, loss: PrivacyLoss) -> NoisyRelease:
        return release_counts_gaussian(true_counts, float(sensitivity), Rho(loss.nanos))

    def error_bound(self, scale: float, confidence: float = DEFAULT_CONFIDENCE) -> float:
        return gaussian_error_bound(scale, confidence)

    def sum_error_bound(self, scale: float, terms: int, confidence: float = DEFAULT_CONFIDENCE) -> float:
        return gaussian_sum_error_bound(scale, terms, confidence)

    def loss_for_error(self, sensitivity: float, max_error: float,
                       confidence: float = DEFAULT_CONFIDENCE) -> PrivacyLoss:
        return rho_for_error(float(sensitivity), max_error, confidence)

    def parse_sensitivity(self, stored: Any) -> float:
        return float(stored)


MECHANISMS: dict[str, NoiseMechanism] = {m.name: m for m in (DiscreteLaplace(), DiscreteGaussian())}


def mechanism_named(name: str) -> NoiseMechanism:
    """The noise family a stored answer names."""
    try:
        return MECHANISMS[name]
    except KeyError:
        raise MechanismError(f"mechanism={name!r} is not one of {list(MECHANISMS)}") from None
