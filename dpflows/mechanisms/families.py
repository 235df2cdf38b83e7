"""One protocol, one implementation per noise family; and the pool of pre-drawn noise they share."""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from dpflows import noise_pool
from dpflows.budget import Epsilon, PrivacyLoss, Rho
from dpflows.mechanisms._base import (
    DEFAULT_CONFIDENCE,
    DISCRETE_GAUSSIAN,
    DISCRETE_LAPLACE,
    MechanismError,
    NoisyRelease,
)
from dpflows.mechanisms.gaussian import (
    _gaussian,
    gaussian_error_bound,
    gaussian_sum_error_bound,
    release_counts_gaussian,
    rho_for_error,
    scale_for_rho,
)
from dpflows.mechanisms.laplace import (
    _laplace,
    epsilon_for_error,
    error_bound,
    release_counts,
    scale_for_epsilon,
    sum_error_bound,
)
from dpflows.mechanisms.threshold import LaplaceThreshold


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


MECHANISMS: dict[str, NoiseMechanism] = {m.name: m for m in (DiscreteLaplace(), DiscreteGaussian(),
                                                              LaplaceThreshold())}


def mechanism_named(name: str) -> NoiseMechanism:
    """The noise family a stored answer names."""
    try:
        return MECHANISMS[name]
    except KeyError:
        raise MechanismError(f"mechanism={name!r} is not one of {list(MECHANISMS)}") from None


def noise_error_bound(mechanism: str, scale: float, confidence: float = DEFAULT_CONFIDENCE) -> float:
    """The per-value error bound of either mechanism at `confidence`."""
    if mechanism == DISCRETE_GAUSSIAN:
        return gaussian_error_bound(scale, confidence)
    return error_bound(scale, confidence)


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
