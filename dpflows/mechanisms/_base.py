"""What every noise family shares: names, the error type, input checks, the release record, adding noise."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import opendp.prelude as dp

from dpflows import noise_pool
from dpflows.budget import PrivacyLoss
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


def _check_confidence(confidence: float) -> None:
    if not (isinstance(confidence, int | float) and 0.5 <= confidence < 1.0):
        raise InvalidInput(
            f"confidence={confidence!r} must be in [0.5, 1), such as 0.95", field="confidence"
        )


def _check_max_error(max_error: float) -> None:
    if not (isinstance(max_error, int | float) and math.isfinite(max_error) and max_error > 0):
        raise InvalidInput(
            f"max_error={max_error!r} must be a finite positive number of counts, such as 10",
            field="max_error",
        )


def _below_floor(max_error: float, loss: PrivacyLoss, floor_error: float, confidence: float) -> InvalidInput:
    """The refusal of a max_error that the smallest loss the service charges already meets."""
    return InvalidInput(
        f"max_error={max_error:g} is met by the smallest {loss.unit} this service charges ({loss}), whose "
        f"error bound at confidence {confidence:g} is {floor_error:g}; send {loss.unit}={loss} for that "
        f"accuracy, or a max_error below {floor_error:g}",
        field="max_error",
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
