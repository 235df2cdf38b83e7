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

Bounded cost (issue 18): every figure here takes time independent of the numbers a client
sends. The discrete Laplace's error bound and accuracy-to-scale search are OpenDP's (closed
form; a float bisection of at most ~1,100 O(1) steps). The discrete Gaussian's are a closed
form proved below (`gaussian_error_bound`), never less than OpenDP's own figure, whose helper
sums the pmf term by term (time ∝ scale, and ∝ max_error × 64 for the inverse: 6 s at
max_error 1e6, unbounded at 1e14). Sums of noises use a convolution over a window whose size a
Chernoff bound fixes (∝ √k·scale, capped at ~17 ms), else that Chernoff bound. Below a floor on the loss
(`dpflows.service.Policy.min_epsilon`, `min_rho`) nothing is priced at all.

Pre-drawn noise (issue 16): a release may take its noise from this process's pool
(dpflows.noise_pool), which a background thread fills by calling the very same measurement
(`_laplace(scale)`, `_gaussian(scale)`) on vectors of zeros; the scale, the privacy-map check
and the loss charged are those of the fresh path, and the addition to the counts is
overflow-checked (`add_noise`). A short stock means drawing now, as before.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from statistics import NormalDist
from typing import Any, Protocol

import numpy as np
import opendp.prelude as dp
from opendp.accuracy import (
    accuracy_to_discrete_laplacian_scale,
    discrete_laplacian_scale_to_accuracy,
)

from dpflows import noise_pool
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


def _below_floor(max_error: float, loss: PrivacyLoss, floor_error: float, confidence: float) -> InvalidInput:
    """The refusal of a max_error that the smallest loss the service charges already meets."""
    return InvalidInput(
        f"max_error={max_error:g} is met by the smallest {loss.unit} this service charges ({loss}), whose "
        f"error bound at confidence {confidence:g} is {floor_error:g}; send {loss.unit}={loss} for that "
        f"accuracy, or a max_error below {floor_error:g}",
        field="max_error",
    )


def _check_max_error(max_error: float) -> None:
    if not (isinstance(max_error, int | float) and math.isfinite(max_error) and max_error > 0):
        raise InvalidInput(
            f"max_error={max_error!r} must be a finite positive number of counts, such as 10",
            field="max_error",
        )


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


def _check_confidence(confidence: float) -> None:
    if not (isinstance(confidence, int | float) and 0.5 <= confidence < 1.0):
        raise InvalidInput(
            f"confidence={confidence!r} must be in [0.5, 1), such as 0.95", field="confidence"
        )


# -- the noise itself: drawn now, or pre-drawn by the same measurement (dpflows.noise_pool) ---------


def _noised(true_counts: np.ndarray, mechanism: str, scale: float, measurement: dp.Measurement) -> np.ndarray:
    """`measurement` applied to the counts: the pool's pre-drawn output of that very measurement on
    zeros, added with an overflow check, when the stock holds enough; else drawn now, all of it."""
    counts = np.asarray(true_counts, dtype=np.int64)
    noise = noise_pool.take(mechanism, scale, len(counts))
    if noise is not None:
        return add_noise(counts, noise)
    try:
        noisy = measurement(counts.tolist())
    except dp.OpenDPException as exc:
        raise MechanismError(f"noise could not be drawn: {exc.variant}") from exc
    return np.asarray(noisy, dtype=np.int64)


