"""Accountings: one object per measure of privacy loss, owning everything that differs between them.

A dataset is accounted in one measure for life (design §4, issue 12): pure ε-DP with the
discrete Laplace, or ρ-zCDP with the discrete Gaussian. Everything that depends on which (the
loss type and its unit, the noise mechanism and how its sensitivity is computed, how a target
error is priced, how a loss is shown, the per-role caps, what a pure-DP bounding report costs
here, how a loss converts into another measure) is a method of an `Accounting`; code elsewhere
asks the dataset's accounting and never branches on its name. Adding a measure (approximate
(ε, δ)) is one subclass here and its mechanism in dpflows.mechanisms.

Populations (issue 17): datasets drawn from the same people share one budget in one measure. A
charge on a dataset accounted otherwise is converted into the population's measure by
`Accounting.convert` (OpenDP's conversion, in dpflows.mechanisms) before it is committed, or
refused (`Conflict`) where no conversion exists: pure ε → ρ exists (ε-DP is
ε²/2-zCDP); ρ → pure ε does not (zCDP implies only approximate (ε, δ)-DP).

    Accounting
    ├── PureDP              pure_dp  Epsilon  discrete Laplace   ℓ1 = L
    └── ZeroConcentrated    zcdp     Rho      discrete Gaussian  ℓ2 from L and the per-key cap
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import numpy as np

from dpflows.budget import ACCOUNTINGS, PURE_DP, ZCDP, Epsilon, PrivacyLoss, Rho
from dpflows.errors import Conflict, InvalidInput
from dpflows.mechanisms import (
    DISCRETE_GAUSSIAN,
    DISCRETE_LAPLACE,
    DiscreteGaussian,
    DiscreteLaplace,
    NoiseMechanism,
    l2_sensitivity,
)

if TYPE_CHECKING:
    from dpflows.contribution_report import ReportCharge


class DatasetFacts(Protocol):
    """What an accounting reads of a dataset's metadata (dpflows.dataset_metadata.DatasetMetadata)."""

    @property
    def key_cap_trips(self) -> int: ...
    @property
    def delta(self) -> float: ...

    def bound(self, measure: str) -> int: ...
    def key_cap(self, measure: str) -> int: ...


@dataclass(frozen=True)
class Sensitivity:
    """What one person-window can add to an answer: the ℓ1 bound, the per-key cap, and what a count counts.

    Computed per query from public facts by dpflows.sensitivity; each accounting calibrates to its
    own norm of it (ℓ1 for the Laplace, ℓ2 for the Gaussian).
    """

    l1: int
    key_cap: int
    count_unit: str

    @property
    def l2(self) -> float:
        return l2_sensitivity(self.l1, self.key_cap)


@dataclass(frozen=True)
class RoleCaps:
    """The most one query may cost, per role, in one measure."""

    planner: PrivacyLoss
    analyst: PrivacyLoss

    def for_role(self, role: str) -> PrivacyLoss:
        return self.analyst if role == "analyst" else self.planner


