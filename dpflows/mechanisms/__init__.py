"""The one package that imports OpenDP: every noise draw and every privacy-loss figure.

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
    add_noise,
)
from dpflows.mechanisms.families import (
    MECHANISMS,
    DiscreteGaussian,
    DiscreteLaplace,
    NoiseMechanism,
    _draw_zeros,
    configure_noise_pool,
    mechanism_named,
    noise_error_bound,
    start_noise_pool,
    stock_noise,
)
from dpflows.mechanisms.gaussian import (
    _SCALE_BISECTION_STEPS,
    _STANDARD_NORMAL,
    _approx_dp_of_rho,
    _gaussian,
    _gaussian_tail_point,
    gaussian_error_bound,
    gaussian_sum_error_bound,
    l2_sensitivity,
    release_counts_gaussian,
    rho_for_error,
    rho_loss,
    rho_to_approx_dp,
    scale_for_rho,
)
from dpflows.mechanisms.laplace import (
    MAX_CONVOLUTION_POINTS,
    _chernoff_bound,
    _convolution_bound,
    _folded_laplace_pmf,
    _laplace,
    discrete_laplace_pmf,
    epsilon_as_rho,
    epsilon_for_error,
    error_bound,
    largest_epsilon_within,
    privacy_loss,
    pure_dp_as_rho,
    release_contribution_histograms,
    release_counts,
    scale_for_epsilon,
    sum_error_bound,
)

__all__ = [
    "DEFAULT_CONFIDENCE",
    "DISCRETE_GAUSSIAN",
    "DISCRETE_LAPLACE",
    "MAX_CONVOLUTION_POINTS",
    "MECHANISMS",
    "_SCALE_BISECTION_STEPS",
    "_STANDARD_NORMAL",
    "DiscreteGaussian",
    "DiscreteLaplace",
    "MechanismError",
    "NoiseMechanism",
    "NoisyRelease",
    "_approx_dp_of_rho",
    "_below_floor",
    "_check_confidence",
    "_check_max_error",
    "_chernoff_bound",
    "_convolution_bound",
    "_draw_zeros",
    "_folded_laplace_pmf",
    "_gaussian",
    "_gaussian_tail_point",
    "_integer_vector_space",
    "_laplace",
    "_noised",
    "add_noise",
    "configure_noise_pool",
    "discrete_laplace_pmf",
    "epsilon_as_rho",
    "epsilon_for_error",
    "error_bound",
    "gaussian_error_bound",
    "gaussian_sum_error_bound",
    "l2_sensitivity",
    "largest_epsilon_within",
    "mechanism_named",
    "noise_error_bound",
    "privacy_loss",
    "pure_dp_as_rho",
    "release_contribution_histograms",
    "release_counts",
    "release_counts_gaussian",
    "rho_for_error",
    "rho_loss",
    "rho_to_approx_dp",
    "scale_for_epsilon",
    "scale_for_rho",
    "start_noise_pool",
    "stock_noise",
    "sum_error_bound",
]
