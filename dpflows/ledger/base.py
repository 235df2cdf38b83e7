"""The Ledger protocol and its records: clients, keys, caps, charges, stored answers, audit.

The ledger is the one durable authority on privacy spending. Its central operation,
`commit_release`, checks every cap a release touches and, only if all hold, appends the
charges, stores the answer and writes the audit row, all in one transaction (design §4).
If any cap would be exceeded nothing is written. Implementations: memory.py (tests,
benchmarks), sqlite.py (embedded default, one host), postgres.py (several hosts).

Caps (issue 17): per (client, dataset, window), in the dataset's measure (ε for pure-DP datasets,
ρ for zCDP ones: both compose by addition); and per *population* (the people datasets are drawn
from; every dataset belongs to one, `DEFAULT_POPULATION` unless ingested with another) and
population window, in the population's one measure: a global cap across all clients and datasets,
the sharing groups' allocations of it, and optionally a horizon cap on the population's spend over
any run of H consecutive windows (`Population`). A charge on a dataset accounted otherwise reaches
the ledger already converted into the population's measure (`ReleaseRequest.population_loss`).
Spending is kept per window *index*, so the ledger records each dataset's grid (first day, window
length), measure and population when it is first capped or charged (`DatasetGrid`), and each
population's grid and measure when its first dataset is; it refuses, in the same transaction as
any charge or cap, a dataset that comes back with another grid, measure or population, and a
dataset whose windows do not fall on its population's (`population_offset`): window k, and the
unit of every figure, then keep meaning one person-week in one measure for the dataset's life.
A cap set for window None applies to every window without a cap of its own. A window with no
cap at all has nothing to spend: ledgers fail closed. A dataset's own global caps and allocations
from before populations (ledger schema 2) still bind it (`LegacyDatasetCaps`); nothing sets new ones.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from dpflows.budget import PrivacyLoss
from dpflows.errors import InvalidInput
from dpflows.ledger.budgets import (  # re-exported: the ledgers, the service and the tests import them from here
    DEFAULT_POPULATION,
    GROUP_NAME,
    Allocation,
    DatasetGrid,
    LegacyDatasetCaps,
    Population,
    WindowBudget,
    check_allocations,
    check_horizon,
    check_population_name,
    check_window,
    effective_allocations,
    horizon_runs,
    population_offset,
)

__all__ = [
    "DEFAULT_POPULATION", "GENESIS_HASH", "GROUP_NAME", "ROLES", "Allocation", "AnswerShape", "ApiKeyRecord",
    "AuditEntry", "Client", "DatasetGrid", "Ledger", "LegacyDatasetCaps", "Population", "ReleaseReceipt",
    "ReleaseRequest", "ShapeFilter", "StoredAnswer", "WindowBudget", "bit_mask", "check_allocations",
    "check_group_name", "check_horizon", "check_population_name", "check_window", "effective_allocations",
    "horizon_runs", "population_offset", "rank_shapes", "shape_of",
]

ROLES = ("admin", "planner", "analyst", "oversight")
GENESIS_HASH = "0" * 64




@dataclass(frozen=True)
class Client:
    id: int
    name: str
    role: str
    created_at: str
    #: the sharing group an admin put this client in; None: the client is alone (issue 17)
    group: str | None = None

    @property
    def share_group(self) -> str:
        """The group whose stored answers this client reuses and derives from: its group, or itself alone.

        A colon never appears in a group name, so `client:<id>` can never be an admin's group."""
        return self.group if self.group is not None else f"client:{self.id}"


def check_group_name(group: str) -> str:
    """A sharing group's name: 1-64 letters, digits, '_', '.', '-' (never 'client:<id>', a client alone)."""
    if not isinstance(group, str) or GROUP_NAME.fullmatch(group) is None:
        raise InvalidInput(
            f"group={group!r} is not a group name; use 1-64 letters, digits, '_', '.' or '-', starting with a "
            "letter or digit",
            field="group",
        )
    return group


@dataclass(frozen=True)
class ApiKeyRecord:
    id: int
    client_id: int
    prefix: str  # first characters of the key, to tell keys apart in listings; not a secret
    created_at: str
    revoked_at: str | None


@dataclass(frozen=True)
class StoredAnswer:
    """A released answer, kept so that the identical query is answered again at no cost."""

    answer_id: str
    dataset: str
    query_key: str
    client_id: int
    payload: dict[str, Any]
    created_at: str


@dataclass(frozen=True)
class AnswerShape:
    """What a stored answer asked, without its values: the index free derivations search (issue 18).

    Filled from the payload when an answer is committed (`shape_of`), and for answers stored
    before it existed by the ledger's migration. Hours and weekdays are bit masks (bit h for hour
    h) so that "asked at least these hours" is one integer test in SQL; measure and zone are ""
    where a query has none.
    """

    answer_id: str
    dataset: str
    kind: str
    data_version: str
    mechanism: str
    start: str  # ISO date
    end: str  # ISO date, exclusive
    zoning: str
    hours_mask: int
    weekdays_mask: int
    measure: str
    zone: str
    unit: str  # "epsilon" or "rho": the measure loss_nanos is in
    loss_nanos: int
    scale: float
    created_at: str
    #: the sharing group the answer was released in: only that group derives from it (issue 17)
    share_group: str = ""