class Accounting:
    """What a dataset's measure of loss decides; see the module docstring."""

    #: the value stored in dataset metadata (``accounting.measure``)
    name: ClassVar[str]
    #: how messages name it
    label: ClassVar[str]
    loss_type: ClassVar[type[PrivacyLoss]]
    mechanism: ClassVar[NoiseMechanism]

    @property
    def unit(self) -> str:
        """The request and answer field of this measure: "epsilon" or "rho"."""
        return self.loss_type.unit

    def sensitivity(self, contribution: Sensitivity) -> float:
        """The norm of a query's contribution this accounting's mechanism is calibrated to."""
        raise NotImplementedError

    def loss_for_error(self, sensitivity: float, max_error: float, confidence: float,
                       floor: PrivacyLoss | None = None) -> PrivacyLoss:
        """The smallest loss whose noise meets `max_error`; one the `floor` already meets is refused."""
        return self.mechanism.loss_for_error(sensitivity, max_error, confidence, floor)

    def scale(self, sensitivity: float, loss: PrivacyLoss) -> float:
        return self.mechanism.scale(sensitivity, loss)

    def release(self, true_counts: np.ndarray, sensitivity: float, loss: PrivacyLoss) -> Any:
        return self.mechanism.release(true_counts, sensitivity, loss)

    def public_sensitivities(self, meta: DatasetFacts) -> set[float]:
        """Sensitivities this dataset's queries are calibrated to that its metadata alone fixes
        (public facts, for the noise pool's stocks; dpflows.noise_pool)."""
        raise NotImplementedError

    def parse_sensitivity(self, stored: Any) -> float:
        """A stored answer's sensitivity as it was calibrated (an integer L, or an ℓ2 float)."""
        return self.mechanism.parse_sensitivity(stored)

    def approx_dp(self, loss: PrivacyLoss, delta: float) -> float | None:
        """The ε that `loss` implies at `delta`, for display; None where the loss already is an ε."""
        return None

    def report_loss(self, charge: ReportCharge) -> PrivacyLoss:
        """What a pure-DP bounding report costs in this measure."""
        raise NotImplementedError

    def loss_of(self, *, epsilon: PrivacyLoss | None, rho: PrivacyLoss | None,
                dataset: str) -> PrivacyLoss | None:
        """The loss a request sends in this measure; one sent in another measure is refused with the fix."""
        sent = {"epsilon": epsilon, "rho": rho}
        for unit, value in sent.items():
            if value is not None and unit != self.unit:
                raise InvalidInput(
                    f"dataset {dataset!r} is accounted in {self.label}: send {self.unit} or max_error, not {unit}",
                    field=unit,
                )
        given = sent[self.unit]
        if given is not None and given.nanos == 0:
            raise InvalidInput(f"{self.unit}=0 releases nothing useful; send a positive {self.unit}",
                               field=self.unit)
        return given

    def key_cap_trips(self, meta: DatasetFacts) -> int | None:
        """The per-key cap ingestion enforces on trips rows (None: no such cap in this measure)."""
        return None

    def converts_to(self, measure: str) -> bool:
        """Whether a loss of this accounting can be converted into `measure` ("epsilon" or "rho")."""
        return measure == self.unit

    def convert(self, loss: PrivacyLoss, measure: str) -> PrivacyLoss:
        """A loss of this accounting in `measure`, a population's measure: itself, or OpenDP's conversion
        rounded up (never below the loss it stands for); Conflict where none exists."""
        if measure == self.unit:
            return self.loss_type(loss.nanos)
        raise Conflict(
            f"a loss in {self.unit} ({self.label}) cannot be converted into {measure}: OpenDP has no such "
            "conversion", field=self.unit)

    def largest_within(self, budget: PrivacyLoss, measure: str) -> PrivacyLoss:
        """The largest loss of this accounting whose conversion into `measure` fits in `budget`: what a
        budget in a population's measure leaves a client of this dataset (display and quotes)."""
        if measure == self.unit:
            return self.loss_type(budget.nanos)
        return self.convert(budget, measure)  # raises: no conversion, so no such loss

    def metadata_json(self, meta: DatasetFacts) -> dict[str, Any]:
        return {"measure": self.name}


