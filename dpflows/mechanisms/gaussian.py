"""ρ-zCDP: OpenDP's discrete Gaussian, its privacy map, closed-form error bounds, (ε, δ) display."""

from __future__ import annotations

import math
from fractions import Fraction
from functools import lru_cache
from statistics import NormalDist

import numpy as np
import opendp.prelude as dp

from dpflows.budget import PrivacyLoss, Rho
from dpflows.errors import InvalidInput
from dpflows.mechanisms._base import (
    DEFAULT_CONFIDENCE,
    DISCRETE_GAUSSIAN,
    MechanismError,
    NoisyRelease,
    _below_floor,
    _check_confidence,
    _check_max_error,
    _noised,
)


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
