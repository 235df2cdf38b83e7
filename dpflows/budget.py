"""Exact privacy-loss values.

ε is held as an integer number of nano-ε (1e-9). Integers sum exactly in Python and in SQL,
so a ledger can never drift past a cap through floating-point error. Every conversion from a
client's number or from an OpenDP privacy map rounds *up*: a charge is never smaller than the
loss it stands for, and a cap comparison never errs in the client's favour.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from fractions import Fraction

from dpflows.errors import InvalidInput

NANOS_PER_UNIT = 1_000_000_000
#: The largest ε anyone may charge or cap at; a guard against absurd values, not a policy.
MAX_EPSILON_NANOS = 1_000 * NANOS_PER_UNIT


@dataclass(frozen=True, order=True)
class Epsilon:
    """A non-negative, finite ε in exact nano-units."""

    nanos: int

    def __post_init__(self) -> None:
        if not isinstance(self.nanos, int) or isinstance(self.nanos, bool):
            raise InvalidInput(f"epsilon must be built from an integer of nano-units, got {self.nanos!r}")
        if self.nanos < 0:
            raise InvalidInput(
                f"epsilon={self.as_float():g} is negative; use a value of 0 or more"
            )
        if self.nanos > MAX_EPSILON_NANOS:
            raise InvalidInput(
                f"epsilon={self.as_float():g} exceeds the hard limit of "
                f"{MAX_EPSILON_NANOS // NANOS_PER_UNIT}; use a smaller value"
            )

    @classmethod
    def parse(cls, value: float | int | str | Decimal | Fraction, *, field: str = "epsilon") -> Epsilon:
        """Read a client's ε, rounding up to the next nano-unit; rejects NaN, inf and negatives."""
        if isinstance(value, bool):
            raise InvalidInput(f"{field}={value!r} is not a number; send a positive number such as 0.5", field=field)
        try:
            if isinstance(value, Fraction):
                exact = value
            elif isinstance(value, float):
                if not math.isfinite(value):
                    raise InvalidInput(
                        f"{field}={value!r} is not finite; send a finite positive number such as 0.5",
                        field=field,
                    )
                exact = Fraction(Decimal(repr(value)))
            else:
                dec = Decimal(str(value))
                if not dec.is_finite():
                    raise InvalidInput(
                        f"{field}={value!r} is not finite; send a finite positive number such as 0.5",
                        field=field,
                    )
                exact = Fraction(dec)
        except (InvalidOperation, ValueError, TypeError) as exc:
            raise InvalidInput(
                f"{field}={value!r} is not a number; send a positive number such as 0.5", field=field
            ) from exc
        if exact < 0:
            raise InvalidInput(f"{field}={value} is negative; send a positive number such as 0.5", field=field)
        nanos = math.ceil(exact * NANOS_PER_UNIT)
        if nanos > MAX_EPSILON_NANOS:
            raise InvalidInput(
                f"{field}={value} exceeds the hard limit of {MAX_EPSILON_NANOS // NANOS_PER_UNIT}; "
                "send a smaller value",
                field=field,
            )
        return cls(nanos)

    @classmethod
    def from_privacy_map(cls, loss: float) -> Epsilon:
        """Turn an OpenDP privacy-map output into a charge, rounding up."""
        if not math.isfinite(loss) or loss < 0:
            raise InvalidInput(f"privacy map returned {loss!r}; the mechanism is unusable")
        return cls(math.ceil(Fraction(loss) * NANOS_PER_UNIT))

    @classmethod
    def zero(cls) -> Epsilon:
        return cls(0)

    def as_fraction(self) -> Fraction:
        return Fraction(self.nanos, NANOS_PER_UNIT)

    def as_float(self) -> float:
        """For display and for OpenDP's float parameters; never for accounting."""
        return self.nanos / NANOS_PER_UNIT

    def __add__(self, other: Epsilon) -> Epsilon:
        return Epsilon(self.nanos + other.nanos)

    def __sub__(self, other: Epsilon) -> Epsilon:
        return Epsilon(self.nanos - other.nanos)

    def __str__(self) -> str:
        text = str(Decimal(self.nanos) / NANOS_PER_UNIT)
        return text.rstrip("0").rstrip(".") if "." in text else text

    def to_json(self) -> float:
        """Display value; exact for every value a client can send (at most 9 decimals)."""
        return float(Decimal(self.nanos) / NANOS_PER_UNIT)

