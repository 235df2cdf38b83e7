"""Exact privacy-loss values: ε (pure DP) and ρ (zero-concentrated DP).

A loss is held as an integer number of nano-units (1e-9). Integers sum exactly in Python and in SQL,
so a ledger can never drift past a cap through floating-point error. Every conversion from a
client's number or from an OpenDP privacy map rounds *up*: a charge is never smaller than the
loss it stands for, and a cap comparison never errs in the client's favour.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from typing import Self

from dpflows.errors import InvalidInput

NANOS_PER_UNIT = 1_000_000_000
#: The largest loss anyone may charge or cap at; a guard against absurd values, not a policy.
MAX_EPSILON_NANOS = 1_000 * NANOS_PER_UNIT

PURE_DP = "pure_dp"
ZCDP = "zcdp"
ACCOUNTINGS = (PURE_DP, ZCDP)


@dataclass(frozen=True)
class PrivacyLoss:
    """A non-negative, finite privacy loss in exact nano-units of one measure.

    The ledger holds losses of this base type: it sums and compares integers and never needs
    the unit, which a dataset's accounting fixes (ε for pure DP, ρ for zCDP). `Epsilon` and
    `Rho` carry the unit; adding or comparing an ε with a ρ is a TypeError, never a number.
    """

    nanos: int
    #: the field name clients use for this measure (and that messages name)
    unit = "loss"

    def __post_init__(self) -> None:
        if not isinstance(self.nanos, int) or isinstance(self.nanos, bool):
            raise InvalidInput(f"{self.unit} must be built from an integer of nano-units, got {self.nanos!r}")
        if self.nanos < 0:
            raise InvalidInput(
                f"{self.unit}={self.as_float():g} is negative; use a value of 0 or more"
            )
        if self.nanos > MAX_EPSILON_NANOS:
            raise InvalidInput(
                f"{self.unit}={self.as_float():g} exceeds the hard limit of "
                f"{MAX_EPSILON_NANOS // NANOS_PER_UNIT}; use a smaller value"
            )

    @classmethod
    def parse(cls, value: float | int | str | Decimal | Fraction, *, field: str | None = None) -> Self:
        """Read a client's value, rounding up to the next nano-unit; rejects NaN, inf and negatives."""
        field = field or cls.unit
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
    def from_privacy_map(cls, loss: float | Fraction) -> Self:
        """Turn an OpenDP privacy-map output into a charge, rounding up."""
        if not math.isfinite(loss) or loss < 0:
            raise InvalidInput(f"privacy map returned {loss!r}; the mechanism is unusable")
        return cls(math.ceil(Fraction(loss) * NANOS_PER_UNIT))

    @classmethod
    def zero(cls) -> Self:
        return cls(0)

    def as_fraction(self) -> Fraction:
        return Fraction(self.nanos, NANOS_PER_UNIT)

    def as_float(self) -> float:
        """For display and for OpenDP's float parameters; never for accounting."""
        return self.nanos / NANOS_PER_UNIT

    def _same_measure(self, other: object) -> type[PrivacyLoss]:
        """The class of a result: the more specific of the two; ε with ρ is refused."""
        if not isinstance(other, PrivacyLoss):
            raise TypeError(f"cannot combine {type(self).__name__} with {type(other).__name__}")
        if type(self) is type(other) or type(other) is PrivacyLoss:
            return type(self)
        if type(self) is PrivacyLoss:
            return type(other)
        raise TypeError(f"cannot combine {type(self).__name__} with {type(other).__name__}: different measures")

    def __add__(self, other: PrivacyLoss) -> Self:
        return self._same_measure(other)(self.nanos + other.nanos)  # type: ignore[return-value]

    def __sub__(self, other: PrivacyLoss) -> Self:
        return self._same_measure(other)(self.nanos - other.nanos)  # type: ignore[return-value]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PrivacyLoss):
            return NotImplemented
        self._same_measure(other)
        return self.nanos == other.nanos

    def __hash__(self) -> int:
        return hash(self.nanos)

    def __lt__(self, other: PrivacyLoss) -> bool:
        self._same_measure(other)
        return self.nanos < other.nanos

    def __le__(self, other: PrivacyLoss) -> bool:
        self._same_measure(other)
        return self.nanos <= other.nanos

    def __gt__(self, other: PrivacyLoss) -> bool:
        self._same_measure(other)
        return self.nanos > other.nanos

    def __ge__(self, other: PrivacyLoss) -> bool:
        self._same_measure(other)
        return self.nanos >= other.nanos

    def __str__(self) -> str:
        text = str(Decimal(self.nanos) / NANOS_PER_UNIT)
        return text.rstrip("0").rstrip(".") if "." in text else text

    def to_json(self) -> float:
        """Display value; exact for every value a client can send (at most 9 decimals)."""
        return float(Decimal(self.nanos) / NANOS_PER_UNIT)



@dataclass(frozen=True, eq=False)
class Epsilon(PrivacyLoss):
    """Pure differential privacy's ε: composes by addition."""

    unit = "epsilon"


@dataclass(frozen=True, eq=False)
class Rho(PrivacyLoss):
    """Zero-concentrated DP's ρ (Bun and Steinke 2016): composes by addition, exactly here.

    A ρ-zCDP mechanism is (ρ + 2·sqrt(ρ·ln(1/δ)), δ)-DP for every δ > 0; the service shows that
    (ε, δ) for display (mechanisms.rho_to_approx_dp), and accounts in ρ.
    """

    unit = "rho"