class PureDP(Accounting):
    name = PURE_DP
    label = "pure DP"
    loss_type = Epsilon
    mechanism = DiscreteLaplace()

    def sensitivity(self, contribution: Sensitivity) -> float:
        return contribution.l1

    def public_sensitivities(self, meta: DatasetFacts) -> set[float]:
        # trips: L_trips; presence: min(L_presence, S), L_presence once a query covers enough
        # day-hour slots (the wide answers the pool is for); residents and commuting: 1.
        return {meta.bound("trips"), meta.bound("presence"), 1}

    def report_loss(self, charge: ReportCharge) -> PrivacyLoss:
        return charge.epsilon

    def converts_to(self, measure: str) -> bool:
        return measure in (self.unit, Rho.unit)

    def convert(self, loss: PrivacyLoss, measure: str) -> PrivacyLoss:
        if measure == Rho.unit:
            from dpflows.mechanisms import epsilon_as_rho

            return epsilon_as_rho(loss)
        return super().convert(loss, measure)

    def largest_within(self, budget: PrivacyLoss, measure: str) -> PrivacyLoss:
        if measure == Rho.unit:
            from dpflows.mechanisms import largest_epsilon_within

            return largest_epsilon_within(budget)
        return super().largest_within(budget, measure)


class ZeroConcentrated(Accounting):
    name = ZCDP
    label = "zCDP"
    loss_type = Rho
    mechanism = DiscreteGaussian()

    def sensitivity(self, contribution: Sensitivity) -> float:
        return contribution.l2

    def public_sensitivities(self, meta: DatasetFacts) -> set[float]:
        # A key's cap lies between the per-row cap and L; wide answers (many days, hours and cells
        # per key: the 10,000-key ones the pool is for) reach L, where Δ2 = L; narrow ones the row cap.
        from dpflows.mechanisms import l2_sensitivity

        return {l2_sensitivity(meta.bound(m), cap) for m in ("trips", "presence")
                for cap in (meta.bound(m), meta.key_cap(m))} | {l2_sensitivity(1, 1)}

    def approx_dp(self, loss: PrivacyLoss, delta: float) -> float | None:
        from dpflows.mechanisms import rho_to_approx_dp

        return rho_to_approx_dp(loss, delta)

    def report_loss(self, charge: ReportCharge) -> PrivacyLoss:
        from dpflows.mechanisms import pure_dp_as_rho

        return Rho.from_privacy_map(pure_dp_as_rho(charge.sensitivity, charge.scale))

    def key_cap_trips(self, meta: DatasetFacts) -> int | None:
        return meta.key_cap_trips

    def metadata_json(self, meta: DatasetFacts) -> dict[str, Any]:
        return {"measure": self.name, "key_caps": {"trips": meta.key_cap_trips, "presence": 1}, "delta": meta.delta}


_BY_NAME: dict[str, Accounting] = {a.name: a for a in (PureDP(), ZeroConcentrated())}
assert tuple(_BY_NAME) == ACCOUNTINGS
_BY_MECHANISM: dict[str, Accounting] = {a.mechanism.name: a for a in _BY_NAME.values()}
assert set(_BY_MECHANISM) == {DISCRETE_LAPLACE, DISCRETE_GAUSSIAN}


def accounting(name: str) -> Accounting:
    """The accounting a dataset declares (``pure_dp`` or ``zcdp``)."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise InvalidInput(f"accounting={name!r} must be one of {list(_BY_NAME)}", field="accounting") from None


def accounting_of_mechanism(mechanism: str) -> Accounting:
    """The accounting whose mechanism released a stored answer."""
    return _BY_MECHANISM[mechanism]


def common_measure(accountings: list[Accounting]) -> str:
    """The measure a population of datasets so accounted takes: of their own measures, the first (in
    ACCOUNTINGS order) that every one of them converts into. Pure DP alone: ε; with zCDP: ρ."""
    for candidate in _BY_NAME.values():
        if any(a.name == candidate.name for a in accountings) and all(a.converts_to(candidate.unit)
                                                                       for a in accountings):
            return candidate.unit
    raise Conflict(f"no measure holds {sorted({a.label for a in accountings})} together", field="population")


def accounting_of_unit(unit: str) -> Accounting:
    """The accounting whose loss is named `unit` ("epsilon" or "rho")."""
    for acc in _BY_NAME.values():
        if acc.unit == unit:
            return acc
    raise InvalidInput(f"unit={unit!r} must be one of {[a.unit for a in _BY_NAME.values()]}", field="unit")