def add_noise(counts: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """counts + noise in int64, refused (never wrapped) where a sum leaves the 64-bit range."""
    counts = np.asarray(counts, dtype=np.int64)
    if counts.shape != noise.shape:
        raise MechanismError("noise and counts differ in length")
    out = counts + noise  # numpy wraps silently on overflow: checked below
    # a sum overflowed iff both operands have the same sign and the result the other one
    if bool((((counts ^ out) & (noise ^ out)) < 0).any()):
        raise MechanismError("a noisy count does not fit in 64 bits; no answer was released")
    return out


def _draw_zeros(mechanism: str, scale: float, n: int) -> np.ndarray:
    """n draws of the measurement a release at this scale uses, applied to n zeros (the pool's source)."""
    measurement = _gaussian(scale) if mechanism == DISCRETE_GAUSSIAN else _laplace(scale)
    return np.asarray(measurement([0] * n), dtype=np.int64)


def configure_noise_pool(values: int) -> None:
    """Hold at most `values` pre-drawn values in this process (0: none; every draw at request time)."""
    noise_pool.configure(_draw_zeros, values)


def start_noise_pool() -> noise_pool.NoisePool | None:
    """This process's pool, started now (its thread refills the declared stocks); None if disabled."""
    return noise_pool.current()


def stock_noise(mechanism: str, sensitivities: set[float], losses: tuple[PrivacyLoss, ...]) -> None:
    """Keep pre-drawn noise for these public sensitivities and preset losses of one mechanism."""
    calibrate = mechanism_named(mechanism).scale
    noise_pool.declare({(mechanism, calibrate(s, loss)) for s in sensitivities for loss in losses})


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
    return NoisyRelease(
        values=_noised(true_counts, DISCRETE_LAPLACE, scale, measurement),
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


_STANDARD_NORMAL = NormalDist()


def _gaussian_tail_point(scale: float, alpha: float) -> int:
    """The smallest integer t ≥ 1 for which a proof below gives P(|X| ≥ t) ≤ alpha, X ~ N_Z(0, σ²), σ = scale.

    With f(x) = exp(−x²/2σ²), P(|X| ≥ t) = 2·Σ_{x≥t} f(x) / Z and Z = Σ_{x∈ℤ} f(x) ≥ σ√(2π)
    (Poisson summation: Z = σ√(2π)·Σ_k exp(−2π²σ²k²), every term positive). Q is the standard
    normal upper tail, φ its density.

    (A) t − ½ ≥ σ: f is convex on [σ, ∞), so f(x) ≤ ∫_{x−½}^{x+½} f (Hermite–Hadamard) and
        Σ_{x≥t} f(x) ≤ ∫_{t−½}^∞ f = σ√(2π)·Q((t−½)/σ): P(|X| ≥ t) ≤ 2Q((t−½)/σ).
    (B) any t ≥ 0: f decreases on [0, ∞), so Σ_{x≥t} f(x) ≤ f(t) + ∫_t^∞ f and
        P(|X| ≥ t) ≤ 2Q(t/σ) + 2φ(t/σ)/σ.

    t is the smaller of the least t meeting (A) (closed form, then checked) and the least meeting
    (B) (an integer bisection below it): O(1) work for any σ. Both are non-decreasing in σ, so a
    smaller scale never gets a larger bound. Each check keeps a 1e-9 relative margin for the
    rounding of erfc. (A) is within one count of the exact discrete quantile (a continuity
    correction); (B) helps only at confidence below 0.68, where (A) needs t − ½ ≥ σ.
    """
    def holds_a(t: int) -> bool:
        return t - 0.5 >= scale and math.erfc((t - 0.5) / (scale * math.sqrt(2.0))) * (1.0 + 1e-9) <= alpha

    def holds_b(t: int) -> bool:
        u = t / scale
        bound = math.erfc(u / math.sqrt(2.0)) + 2.0 * math.exp(-0.5 * u * u) / (scale * math.sqrt(2.0 * math.pi))
        return bound * (1.0 + 1e-9) <= alpha

    z = max(_STANDARD_NORMAL.inv_cdf(1.0 - alpha / 2.0), 1.0)
    best = max(1, math.ceil(z * scale + 0.5))
    for _ in range(64):
        if holds_a(best):
            break
        best += 1
    else:  # never expected; the subgaussian bound 2·exp(−t²/2σ²) ≤ alpha (CKS 2020) still holds
        best = math.ceil(scale * math.sqrt(2.0 * math.log(2.0 / alpha)))
    lo, hi = 1, best  # least t in [1, best) meeting (B), if any
    while lo < hi:
        mid = (lo + hi) // 2
        if holds_b(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo


def gaussian_error_bound(scale: float, confidence: float = DEFAULT_CONFIDENCE) -> float:
    """Per-value absolute error bound t of the discrete Gaussian: P(|noise| ≥ t) ≤ 1 − confidence.

    The closed form of `_gaussian_tail_point`, in constant time. OpenDP's helper
    (`discrete_gaussian_scale_to_accuracy`) gives the same meaning by summing the pmf up to t,
    which takes time ∝ scale (0.25 s at scale 1e6, and unbounded as ρ shrinks); the closed form is
    never below OpenDP's figure and at most one count above it (tests/test_zcdp.py).
    """
    _check_confidence(confidence)
    if not (math.isfinite(scale) and scale > 0):
        raise MechanismError(f"accuracy for scale {scale!r} is not computable: the scale must be positive")
    return float(_gaussian_tail_point(scale, 1.0 - confidence))


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


#: Steps of the bisection over the scale in `rho_for_error`: the bracket shrinks by 2^-100.
_SCALE_BISECTION_STEPS = 100


def rho_for_error(l2: float, max_error: float, confidence: float = DEFAULT_CONFIDENCE, *,
                  floor: Rho | None = None) -> Rho:
    """Accuracy-first under zCDP: the smallest ρ (nano-units, at least `floor`) whose noise meets `max_error`.

    A bisection with a fixed number of steps over the scale, bracketed by 0 and the scale at ρ =
    `floor` (1 nano-ρ when none), for the largest scale whose error bound (`gaussian_error_bound`,
    constant time) is at most max_error; then OpenDP's privacy map of that scale, rounded up. A
    max_error that ρ = `floor` already meets is refused, naming that ρ and its error. Bounds are
    whole counts (P(|X| ≥ 1) is the least that can be promised), so max_error below 1 is refused.
    """
    _check_confidence(confidence)
    _check_max_error(max_error)
    alpha = 1.0 - confidence
    if max_error < 1:
        raise InvalidInput(
            f"max_error={max_error:g} is below one count: discrete noise is never bounded more tightly; "
            "ask for a max_error of at least 1",
            field="max_error",
        )
    target = math.floor(max_error)
    lowest = floor if floor is not None else Rho(1)
    top = scale_for_rho(l2, lowest)
    at_top = _gaussian_tail_point(top, alpha)
    if at_top <= target:
        raise _below_floor(max_error, lowest, float(at_top), confidence)
    lo, hi = 0.0, top  # the bound at lo (→ 0) is 1 ≤ target; at hi it exceeds target
    for _ in range(_SCALE_BISECTION_STEPS):
        mid = lo + (hi - lo) / 2.0
        if _gaussian_tail_point(mid, alpha) <= target:
            lo = mid
        else:
            hi = mid
    if not lo > 0:
        raise MechanismError(f"no noise scale meets max_error={max_error:g} for l2 sensitivity {l2}")
    rho = Rho.from_privacy_map(rho_loss(l2, lo))
    # ρ rounded up gives a scale no larger than lo, and the bound is monotone in the scale.
    if _gaussian_tail_point(scale_for_rho(l2, rho), alpha) > target:
        raise MechanismError(f"the scale for rho={rho} misses max_error={max_error:g}; report this")
    return rho


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
    return NoisyRelease(
        values=_noised(true_counts, DISCRETE_GAUSSIAN, scale, _gaussian(scale)),
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
    def loss_for_error(self, sensitivity: float, max_error: float, confidence: float = DEFAULT_CONFIDENCE,
                       floor: PrivacyLoss | None = None) -> PrivacyLoss: ...
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

    def loss_for_error(self, sensitivity: float, max_error: float, confidence: float = DEFAULT_CONFIDENCE,
                       floor: PrivacyLoss | None = None) -> PrivacyLoss:
        return epsilon_for_error(int(sensitivity), max_error, confidence,
                                 floor=None if floor is None else Epsilon(floor.nanos))

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

    def loss_for_error(self, sensitivity: float, max_error: float, confidence: float = DEFAULT_CONFIDENCE,
                       floor: PrivacyLoss | None = None) -> PrivacyLoss:
        return rho_for_error(float(sensitivity), max_error, confidence,
                             floor=None if floor is None else Rho(floor.nanos))

    def parse_sensitivity(self, stored: Any) -> float:
        return float(stored)


MECHANISMS: dict[str, NoiseMechanism] = {m.name: m for m in (DiscreteLaplace(), DiscreteGaussian())}


def mechanism_named(name: str) -> NoiseMechanism:
    """The noise family a stored answer names."""
    try:
        return MECHANISMS[name]
    except KeyError:
        raise MechanismError(f"mechanism={name!r} is not one of {list(MECHANISMS)}") from None
