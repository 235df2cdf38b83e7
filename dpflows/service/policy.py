"""Who may ask what (design §5): role rules and per-query caps, in each accounting's measure."""

from __future__ import annotations

from dataclasses import dataclass, field

from dpflows.accounting import RoleCaps, accounting
from dpflows.budget import Epsilon, PrivacyLoss, Rho, delta_text, parse_delta
from dpflows.cells import CELL_ZONING, Zoning
from dpflows.errors import InvalidInput, PolicyViolation
from dpflows.ledger import Client
from dpflows.queries import QuerySpec
from dpflows.settings import Settings

#: What police analysts may ask: aggregate flows between zones of coarse zonings, nothing about presence or homes.
ANALYST_KINDS = ("flows", "inflows", "outflows", "commuting")


@dataclass(frozen=True)
class Policy:
    """Per-role rules (design §5). Analysts: zone-to-zone flows on coarse zonings, a lower cap per query.

    Per-query caps on zCDP datasets default to ε²/2 of the ε caps: an ε-DP release is
    (ε²/2)-zCDP (Bun and Steinke 2016), so one query may cost as much either way.
    """

    planner_max_epsilon: Epsilon = field(default_factory=lambda: Epsilon.parse("1"))
    analyst_max_epsilon: Epsilon = field(default_factory=lambda: Epsilon.parse("0.25"))
    planner_max_rho: Rho = field(default_factory=lambda: Rho.parse("0.5"))
    analyst_max_rho: Rho = field(default_factory=lambda: Rho.parse("0.03125"))
    #: "coarse" is checked, not trusted: a zoning analysts may query has at least this many cells in every zone
    min_cells_coarse: int = 10
    #: The smallest loss one query may charge, for every role (issue 18). Every stored answer
    #: then costs its client something: with the demo's planner caps (ε 2, ρ 0.02 per window)
    #: at most 20,000 answers per window. Nothing useful is lost: at ε = 1e-4 the discrete
    #: Laplace's 95% error is 3.0e4·L counts per value (6e5 at L = 20), at ρ = 1e-6 the discrete
    #: Gaussian's is 1,386·Δ2; both floors sit at least 100× below the per-query loss of spreading
    #: a week's ε = 1 (ρ 0.0172 at δ = 1e-8) over 100 queries (100× and 172×). A max_error the
    #: floor already meets is refused with the floor's error (mechanisms.epsilon_for_error,
    #: rho_for_error).
    min_epsilon: Epsilon = field(default_factory=lambda: Epsilon.parse("0.0001"))
    min_rho: Rho = field(default_factory=lambda: Rho.parse("0.000001"))
    #: How many stored answers a derive=true query or quote ranks (the best of each zoning that
    #: can be summed into the asked one, chosen in the ledger by their shape): only the chosen
    #: answer's payload is read (dpflows.derived_answers).
    derive_candidates: int = 16
    #: Losses whose noise the pool pre-draws (dpflows.noise_pool), per measure: public presets,
    #: never learned from what clients ask. Empty: the role caps of that measure.
    noise_presets_epsilon: tuple[Epsilon, ...] = ()
    noise_presets_rho: tuple[Rho, ...] = ()
    #: Sparse answers (approximate DP): the δ spent when a query sends none, and each role's most, in atto-units
    #: (dpflows.budget). 1e-9 sets a threshold of 221 trips per key at ε = 0.5 with L = 5 (ℓ0 = ℓ∞ = 5).
    default_delta: int = field(default_factory=lambda: parse_delta("1e-9"))
    planner_max_delta: int = field(default_factory=lambda: parse_delta("1e-7"))
    analyst_max_delta: int = field(default_factory=lambda: parse_delta("1e-9"))

    @classmethod
    def from_settings(cls, settings: Settings) -> Policy:
        """The policy the server's settings declare (dpflows.settings): what the app and the CLI both use."""
        return cls(planner_max_epsilon=settings.planner_max_epsilon, analyst_max_epsilon=settings.analyst_max_epsilon,
                   planner_max_rho=settings.planner_max_rho, analyst_max_rho=settings.analyst_max_rho,
                   min_cells_coarse=settings.min_cells_per_coarse_zone, min_epsilon=settings.min_epsilon,
                   min_rho=settings.min_rho, derive_candidates=settings.derive_candidates,
                   noise_presets_epsilon=settings.noise_pool_epsilons, noise_presets_rho=settings.noise_pool_rhos,
                   default_delta=settings.default_delta, planner_max_delta=settings.planner_max_delta,
                   analyst_max_delta=settings.analyst_max_delta)

    def min_loss(self, unit: str) -> PrivacyLoss:
        """The floor of one query's loss in one measure ("epsilon" or "rho")."""
        return self.min_rho if unit == "rho" else self.min_epsilon

    def max_epsilon(self, role: str) -> Epsilon:
        return self.analyst_max_epsilon if role == "analyst" else self.planner_max_epsilon

    def caps(self, unit: str) -> RoleCaps:
        """The per-query caps of every role in one measure ("epsilon" or "rho")."""
        by_unit = {"epsilon": RoleCaps(self.planner_max_epsilon, self.analyst_max_epsilon),
                   "rho": RoleCaps(self.planner_max_rho, self.analyst_max_rho)}
        return by_unit[unit]

    def noise_presets(self, unit: str) -> tuple[PrivacyLoss, ...]:
        """The losses whose noise is pre-drawn in one measure: the presets, else every role's cap."""
        presets: tuple[PrivacyLoss, ...] = self.noise_presets_rho if unit == "rho" else self.noise_presets_epsilon
        if presets:
            return presets
        caps = self.caps(unit)
        return tuple(dict.fromkeys((caps.planner, caps.analyst)))

    def max_delta(self, role: str) -> int:
        """The most δ (atto-units) one sparse answer may spend for this role."""
        return self.analyst_max_delta if role == "analyst" else self.planner_max_delta

    def max_loss(self, role: str, accounting_name: str) -> PrivacyLoss:
        """The per-query cap for this role, in the dataset's measure (with its δ where it has one)."""
        acc = accounting(accounting_name)
        cap = acc.loss_type(self.caps(acc.unit).for_role(role).nanos)
        return acc.with_delta(cap, self.max_delta(role) if acc.allows_sparse else 0)

    def authorize(self, client: Client, spec: QuerySpec, zoning: Zoning, case_ref: str | None = None) -> None:
        """Raise PolicyViolation naming the rule a query breaks for this client's role."""
        if client.role in ("admin", "oversight"):
            raise PolicyViolation(f"role {client.role} queries no data; use a planner or analyst key", field="role")
        if client.role == "analyst":
            if spec.kind not in ANALYST_KINDS:
                raise PolicyViolation(
                    f"role analyst may query flows only ({', '.join(ANALYST_KINDS)}), not {spec.kind}; ask a planner",
                    field="kind",
                )
            if spec.zoning == CELL_ZONING or not zoning.coarse:
                raise PolicyViolation(
                    f"role analyst may query coarse zonings only; zoning={spec.zoning!r} is not coarse",
                    field="zoning",
                )
            smallest = int(zoning.cells_per_zone().min())
            if smallest < self.min_cells_coarse:
                raise PolicyViolation(
                    f"zoning={spec.zoning!r} is marked coarse but has a zone of {smallest} cell(s); role analyst may "
                    f"query only zonings whose every zone holds at least {self.min_cells_coarse} cells",
                    field="zoning",
                )
            if not case_ref:
                raise PolicyViolation("role analyst must send case_ref, the case this query serves; it is audited "
                                      "and readable by the oversight body only", field="case_ref")

    def check_loss(self, client: Client, loss: PrivacyLoss, accounting_name: str, *,
                   derived_from: float | None) -> None:
        floor = self.min_loss(accounting(accounting_name).unit)
        if loss.nanos < floor.nanos:
            raise InvalidInput(
                f"{loss.unit}={loss} is below the smallest {loss.unit} this service charges ({floor}); "
                f"ask for at least {floor}",
                field=loss.unit,
            )
        cap = self.max_loss(client.role, accounting_name)
        if loss.delta_attos > cap.delta_attos:
            raise PolicyViolation(
                f"delta={delta_text(loss.delta_attos)} exceeds the per-query delta cap of "
                f"{delta_text(cap.delta_attos)} for role {client.role}; send a smaller delta",
                field="delta",
            )
        if loss.nanos > cap.nanos:
            if derived_from is not None:
                raise PolicyViolation(
                    f"max_error={derived_from:g} needs {loss.unit}={type(loss)(loss.nanos)}, above the per-query "
                    f"cap of {type(cap)(cap.nanos)} for role {client.role}; ask for a larger max_error",
                    field="max_error",
                )
            raise PolicyViolation(
                f"{loss.unit}={type(loss)(loss.nanos)} exceeds the per-query cap of {type(cap)(cap.nanos)} for "
                f"role {client.role}; "
                f"send a smaller {loss.unit}",
                field=loss.unit,
            )
