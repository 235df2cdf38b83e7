"""Issue 17, item 3: a charge converted into its population's measure by OpenDP, rounded up, or refused.

Pure ε → ρ is OpenDP's `make_pureDP_to_zCDP` (ε-DP is ε²/2-zCDP), never below ε²/2 and at most a
nano-unit or two above it (OpenDP's float rounds up, then nanos round up); ρ → pure ε does not exist.
"""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dpflows.accounting import accounting, common_measure
from dpflows.budget import NANOS_PER_UNIT, Epsilon, Rho
from dpflows.errors import Conflict
from dpflows.mechanisms import epsilon_as_rho, largest_epsilon_within

PURE, ZCDP = accounting("pure_dp"), accounting("zcdp")


@pytest.mark.parametrize(("epsilon", "rho"), [("0.5", "0.125"), ("1", "0.5"), ("2", "2"), ("0.25", "0.03125"),
                                              ("0", "0")])
def test_pure_epsilon_converts_to_half_its_square(epsilon: str, rho: str) -> None:
    assert PURE.convert(Epsilon.parse(epsilon), "rho") == Rho.parse(rho)
    assert PURE.convert(Epsilon.parse(epsilon), "epsilon") == Epsilon.parse(epsilon)  # its own measure: itself


@given(st.integers(1, 44_000_000_000))  # up to ε 44: ρ below the hard limit of 1000
@settings(max_examples=300, deadline=None)
def test_the_conversion_never_rounds_down_and_its_inverse_fits(nanos: int) -> None:
    epsilon = Epsilon(nanos)
    rho = epsilon_as_rho(epsilon)
    exact = Fraction(nanos, NANOS_PER_UNIT) ** 2 / 2
    assert exact <= rho.as_fraction() <= exact + Fraction(2, NANOS_PER_UNIT)
    back = largest_epsilon_within(rho)
    assert back >= epsilon and epsilon_as_rho(back) <= rho  # the largest ε whose conversion fits
    assert epsilon_as_rho(Epsilon(back.nanos + 1)) > rho


def test_rho_never_converts_to_pure_epsilon() -> None:
    assert not ZCDP.converts_to("epsilon") and PURE.converts_to("rho")
    with pytest.raises(Conflict, match="cannot be converted into epsilon: OpenDP has no such conversion"):
        ZCDP.convert(Rho.parse("0.1"), "epsilon")
    assert common_measure([PURE]) == "epsilon" and common_measure([ZCDP]) == "rho"
    assert common_measure([PURE, ZCDP]) == common_measure([ZCDP, PURE]) == "rho"