@dataclass(frozen=True)
class ShapeFilter:
    """Which stored answers could be summed into a query (dpflows.derive), and how many to return.

    Equal: kind, data_version, start, end, unit; zoning one of `zonings`; loss at most
    `max_loss_nanos`; mechanism one of `mechanisms`; hours and weekdays equal to the masks, or
    (not `*_exact`) containing them; measure and zone equal to `pattern` when given. Of those,
    the `per_zoning` smallest noise scales of each zoning, and at most `limit` in all, smallest
    scale first (then oldest).
    """

    kind: str
    data_version: str
    start: str
    end: str
    zonings: tuple[str, ...]
    unit: str
    max_loss_nanos: int
    mechanisms: tuple[str, ...]
    hours_mask: int
    hours_exact: bool
    weekdays_mask: int
    weekdays_exact: bool
    pattern: tuple[str, str] | None = None  # (measure, zone) for patterns
    per_zoning: int = 1
    limit: int = 16
    #: only answers released in this sharing group (Client.share_group) are candidates
    group: str = ""

    def admits(self, shape: AnswerShape) -> bool:
        """The filter in Python: the reference the SQL ledgers implement (and the memory ledger uses)."""
        def covers(mask: int, want: int, exact: bool) -> bool:
            return mask == want if exact else mask & want == want

        return (
            (shape.kind, shape.data_version, shape.start, shape.end, shape.unit)
            == (self.kind, self.data_version, self.start, self.end, self.unit)
            and shape.zoning in self.zonings and shape.loss_nanos <= self.max_loss_nanos
            and shape.mechanism in self.mechanisms
            and covers(shape.hours_mask, self.hours_mask, self.hours_exact)
            and covers(shape.weekdays_mask, self.weekdays_mask, self.weekdays_exact)
            and (self.pattern is None or (shape.measure, shape.zone) == self.pattern)
            and shape.share_group == self.group
        )


def bit_mask(values: Any, size: int) -> int | None:
    """Bit v set for every integer v in `values` (0 <= v < size); None if any is not such an integer."""
    mask = 0
    for v in values:
        if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v < size:
            return None
        mask |= 1 << v
    return mask


def shape_of(answer: StoredAnswer) -> AnswerShape | None:
    """The shape of a released answer, from the payload the service stores; None if it has none
    (a bounding-report charge, or a payload without a query, mechanism, scale or loss)."""
    p = answer.payload
    query = p.get("query")
    if not isinstance(query, dict) or not isinstance(query.get("kind"), str):
        return None
    unit = "rho" if "rho_nanos" in p else "epsilon"
    hours = bit_mask(query.get("hours", ()), 24)
    weekdays = bit_mask(query.get("weekdays", ()), 7)
    try:
        if hours is None or weekdays is None:
            return None
        return AnswerShape(
            answer.answer_id, answer.dataset, query["kind"], str(p["data_version"]), str(p["mechanism"]),
            str(query["start"]), str(query["end"]), str(query["zoning"]), hours, weekdays,
            # `zone` holds a patterns query's zone, or a residents query's place (home/work): each must match
            str(query.get("measure") or ""), str(query.get("zone") or query.get("place") or ""), unit,
            int(p[f"{unit}_nanos"]),
            float(p["scale"]), answer.created_at,
        )
    except (KeyError, TypeError, ValueError):
        return None


def rank_shapes(shapes: list[AnswerShape], where: ShapeFilter) -> list[AnswerShape]:
    """The `per_zoning` best (smallest scale, then oldest) of each zoning, at most `limit`, best first."""
    order = sorted(shapes, key=lambda s: (s.scale, s.created_at, s.answer_id))
    taken: dict[str, int] = {}
    out: list[AnswerShape] = []
    for shape in order:
        if taken.get(shape.zoning, 0) < where.per_zoning:
            taken[shape.zoning] = taken.get(shape.zoning, 0) + 1
            out.append(shape)
    return out[: where.limit]


@dataclass(frozen=True)
class AuditEntry:
    """Who asked what, when, at what ε, with what outcome: never an answer's values."""

    action: str
    outcome: str
    client_id: int | None = None
    dataset: str | None = None
    query: dict[str, Any] | None = None
    #: the loss charged, in the dataset's measure (ε or ρ); hashed under its historical key "epsilon_nanos"
    loss: PrivacyLoss = field(default_factory=PrivacyLoss.zero)
    answer_id: str | None = None
    # Filled in by the ledger when the row is written:
    id: int = 0
    at: str = ""
    prev_hash: str = ""
    row_hash: str = ""

    def chain_hash(self, prev_hash: str, at: str) -> str:
        """sha256 over the previous row's hash and this row's content: any edit breaks the chain."""
        body = json.dumps(
            {
                "prev": prev_hash, "at": at, "action": self.action, "outcome": self.outcome,
                "client_id": self.client_id, "dataset": self.dataset, "query": self.query,
                "epsilon_nanos": self.loss.nanos, "answer_id": self.answer_id,
            },
            sort_keys=True, separators=(",", ":"),
        )
        return hashlib.sha256(body.encode()).hexdigest()


