"""The OpenDP wrapper: exact privacy maps, accuracy-first pricing and error bounds."""

from __future__ import annotations

import ast
import math
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from dpflows.budget import Epsilon
from dpflows.errors import InvalidInput
from dpflows.mechanisms import (
    epsilon_for_error,
    error_bound,
    privacy_loss,
    release_counts,
    scale_for_epsilon,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("sensitivity", "epsilon", "scale"),
    [(1, "1", 1.0), (20, "1", 20.0), (20, "0.5", 40.0), (100, "2", 50.0), (4, "0.25", 16.0)],
)
def test_scale_table_and_exact_privacy_map(sensitivity: int, epsilon: str, scale: float) -> None:
    eps = Epsilon.parse(epsilon)
    assert scale_for_epsilon(sensitivity, eps) == scale
    assert privacy_loss(sensitivity, scale) == eps.as_fraction()


def test_scale_steps_up_when_the_float_map_would_exceed_epsilon() -> None:
    """5/0.1 = 50.0, but map(5) at scale 50.0 is the float 0.1, which is above 1/10 as a rational."""
    eps = Epsilon.parse("0.1")
    assert privacy_loss(5, 50.0) > eps.as_fraction()
    scale = scale_for_epsilon(5, eps)
    assert scale == math.nextafter(50.0, math.inf)
    assert privacy_loss(5, scale) <= eps.as_fraction()


@pytest.mark.parametrize(("sensitivity", "epsilon"), [(3, "0.7"), (7, "0.3"), (20, "0.123456789"), (13, "1.1")])
def test_privacy_map_never_exceeds_epsilon_when_division_is_inexact(sensitivity: int, epsilon: str) -> None:
    eps = Epsilon.parse(epsilon)
    scale = scale_for_epsilon(sensitivity, eps)
    assert privacy_loss(sensitivity, scale) <= eps.as_fraction()
    # and the scale is tight: within a few ulps of L/ε
    assert abs(Fraction(scale) - Fraction(sensitivity) / eps.as_fraction()) < Fraction(1, 10**9)


def test_release_keeps_shape_and_reports_its_facts() -> None:
    true = np.zeros(500, dtype=np.int64)
    out = release_counts(true, sensitivity=10, epsilon=Epsilon.parse("0.5"))
    assert out.values.shape == (500,) and out.values.dtype == np.int64
    assert out.scale == 20.0 and out.sensitivity == 10 and out.epsilon == Epsilon.parse("0.5")
    assert out.error_bound_95 == pytest.approx(error_bound(20.0))
    assert np.any(out.values != 0)  # P(all 500 zero) = (tanh(1/40))^500 ≈ 0


def test_accuracy_first_derives_the_smallest_epsilon_that_meets_the_target() -> None:
    eps = epsilon_for_error(sensitivity=20, max_error=100.0)
    scale = scale_for_epsilon(20, eps)
    assert error_bound(scale) <= 100.0
    smaller = Epsilon(eps.nanos - 1000)
    assert error_bound(scale_for_epsilon(20, smaller)) > 100.0 - 1e-6


@pytest.mark.parametrize("bad", [0.0, -5.0, float("nan"), float("inf")])
def test_accuracy_first_rejects_bad_targets(bad: float) -> None:
    with pytest.raises(InvalidInput, match="max_error"):
        epsilon_for_error(20, bad)


def test_error_bound_covers_95_percent_of_draws() -> None:
    """50,000 draws; coverage should be ≥ 0.95. Binomial sd at p=0.95 is 0.001, so 0.94 is 10 sd away."""
    out = release_counts(np.zeros(50_000, dtype=np.int64), sensitivity=5, epsilon=Epsilon.parse("1"))
    coverage = float(np.mean(np.abs(out.values) < out.error_bound_95))
    assert 0.94 <= coverage <= 0.96 + 0.01


def test_only_mechanisms_imports_opendp() -> None:
    offenders = []
    for path in [*(ROOT / "dpflows").rglob("*.py"), *(ROOT / "api").rglob("*.py")]:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            in_mechanisms = path.parent == ROOT / "dpflows" / "mechanisms"  # the one package allowed (design §8)
            if any(n == "opendp" or n.startswith("opendp.") for n in names) and not in_mechanisms:
                offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []


def test_library_never_imports_http_layer() -> None:
    for path in (ROOT / "dpflows").rglob("*.py"):
        text = path.read_text()
        assert "import flask" not in text and "from flask" not in text and "from api" not in text, path
