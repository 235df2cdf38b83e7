"""The Ledger protocol and its records: clients, keys, caps, charges, stored answers, audit.

The ledger is the one durable authority on privacy spending. Its central operation,
`commit_release`, checks every cap a release touches and, only if all hold, appends the
charges, stores the answer and writes the audit row, all in one transaction (design §4).
If any cap would be exceeded nothing is written. Implementations: memory.py (tests,
benchmarks), sqlite.py (embedded default, one host), postgres.py (several hosts).

Caps: per (client, dataset, window) and a global cap per (dataset, window) across all
clients. Amounts are `PrivacyLoss` nano-units in the dataset's measure (ε for pure-DP
datasets, ρ for zCDP ones: both compose by addition). Spending is kept per window *index*, so
the ledger also records each dataset's grid (first day, window length) and measure when it is
first capped or charged (`DatasetGrid`), and refuses, in the same transaction as any charge or
cap, a dataset that comes back with another grid or measure: window k, and the unit of every
figure, then keep meaning one person-week in one measure for the dataset's life.
A cap set for window None applies to every window without a cap of its own. A window with no
cap at all has nothing to spend: ledgers fail closed.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from dpflows.budget import PrivacyLoss
from dpflows.errors import InvalidInput

ROLES = ("admin", "planner", "analyst", "oversight")
GENESIS_HASH = "0" * 64


GROUP_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


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
class WindowBudget:
    """One window's caps and spending for one client, its group's allocation, and the shared caps.

    A client is charged against its own cap and, if its sharing group has an allocation in this
    window, against that allocation; a client whose group has none (by default every client, alone)
    spends from the *unallocated pool*: the global cap less every allocation. The global cap stays
    as the backstop. Only `client_*` and `group_*` are the client's to see (`remaining`); the pool
    and the global figures are other groups' spending and never leave the service (issue 17).
    """

    window: int
    client_cap: PrivacyLoss | None
    client_spent: PrivacyLoss
    global_cap: PrivacyLoss | None
    global_spent: PrivacyLoss
    #: the client's sharing group (None: alone)
    group: str | None = None
    #: its group's allocation in this window (None: none, the client spends from the pool)
    group_cap: PrivacyLoss | None = None
    group_spent: PrivacyLoss = field(default_factory=PrivacyLoss.zero)
    #: the unallocated pool: the global cap less all allocations (None without a global cap)
    pool_cap: PrivacyLoss | None = None
    pool_spent: PrivacyLoss = field(default_factory=PrivacyLoss.zero)

    @property
    def allocation_holder(self) -> str:
        """The group_spend row a charge here adds to: the group's allocation, or '' for the pool."""
        return self.group if self.group is not None and self.group_cap is not None else ""

    @property
    def remaining(self) -> PrivacyLoss:
        """What this client may still spend here as far as it can know: its own cap and its group's allocation."""
        if self.client_cap is None or self.global_cap is None:
            return PrivacyLoss.zero()
        left = max(self.client_cap.nanos - self.client_spent.nanos, 0)
        if self.group_cap is not None:
            left = min(left, max(self.group_cap.nanos - self.group_spent.nanos, 0))
        return PrivacyLoss(left)


@dataclass(frozen=True)
class Allocation:
    """A sharing group's share of a dataset's global cap, in one window (None: every window without its own)."""

    group: str
    window: int | None
    cap: PrivacyLoss


def effective_allocations(rows: list[tuple[str, int, int]], window: int) -> dict[str, int]:
    """Each group's allocation in `window` from (group, win, nanos) rows: its own window's, else its
    every-window (-1) row."""
    out: dict[str, int] = {}
    for group, win, nanos in sorted(rows, key=lambda r: r[1]):  # -1 first, the window's own row wins
        if win in (window, -1):
            out[group] = int(nanos)
    return out


def check_allocations(dataset: str, global_caps: dict[int, int], rows: list[tuple[str, int, int]]) -> None:
    """Refuse a configuration whose allocations sum above the global cap in any window.

    `global_caps`: win -> nanos (-1: every window); `rows`: (group, win, nanos) of every allocation
    of the dataset. Windows without a global cap have nothing to spend and are not checked: setting
    their global cap later is."""
    for window in sorted({-1, *global_caps, *(r[1] for r in rows)}):
        cap = global_caps.get(window, global_caps.get(-1))
        if cap is None:
            continue
        total = sum(effective_allocations(rows, window).values())
        if total > cap:
            where = "every window" if window == -1 else f"window {window}"
            raise InvalidInput(
                f"the group allocations on dataset {dataset!r} would sum to {PrivacyLoss(total)} in {where}, above "
                f"its global cap of {PrivacyLoss(cap)}; lower an allocation first or raise the global cap",
                field="group",
            )


@dataclass(frozen=True)
class DatasetGrid:
    """What a dataset's window indices and amounts mean: fixed for the dataset's life."""

    dataset: str
    first_day: str  # ISO date: window k covers [first_day + k·window_days, + window_days)
    window_days: int
    measure: str  # the unit of its caps and spending: "epsilon" or "rho"

    def describe(self) -> str:
        return f"windows of {self.window_days} days from {self.first_day}, budgets in {self.measure}"


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
    def set_cap(self, dataset: str, cap: PrivacyLoss, *, client_id: int | None, window: int | None,
                grid: DatasetGrid | None = None, group: str | None = None) -> None: ...
    def list_allocations(self, dataset: str) -> list[Allocation]: ...
    def window_budgets(self, dataset: str, client_id: int, windows: list[int]) -> list[WindowBudget]: ...
    def total_charged(self, dataset: str, window: int, client_id: int | None = None) -> PrivacyLoss: ...
    def high_water(self) -> tuple[int, int]: ...

    # releases
    def find_answer(self, dataset: str, query_key: str) -> StoredAnswer | None: ...
    def get_answer(self, answer_id: str) -> StoredAnswer | None: ...
    def list_answers(self, dataset: str, kind: str | None = None) -> list[StoredAnswer]: ...
    def find_answer_shapes(self, dataset: str, where: ShapeFilter) -> list[AnswerShape]: ...
    def delete_answers(self, dataset: str, before_window: int, *, keep_client: int | None = None) -> int: ...
    def commit_release(self, request: ReleaseRequest) -> ReleaseReceipt: ...

    # audit
    def append_audit(self, entry: AuditEntry) -> AuditEntry: ...
    def audit_reuse(self, entry: AuditEntry, windows: tuple[int, ...]) -> list[WindowBudget]: ...
    def read_audit(self, *, after_id: int = 0, limit: int = 100) -> list[AuditEntry]: ...

    def close(self) -> None: ...
