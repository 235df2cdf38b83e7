"""Exact privacy-loss values: ε (pure DP), ρ (zero-concentrated DP) and (ε, δ) (approximate DP).

A loss is held as an integer number of nano-units (1e-9) and, for approximate DP, its δ as an
integer number of atto-units (1e-18, `DELTA_UNITS`). Integers sum exactly in Python and in SQL,
so a ledger can never drift past a cap through floating-point error. Every conversion from a
client's number or from an OpenDP privacy map rounds *up*: a charge is never smaller than the
loss it stands for, and a cap comparison never errs in the client's favour.

Why 1e-18 for δ: OpenDP's maps give the δ of a thresholded release as small as ~1e-16 (and
smaller), which nano-units would round up to 1e-9, a charge 10^7 times too large; at 1e-18 a δ of
1e-16 is 100 units, rounded up by at most 1%. δ never exceeds 1, so a cap, a running total within
it, and any one charge stay below 10^18 units, inside a signed 64-bit integer (SQLite INTEGER,
PostgreSQL BIGINT: up to 9.2·10^18) with room for the sum a check adds before comparing.
A finer decimal unit (1e-19) would leave no such room.

(ε, δ) losses compose by adding both parts (basic composition) and are compared part by part:
a loss fits a cap only if its ε and its δ both do (`<=` is that partial order).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from typing import ClassVar, Self

from dpflows.errors import InvalidInput

NANOS_PER_UNIT = 1_000_000_000
#: The largest loss anyone may charge or cap at; a guard against absurd values, not a policy.
MAX_EPSILON_NANOS = 1_000 * NANOS_PER_UNIT

#: δ is held in integer units of 1e-18 (see the module docstring)
DELTA_UNITS = 10**18

PURE_DP = "pure_dp"
ZCDP = "zcdp"
APPROX_DP = "approx_dp"
ACCOUNTINGS = (PURE_DP, ZCDP, APPROX_DP)


def exact_number(value: float | int | str | Decimal | Fraction, *, field: str, expected: str) -> Fraction:
    """A client's or admin's number read exactly (a float by its shortest repr); `expected` ends each refusal,
    e.g. "a positive number such as 0.5". NaN, infinities, booleans and non-numbers are refused."""
    if isinstance(value, bool):
        raise InvalidInput(f"{field}={value!r} is not a number; send {expected}", field=field)
    try:
        if isinstance(value, Fraction):
            return value
        dec = Decimal(repr(value)) if isinstance(value, float) else Decimal(str(value))
    except (InvalidOperation, ValueError, TypeError) as exc:
        raise InvalidInput(f"{field}={value!r} is not a number; send {expected}", field=field) from exc
    if not dec.is_finite():
        raise InvalidInput(f"{field}={value!r} is not finite; send {expected}", field=field)
    return Fraction(dec)


def parse_delta(value: float | int | str | Decimal | Fraction, *, field: str = "delta") -> int:
    """A client's or admin's δ in atto-units, rounded up; 0 <= δ < 1, never NaN or infinite."""
    exact = exact_number(value, field=field, expected="a number in [0, 1) such as 1e-9")
    if not 0 <= exact < 1:
        raise InvalidInput(f"{field}={value} must be in [0, 1), such as 1e-9", field=field)
    return math.ceil(exact * DELTA_UNITS)


def delta_from_privacy_map(delta: float | Fraction) -> int:
    """An OpenDP map's δ in atto-units, rounded up."""
    if not math.isfinite(delta) or not 0 <= delta <= 1:
        raise InvalidInput(f"privacy map returned delta={delta!r}; the mechanism is unusable")
    return math.ceil(Fraction(delta) * DELTA_UNITS)


def delta_text(attos: int) -> str:
    """δ for messages: the float nearest the exact value (1e-09, not 0.000000001)."""
    return repr(attos / DELTA_UNITS)


