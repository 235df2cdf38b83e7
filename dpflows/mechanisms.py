"""The one module that imports OpenDP: every noise draw and every privacy-loss figure.

Why OpenDP only: floating-point noise samplers are attackable (Mironov 2012); OpenDP's
discrete Laplace samples exactly on integers, and its privacy maps round conservatively.
Every OpenDP error becomes a `MechanismError` with a client-safe message.

Mechanism (design §3): the discrete Laplace on the whole integer vector of an answer's keys,
with ℓ1 sensitivity L (the dataset's contribution bound) and scale chosen so that the
measurement's own privacy map satisfies ``map(L) <= ε`` exactly (compared as rationals).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache

import numpy as np
import opendp.prelude as dp
from opendp.accuracy import accuracy_to_discrete_laplacian_scale, discrete_laplacian_scale_to_accuracy

from dpflows.budget import Epsilon
from dpflows.errors import InvalidInput

dp.enable_features("contrib")

DISCRETE_LAPLACE = "discrete_laplace"
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
    sensitivity: int
    epsilon: Epsilon  # what OpenDP's privacy map says, rounded up; <= the requested ε
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
