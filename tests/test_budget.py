"""Exact ε values: parsing rejects what is not a finite non-negative number; conversions round up."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest

from dpflows.budget import NANOS_PER_UNIT, Epsilon
from dpflows.errors import InvalidInput


@pytest.mark.parametrize(
    ("value", "nanos"),
    [("1", NANOS_PER_UNIT), (0.1, 100_000_000), ("0.000000001", 1), ("0.0000000001", 1), (2, 2 * NANOS_PER_UNIT),
     ("1.000000001", NANOS_PER_UNIT + 1), (Fraction(1, 3), 333_333_334), (0, 0)],
)
def test_parse_rounds_up_to_nano_units(value: object, nanos: int) -> None:
    assert Epsilon.parse(value).nanos == nanos  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, "nan", "inf", "-0.1", -1, "abc", True, None, [1]])
def test_parse_rejects_non_numbers_and_negatives(value: object) -> None:
    with pytest.raises(InvalidInput) as info:
        Epsilon.parse(value)  # type: ignore[arg-type]
    assert "epsilon=" in info.value.message
    assert info.value.field == "epsilon"


def test_hard_limit() -> None:
    with pytest.raises(InvalidInput, match="hard limit"):
        Epsilon.parse("1000.000000001")


def test_privacy_map_output_rounds_up() -> None:
    just_above = math.nextafter(0.5, 1)
    assert Epsilon.from_privacy_map(just_above) > Epsilon.parse("0.5")
    assert Epsilon.from_privacy_map(0.5) == Epsilon.parse("0.5")


def test_sums_are_exact_where_floats_drift() -> None:
    total = Epsilon.zero()
    for _ in range(10):
        total = total + Epsilon.parse(0.1)
    assert sum([0.1] * 10) != 1.0
    assert total == Epsilon.parse(1)
    assert str(total) == "1" and str(Epsilon.parse("0.25")) == "0.25"