@dataclass(frozen=True)
class PrivacyLoss:
    """A non-negative, finite privacy loss in exact nano-units of one measure.

    The ledger holds losses of this base type: it sums and compares integers and never needs
    the unit, which a dataset's accounting fixes (ε for pure DP, ρ for zCDP). `Epsilon` and
    `Rho` carry the unit; adding or comparing an ε with a ρ is a TypeError, never a number.
    """

    nanos: int
    #: approximate DP's δ, in atto-units (DELTA_UNITS); 0 for every measure without one
    delta_attos: int = 0
    #: the field name clients use for this measure (and that messages name)
    unit: ClassVar[str] = "loss"
    #: what a dataset's ledger records as the measure of its caps and spending (DatasetGrid.measure)
    measure: ClassVar[str] = "loss"
    #: whether a δ may be held: the ledger's base type and approximate DP
    carries_delta: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if not isinstance(self.nanos, int) or isinstance(self.nanos, bool):
            raise InvalidInput(f"{self.unit} must be built from an integer of nano-units, got {self.nanos!r}")
        if not isinstance(self.delta_attos, int) or isinstance(self.delta_attos, bool) \
                or not 0 <= self.delta_attos < DELTA_UNITS:
            raise InvalidInput(f"delta must be an integer of atto-units in [0, 1e18), got {self.delta_attos!r}",
                               field="delta")
        if self.delta_attos and not self.carries_delta:
            raise InvalidInput(f"{self.unit} carries no delta; delta applies to datasets accounted in approximate DP",
                               field="delta")
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
        exact = exact_number(value, field=field, expected="a finite positive number such as 0.5")
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

    def delta_as_float(self) -> float:
        """δ for display and for OpenDP's float parameters; never for accounting."""
        return self.delta_attos / DELTA_UNITS

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
        return self._same_measure(other)(self.nanos + other.nanos,  # type: ignore[return-value]
                                         self.delta_attos + other.delta_attos)

    def __sub__(self, other: PrivacyLoss) -> Self:
        return self._same_measure(other)(self.nanos - other.nanos,  # type: ignore[return-value]
                                         self.delta_attos - other.delta_attos)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PrivacyLoss):
            return NotImplemented
        self._same_measure(other)
        return (self.nanos, self.delta_attos) == (other.nanos, other.delta_attos)

    def __hash__(self) -> int:
        return hash((self.nanos, self.delta_attos))

    # Part by part: a total order for ε and ρ (δ is 0), a partial one for (ε, δ). Each compares the integers
    # itself: delegating to the reflected operator would loop, since Python tries a subclass's reflection first.
    def _fits_in(self, other: PrivacyLoss) -> bool:
        self._same_measure(other)
        return self.nanos <= other.nanos and self.delta_attos <= other.delta_attos

    def __le__(self, other: PrivacyLoss) -> bool:
        return self._fits_in(other)

    def __lt__(self, other: PrivacyLoss) -> bool:
        return self._fits_in(other) and (self.nanos, self.delta_attos) != (other.nanos, other.delta_attos)

    def __ge__(self, other: PrivacyLoss) -> bool:
        return other._fits_in(self)

    def __gt__(self, other: PrivacyLoss) -> bool:
        return other._fits_in(self) and (self.nanos, self.delta_attos) != (other.nanos, other.delta_attos)

    def __str__(self) -> str:
        text = str(Decimal(self.nanos) / NANOS_PER_UNIT)
        text = text.rstrip("0").rstrip(".") if "." in text else text
        return f"{text} (delta {delta_text(self.delta_attos)})" if self.delta_attos else text

    def to_json(self) -> float:
        """Display value; exact for every value a client can send (at most 9 decimals)."""
        return float(Decimal(self.nanos) / NANOS_PER_UNIT)



@dataclass(frozen=True, eq=False)
class Epsilon(PrivacyLoss):
    """Pure differential privacy's ε: composes by addition."""

    unit = "epsilon"
    measure = "epsilon"
    carries_delta = False


@dataclass(frozen=True, eq=False)
class Rho(PrivacyLoss):
    """Zero-concentrated DP's ρ (Bun and Steinke 2016): composes by addition, exactly here.

    A ρ-zCDP mechanism is (ρ + 2·sqrt(ρ·ln(1/δ)), δ)-DP for every δ > 0; the service shows that
    (ε, δ) for display (mechanisms.rho_to_approx_dp), and accounts in ρ.
    """

    unit = "rho"
    measure = "rho"
    carries_delta = False


@dataclass(frozen=True, eq=False)
class ApproxDP(PrivacyLoss):
    """Approximate DP's (ε, δ): ε in nano-units, δ in atto-units; both compose by addition (basic composition).

    Clients send and read its ε under the field ``epsilon`` (and δ under ``delta``), so `unit` is
    "epsilon"; the ledger records datasets accounted in it as "epsilon_delta", apart from pure-DP
    ones, so that spending with a δ is never read as pure ε.
    """

    unit = "epsilon"
    measure = "epsilon_delta"
    carries_delta = True

    @classmethod
    def of(cls, epsilon: PrivacyLoss, delta_attos: int = 0) -> ApproxDP:
        """An ε (pure DP, or this type) with a δ: (ε, 0) is what a pure-DP release costs here."""
        return cls(epsilon.nanos, delta_attos)

    @classmethod
    def parse_pair(cls, epsilon: float | int | str | Decimal | Fraction,
                   delta: float | int | str | Decimal | Fraction) -> ApproxDP:
        """A client's or admin's (ε, δ), each rounded up."""
        return cls(Epsilon.parse(epsilon).nanos, parse_delta(delta))

    @property
    def epsilon(self) -> Epsilon:
        return Epsilon(self.nanos)

    def delta_json(self) -> float:
        return self.delta_as_float()


def parse_loss(*, epsilon: float | str | None = None, rho: float | str | None = None,
               delta: float | str | None = None) -> PrivacyLoss | None:
    """The loss an admin's flags or fields name: ε, ρ, or ε with δ (an (ε, δ) pair); None if neither is sent."""
    if delta is not None:
        if epsilon is None:
            raise InvalidInput("delta goes with epsilon, on approx_dp datasets and populations in (epsilon, delta)",
                               field="delta")
        return ApproxDP.parse_pair(epsilon, delta)
    if epsilon is not None:
        return Epsilon.parse(epsilon)
    return None if rho is None else Rho.parse(rho)