@dataclass(frozen=True)
class ReleaseRequest:
    """Everything `commit_release` needs: who pays, where, how much, and what is released."""

    client_id: int
    dataset: str
    query_key: str
    windows: tuple[int, ...]
    loss: PrivacyLoss  # ε or ρ, charged in full in every window
    answer_id: str
    payload: dict[str, Any]
    audit: AuditEntry
    #: the dataset's grid, checked against the ledger's record in the release's transaction
    grid: DatasetGrid | None = None
    #: the paying client's sharing group (Client.share_group): the only group that derives from the answer
    share_group: str = ""
    #: `loss` in the population's measure, converted by the dataset's accounting (None: the same measure)
    population_loss: PrivacyLoss | None = None

    @property
    def population_charge(self) -> PrivacyLoss:
        return self.loss if self.population_loss is None else self.population_loss


@dataclass(frozen=True)
class ReusableAnswer:
    """A stored answer found for reuse, without its payload, and the reader's budgets in its windows
    (read in the same transaction)."""

    answer_id: str
    created_at: str
    budgets: tuple[WindowBudget, ...]


@dataclass(frozen=True)
class ReleaseReceipt:
    answer: StoredAnswer
    reused: bool
    charged: PrivacyLoss  # per window; zero when reused
    #: the paying client's budgets in the release's windows, read in the same transaction after the charge
    budgets: tuple[WindowBudget, ...] = ()


@runtime_checkable
class Ledger(Protocol):
    """Durable, atomic privacy accounting plus the registry of clients and keys."""

    # clients and keys
    def create_client(self, name: str, role: str) -> Client: ...
    def get_client(self, client_id: int) -> Client: ...
    def client_by_name(self, name: str) -> Client: ...
    def list_clients(self) -> list[Client]: ...
    def set_group(self, client_id: int, group: str | None) -> Client: ...
    def add_key(self, client_id: int, key_hash: str, prefix: str) -> ApiKeyRecord: ...
    def client_for_key_hash(self, key_hash: str) -> Client | None: ...
    def list_keys(self, client_id: int) -> list[ApiKeyRecord]: ...
    def revoke_key(self, key_id: int) -> ApiKeyRecord: ...

    # datasets, caps and spending
    def register_dataset(self, grid: DatasetGrid) -> DatasetGrid: ...
    def dataset_grid(self, dataset: str) -> DatasetGrid | None: ...
    def set_cap(self, dataset: str | None, cap: PrivacyLoss, *, client_id: int | None, window: int | None,
                grid: DatasetGrid | None = None, group: str | None = None, population: str | None = None) -> None: ...
    def list_allocations(self, dataset: str | None = None, *, population: str | None = None) -> list[Allocation]: ...
    def population(self, name: str) -> Population | None: ...
    def population_of(self, dataset: str) -> tuple[str, int]: ...
    def population_caps(self, name: str) -> list[tuple[int | None, PrivacyLoss]]: ...
    def population_spent(self, name: str, window: int) -> PrivacyLoss: ...
    def set_horizon_cap(self, name: str, windows: int | None, cap: PrivacyLoss | None) -> Population: ...
    def window_budgets(self, dataset: str, client_id: int, windows: list[int]) -> list[WindowBudget]: ...
    def total_charged(self, dataset: str, window: int, client_id: int | None = None) -> PrivacyLoss: ...
    def high_water(self) -> tuple[int, int]: ...

    # releases
    def find_answer(self, dataset: str, query_key: str) -> StoredAnswer | None: ...
    def find_reusable(self, dataset: str, query_key: str, client_id: int,
                      windows: tuple[int, ...]) -> ReusableAnswer | None: ...
    def get_answer(self, answer_id: str) -> StoredAnswer | None: ...
    def list_answers(self, dataset: str, kind: str | None = None) -> list[StoredAnswer]: ...
    def find_answer_shapes(self, dataset: str, where: ShapeFilter) -> list[AnswerShape]: ...
    def delete_answers(self, dataset: str, before_window: int, *, keep_client: int | None = None) -> int: ...
    def commit_release(self, request: ReleaseRequest) -> ReleaseReceipt: ...

    # audit
    def append_audit(self, entry: AuditEntry) -> AuditEntry: ...
    def audit_reuse(self, entry: AuditEntry, windows: tuple[int, ...]) -> list[WindowBudget]: ...
    def queue_audit(self, entry: AuditEntry) -> None: ...
    def flush_audit(self) -> int: ...
    def configure_audit_queue(self, *, window_s: float, max_rows: int) -> None: ...
    def read_audit(self, *, after_id: int = 0, limit: int = 100) -> list[AuditEntry]: ...

    def close(self) -> None: ...
