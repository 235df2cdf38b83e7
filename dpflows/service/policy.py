"""Who may ask what (design §5): role rules and per-query caps, in each accounting's measure."""

from __future__ import annotations

from dataclasses import dataclass, field

from dpflows.accounting import RoleCaps, accounting
from dpflows.budget import Epsilon, PrivacyLoss, Rho
from dpflows.cells import CELL_ZONING, Zoning
from dpflows.errors import PolicyViolation
from dpflows.ledger import Client
from dpflows.queries import QuerySpec
from dpflows.settings import Settings


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

    @classmethod
    def from_settings(cls, settings: Settings) -> Policy:
        """The policy the server's settings declare (dpflows.settings): what the app and the CLI both use."""
        return cls(planner_max_epsilon=settings.planner_max_epsilon, analyst_max_epsilon=settings.analyst_max_epsilon,
                   planner_max_rho=settings.planner_max_rho, analyst_max_rho=settings.analyst_max_rho,
                   min_cells_coarse=settings.min_cells_per_coarse_zone)

    def max_epsilon(self, role: str) -> Epsilon:
        return self.analyst_max_epsilon if role == "analyst" else self.planner_max_epsilon

    def caps(self, unit: str) -> RoleCaps:
        """The per-query caps of every role in one measure ("epsilon" or "rho")."""
        by_unit = {"epsilon": RoleCaps(self.planner_max_epsilon, self.analyst_max_epsilon),
                   "rho": RoleCaps(self.planner_max_rho, self.analyst_max_rho)}
        return by_unit[unit]

    def max_loss(self, role: str, accounting_name: str) -> PrivacyLoss:
        """The per-query cap for this role, in the dataset's measure."""
        return self.caps(accounting(accounting_name).unit).for_role(role)

    def authorize(self, client: Client, spec: QuerySpec, zoning: Zoning) -> None:
        """Raise PolicyViolation naming the rule a query breaks for this client's role."""
        if client.role == "admin":
            raise PolicyViolation("role admin queries no data; use a planner or analyst key", field="role")
        if client.role == "analyst":
            if spec.kind != "flows":
                raise PolicyViolation(
                    f"role analyst may query flows only, not {spec.kind}; ask a planner", field="kind"
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

    def check_loss(self, client: Client, loss: PrivacyLoss, accounting_name: str, *,
                   derived_from: float | None) -> None:
        cap = self.max_loss(client.role, accounting_name)
        if loss > cap:
            if derived_from is not None:
                raise PolicyViolation(
                    f"max_error={derived_from:g} needs {loss.unit}={loss}, above the per-query cap of {cap} for "
                    f"role {client.role}; ask for a larger max_error",
                    field="max_error",
                )
            raise PolicyViolation(
                f"{loss.unit}={loss} exceeds the per-query cap of {cap} for role {client.role}; "
                f"send a smaller {loss.unit}",
                field=loss.unit,
            )
