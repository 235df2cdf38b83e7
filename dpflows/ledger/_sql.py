"""The SQL ledger shared by SQLite and PostgreSQL: one set of statements, two ways to lock.

Subclasses provide a transaction (`_transaction`), the DDL, and `_lock_spend_rows`, which must
make the spend rows of the windows a release touches exclusive for the rest of the
transaction (SQLite: `BEGIN IMMEDIATE` already holds the write lock; PostgreSQL: `SELECT ...
FOR UPDATE` in a fixed order). Statements use `?` placeholders; subclasses translate.

Tables: datasets (each dataset's window grid and measure, recorded once, see base.DatasetGrid),
clients, api_keys, caps (client_id 0 = global, win -1 = every window), spend (running
totals per dataset, window, client; client_id 0 = all clients), charges (append-only),
answers (unique per dataset and query key; the key includes the releasing client's sharing group),
answer_shapes (what each answer asked, without its values, and the group it was released in: the
index of free derivations, one row written with the answer), audit (append-only, hash-chained),
client_groups (the sharing group of each client put in one; a client without a row is alone).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import Any, Protocol

import orjson

from dpflows.budget import PrivacyLoss
from dpflows.errors import BudgetExceeded, Conflict, InvalidInput, NotFound
from dpflows.ledger.base import (
    GENESIS_HASH,
    ROLES,
    Allocation,
    AnswerShape,
    ApiKeyRecord,
    AuditEntry,
    Client,
    DatasetGrid,
    ReleaseReceipt,
    ReleaseRequest,
    ShapeFilter,
    StoredAnswer,
    WindowBudget,
    check_allocations,
    check_group_name,
    effective_allocations,
    shape_of,
)

GLOBAL = 0  # client_id of the global cap and of the all-clients spend row
EVERY_WINDOW = -1
_CLIENT_SELECT = ("SELECT c.id, c.name, c.role, c.created_at, g.group_name FROM clients c "
                  "LEFT JOIN client_groups g ON g.client_id = c.id")


def utc_now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")


class Cursor(Protocol):
    """The small part of a DB-API cursor the ledger uses."""

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> Any: ...
    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...


class SqlLedger:
    """Ledger logic in portable SQL; see the module docstring for what subclasses add."""

    #: whether `_lock_spend_rows` locks rows (and so needs each window's allocation holder) or the
    #: transaction already holds the only write lock (SQLite)
    _locks_rows = True

    def _transaction(self, *, write: bool) -> AbstractContextManager[Cursor]:
        raise NotImplementedError

    def _lock_spend_rows(self, cur: Cursor, dataset: str, windows: tuple[int, ...], client_id: int,
                         holders: dict[int, str]) -> None:
        raise NotImplementedError

    def _allocation_holders(self, cur: Cursor, dataset: str, windows: tuple[int, ...],
                            client_id: int) -> dict[int, str]:
        """Per window, the group_spend row a charge by this client adds to: its group's (if allocated there) or ''."""
        group = self._client_group(cur, client_id)
        if group is None:
            return dict.fromkeys(windows, "")
        rows = self._allocation_rows(cur, dataset, None)
        return {w: group if group in effective_allocations(rows, w) else "" for w in windows}

    def _is_unique_violation(self, exc: Exception) -> bool:
        raise NotImplementedError

    # -- clients and keys -------------------------------------------------------------------

    def create_client(self, name: str, role: str) -> Client:
        if role not in ROLES:
            raise InvalidInput(f"role={role!r} is not a role; use one of {list(ROLES)}", field="role")
        if not name or len(name) > 128:
            raise InvalidInput(f"name={name!r} must be 1-128 characters", field="name")
        at = utc_now()
        try:
            with self._transaction(write=True) as cur:
                cur.execute("INSERT INTO clients (name, role, created_at) VALUES (?, ?, ?)", (name, role, at))
                cur.execute("SELECT id FROM clients WHERE name = ?", (name,))
                (client_id,) = cur.fetchone()
        except Exception as exc:
            if self._is_unique_violation(exc):
                raise Conflict(f"name={name!r} is taken by another client; choose another name", field="name") from exc
            raise
        return Client(int(client_id), name, role, at)

    def _client_from_row(self, row: Any) -> Client:
        return Client(int(row[0]), row[1], row[2], row[3], row[4])

    def set_group(self, client_id: int, group: str | None) -> Client:
        """Put a client in a sharing group, or (None) back alone; its past answers stay in the group they
        were released in."""
        if group is not None:
            check_group_name(group)
        self.get_client(client_id)
        with self._transaction(write=True) as cur:
            self._lock_allocations(cur, exclusive=True)  # a charge reads the group once, under the shared lock
            if group is None:
                cur.execute("DELETE FROM client_groups WHERE client_id = ?", (client_id,))
            else:
                cur.execute(
                    "INSERT INTO client_groups (client_id, group_name, updated_at) VALUES (?, ?, ?) "
                    "ON CONFLICT (client_id) DO UPDATE SET group_name = excluded.group_name, "
                    "updated_at = excluded.updated_at",
                    (client_id, group, utc_now()),
                )
        return self.get_client(client_id)

    def get_client(self, client_id: int) -> Client:
        with self._transaction(write=False) as cur:
            cur.execute(f"{_CLIENT_SELECT} WHERE c.id = ?", (client_id,))
            row = cur.fetchone()
        if row is None:
            raise NotFound(f"client id={client_id} does not exist", field="client_id")
        return self._client_from_row(row)

    def client_by_name(self, name: str) -> Client:
        with self._transaction(write=False) as cur:
            cur.execute(f"{_CLIENT_SELECT} WHERE c.name = ?", (name,))
            row = cur.fetchone()
        if row is None:
            raise NotFound(f"client name={name!r} does not exist", field="name")
        return self._client_from_row(row)

    def list_clients(self) -> list[Client]:
        with self._transaction(write=False) as cur:
            cur.execute(f"{_CLIENT_SELECT} ORDER BY c.id")
            return [self._client_from_row(r) for r in cur.fetchall()]

    def add_key(self, client_id: int, key_hash: str, prefix: str) -> ApiKeyRecord:
        self.get_client(client_id)
        at = utc_now()
        with self._transaction(write=True) as cur:
            cur.execute(
                "INSERT INTO api_keys (client_id, key_hash, prefix, created_at) VALUES (?, ?, ?, ?)",
                (client_id, key_hash, prefix, at),
            )
            cur.execute("SELECT id FROM api_keys WHERE key_hash = ?", (key_hash,))
            (key_id,) = cur.fetchone()
        return ApiKeyRecord(int(key_id), client_id, prefix, at, None)

    def client_for_key_hash(self, key_hash: str) -> Client | None:
        with self._transaction(write=False) as cur:
            cur.execute(
                "SELECT c.id, c.name, c.role, c.created_at, g.group_name FROM api_keys k "
                "JOIN clients c ON c.id = k.client_id LEFT JOIN client_groups g ON g.client_id = c.id "
                "WHERE k.key_hash = ? AND k.revoked_at IS NULL",
                (key_hash,),
            )
            row = cur.fetchone()
        return None if row is None else self._client_from_row(row)

    def list_keys(self, client_id: int) -> list[ApiKeyRecord]:
        with self._transaction(write=False) as cur:
            cur.execute(
                "SELECT id, client_id, prefix, created_at, revoked_at FROM api_keys WHERE client_id = ? ORDER BY id",
                (client_id,),
            )
            return [ApiKeyRecord(int(r[0]), int(r[1]), r[2], r[3], r[4]) for r in cur.fetchall()]

    def revoke_key(self, key_id: int) -> ApiKeyRecord:
        with self._transaction(write=True) as cur:
            cur.execute("UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL", (utc_now(), key_id))
            cur.execute("SELECT id, client_id, prefix, created_at, revoked_at FROM api_keys WHERE id = ?", (key_id,))
            row = cur.fetchone()
        if row is None:
            raise NotFound(f"key id={key_id} does not exist", field="key_id")
        return ApiKeyRecord(int(row[0]), int(row[1]), row[2], row[3], row[4])

    # -- datasets ---------------------------------------------------------------------------

    def _grid(self, cur: Cursor, dataset: str) -> DatasetGrid | None:
        cur.execute("SELECT dataset, first_day, window_days, measure FROM datasets WHERE dataset = ?", (dataset,))
        row = cur.fetchone()
        return None if row is None else DatasetGrid(row[0], row[1], int(row[2]), row[3])

    def _check_grid(self, cur: Cursor, grid: DatasetGrid) -> DatasetGrid:
        """Record the grid on first use; refuse any other grid or measure for the same dataset."""
        cur.execute(
            "INSERT INTO datasets (dataset, first_day, window_days, measure, registered_at) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (dataset) DO NOTHING",
            (grid.dataset, grid.first_day, grid.window_days, grid.measure, utc_now()),
        )
        recorded = self._grid(cur, grid.dataset)
        assert recorded is not None  # inserted above or already there
        check_grid_matches(recorded, grid)
        return recorded

    def register_dataset(self, grid: DatasetGrid) -> DatasetGrid:
        with self._transaction(write=True) as cur:
            return self._check_grid(cur, grid)

    def dataset_grid(self, dataset: str) -> DatasetGrid | None:
        with self._transaction(write=False) as cur:
            return self._grid(cur, dataset)

    # -- caps and spending ------------------------------------------------------------------

    def set_cap(self, dataset: str, cap: PrivacyLoss, *, client_id: int | None, window: int | None,
                grid: DatasetGrid | None = None, group: str | None = None) -> None:
        """A client's cap (client_id), a sharing group's allocation (group) or the global cap (neither).

        Allocations and the global cap are checked together, in the same transaction as the change:
        the allocations of any window never sum above its global cap (`check_allocations`)."""
        if client_id is not None and group is not None:
            raise InvalidInput("send client_id (a client's cap) or group (a group's allocation), not both",
                               field="group")
        if group is not None:
            check_group_name(group)
        if client_id is not None:
            self.get_client(client_id)
        if window is not None and window < 0:
            raise InvalidInput(f"window={window} must be 0 or more (or omitted for every window)", field="window")
        cid = GLOBAL if client_id is None else client_id
        win = EVERY_WINDOW if window is None else window
        with self._transaction(write=True) as cur:
            check_cap_unit(self._check_grid(cur, grid) if grid is not None else self._grid(cur, dataset), cap)
            if client_id is None:
                self._lock_allocations(cur, exclusive=True)
            if group is not None:
                cur.execute(
                    "INSERT INTO group_caps (group_name, dataset, win, cap_nanos, updated_at) VALUES (?, ?, ?, ?, ?) "
                    "ON CONFLICT (group_name, dataset, win) DO UPDATE SET cap_nanos = excluded.cap_nanos, "
                    "updated_at = excluded.updated_at",
                    (group, dataset, win, cap.nanos, utc_now()),
                )
            else:
                cur.execute(
                    "INSERT INTO caps (client_id, dataset, win, cap_nanos, updated_at) VALUES (?, ?, ?, ?, ?) "
                    "ON CONFLICT (client_id, dataset, win) DO UPDATE SET cap_nanos = excluded.cap_nanos, "
                    "updated_at = excluded.updated_at",
                    (cid, dataset, win, cap.nanos, utc_now()),
                )
            if client_id is None:
                cur.execute("SELECT win, cap_nanos FROM caps WHERE client_id = ? AND dataset = ?", (GLOBAL, dataset))
                global_caps = {int(w): int(n) for w, n in cur.fetchall()}
                check_allocations(dataset, global_caps, self._allocation_rows(cur, dataset, None))

    def _allocation_rows(self, cur: Cursor, dataset: str, window: int | None) -> list[tuple[str, int, int]]:
        """(group, win, nanos) of the dataset's allocations: all, or those that can apply to `window`."""
        if window is None:
            cur.execute("SELECT group_name, win, cap_nanos FROM group_caps WHERE dataset = ?", (dataset,))
        else:
            cur.execute("SELECT group_name, win, cap_nanos FROM group_caps WHERE dataset = ? AND win IN (?, ?)",
                        (dataset, window, EVERY_WINDOW))
        return [(r[0], int(r[1]), int(r[2])) for r in cur.fetchall()]

    def list_allocations(self, dataset: str) -> list[Allocation]:
        """Every group allocation set on a dataset (admins' view), by group then window."""
        with self._transaction(write=False) as cur:
            rows = self._allocation_rows(cur, dataset, None)
        return [Allocation(g, None if w == EVERY_WINDOW else w, PrivacyLoss(n)) for g, w, n in sorted(rows)]

    def _lock_allocations(self, cur: Cursor, *, exclusive: bool) -> None:
        """Hold the dataset's allocations still for the transaction: exclusive to change them, shared to
        charge. SQLite's write lock already does; PostgreSQL takes an advisory lock."""

    def _client_group(self, cur: Cursor, client_id: int) -> str | None:
        cur.execute("SELECT group_name FROM client_groups WHERE client_id = ?", (client_id,))
        row = cur.fetchone()
        return None if row is None else str(row[0])

    def _group_spent(self, cur: Cursor, dataset: str, window: int, holder: str) -> PrivacyLoss:
        cur.execute("SELECT nanos FROM group_spend WHERE dataset = ? AND win = ? AND group_name = ?",
                    (dataset, window, holder))
        row = cur.fetchone()
        return PrivacyLoss(0 if row is None else int(row[0]))

    def _cap(self, cur: Cursor, dataset: str, window: int, client_id: int) -> PrivacyLoss | None:
        cur.execute(
            "SELECT cap_nanos FROM caps WHERE client_id = ? AND dataset = ? AND win IN (?, ?) "
            "ORDER BY win DESC LIMIT 1",
            (client_id, dataset, window, EVERY_WINDOW),
        )
        row = cur.fetchone()
        return None if row is None else PrivacyLoss(int(row[0]))

    def _spent(self, cur: Cursor, dataset: str, window: int, client_id: int) -> PrivacyLoss:
        cur.execute(
            "SELECT nanos FROM spend WHERE dataset = ? AND win = ? AND client_id = ?", (dataset, window, client_id)
        )
        row = cur.fetchone()
        return PrivacyLoss(0 if row is None else int(row[0]))

    def _budgets(self, cur: Cursor, dataset: str, client_id: int, windows: list[int]) -> list[WindowBudget]:
        group = self._client_group(cur, client_id)
        rows = self._allocation_rows(cur, dataset, None) if windows else []  # one read for all windows
        out = []
        for w in windows:
            global_cap = self._cap(cur, dataset, w, GLOBAL)
            allocations = effective_allocations(rows, w)
            group_cap = None if group is None or group not in allocations else PrivacyLoss(allocations[group])
            group_spent = (self._group_spent(cur, dataset, w, group) if group is not None and group_cap is not None
                           else PrivacyLoss.zero())
            unallocated = None if global_cap is None else max(global_cap.nanos - sum(allocations.values()), 0)
            out.append(WindowBudget(
                window=w,
                client_cap=self._cap(cur, dataset, w, client_id),
                client_spent=self._spent(cur, dataset, w, client_id),
                global_cap=global_cap,
                global_spent=self._spent(cur, dataset, w, GLOBAL),
                group=group,
                group_cap=group_cap,
                group_spent=group_spent,
                pool_cap=None if unallocated is None else PrivacyLoss(unallocated),
                pool_spent=self._group_spent(cur, dataset, w, "") if group_cap is None else PrivacyLoss.zero(),
            ))
        return out

    def window_budgets(self, dataset: str, client_id: int, windows: list[int]) -> list[WindowBudget]:
        with self._transaction(write=False) as cur:
            return self._budgets(cur, dataset, client_id, windows)

    def high_water(self) -> tuple[int, int]:
        """(charge rows, audit rows): both only ever grow, so a ledger holding fewer was restored from the past."""
        with self._transaction(write=False) as cur:
            cur.execute("SELECT (SELECT COUNT(*) FROM charges), (SELECT COUNT(*) FROM audit)")
            charges, audit = cur.fetchone()
        return int(charges), int(audit)

    def total_charged(self, dataset: str, window: int, client_id: int | None = None) -> PrivacyLoss:
        """Sum of the append-only charge rows (not the running totals): the audit of spending."""
        with self._transaction(write=False) as cur:
            if client_id is None:
                cur.execute(
                    "SELECT COALESCE(SUM(nanos), 0) FROM charges WHERE dataset = ? AND win = ?", (dataset, window)
                )
            else:
                cur.execute(
                    "SELECT COALESCE(SUM(nanos), 0) FROM charges WHERE dataset = ? AND win = ? AND client_id = ?",
                    (dataset, window, client_id),
                )
            return PrivacyLoss(int(cur.fetchone()[0]))

    # -- releases ---------------------------------------------------------------------------

    def _answer_from_row(self, row: Any) -> StoredAnswer:
        # orjson: a 10,000-key payload parses ~5× faster than with the stdlib, on every reuse
        return StoredAnswer(row[0], row[1], row[2], int(row[3]), orjson.loads(row[4]), row[5])

    def _find_answer(self, cur: Cursor, dataset: str, query_key: str) -> StoredAnswer | None:
        cur.execute(
            "SELECT answer_id, dataset, query_key, client_id, payload, created_at FROM answers "
            "WHERE dataset = ? AND query_key = ?",
            (dataset, query_key),
        )
        row = cur.fetchone()
        return None if row is None else self._answer_from_row(row)

    def find_answer(self, dataset: str, query_key: str) -> StoredAnswer | None:
        with self._transaction(write=False) as cur:
            return self._find_answer(cur, dataset, query_key)

    def get_answer(self, answer_id: str) -> StoredAnswer | None:
        with self._transaction(write=False) as cur:
            cur.execute(
                "SELECT answer_id, dataset, query_key, client_id, payload, created_at FROM answers WHERE answer_id = ?",
                (answer_id,),
            )
            row = cur.fetchone()
        return None if row is None else self._answer_from_row(row)

    def list_answers(self, dataset: str, kind: str | None = None) -> list[StoredAnswer]:
        """Released answers of a dataset, oldest first: candidates for free derived answers.

        The kind lives inside the JSON payload (``payload["query"]["kind"]``), so it is filtered
        here rather than in SQL: portable across SQLite and PostgreSQL, no schema change.
        """
        with self._transaction(write=False) as cur:
            cur.execute(
                "SELECT answer_id, dataset, query_key, client_id, payload, created_at FROM answers "
                "WHERE dataset = ? ORDER BY created_at, answer_id",
                (dataset,),
            )
            rows = cur.fetchall()
        answers = [self._answer_from_row(r) for r in rows]
        return [a for a in answers if kind is None or (a.payload.get("query") or {}).get("kind") == kind]

    def find_answer_shapes(self, dataset: str, where: ShapeFilter) -> list[AnswerShape]:
        """Shapes of the stored answers `where` admits, ranked in SQL (`ShapeFilter`); payloads untouched.

        The index (dataset, kind, data_version, start_day, end_day, zoning, noise_scale) narrows
        the rows to one question's dates; the masks are tested in SQL, and ROW_NUMBER keeps the
        best `per_zoning` of each zoning, so at most `limit` rows leave the database however many
        answers a client has stored.
        """
        if not where.zonings or not where.mechanisms or where.limit < 1 or where.per_zoning < 1:
            return []
        zonings = ", ".join("?" * len(where.zonings))
        mechanisms = ", ".join("?" * len(where.mechanisms))
        hours = "hours_mask = ?" if where.hours_exact else "(hours_mask & ?) = ?"
        weekdays = "weekdays_mask = ?" if where.weekdays_exact else "(weekdays_mask & ?) = ?"
        params: list[Any] = [dataset, where.kind, where.data_version, where.start, where.end, where.unit,
                             where.max_loss_nanos, *where.zonings, *where.mechanisms]
        params += [where.hours_mask] if where.hours_exact else [where.hours_mask, where.hours_mask]
        params += [where.weekdays_mask] if where.weekdays_exact else [where.weekdays_mask, where.weekdays_mask]
        pattern = ""
        if where.pattern is not None:
            pattern = " AND measure = ? AND zone_id = ?"
            params += list(where.pattern)
        params.append(where.group)
        params += [where.per_zoning, where.limit]
        with self._transaction(write=False) as cur:
            cur.execute(
                f"SELECT {_SHAPE_COLUMNS} FROM ("  # noqa: S608 -- only placeholders are interpolated
                f"SELECT {_SHAPE_COLUMNS}, ROW_NUMBER() OVER (PARTITION BY zoning "
                "ORDER BY noise_scale, created_at, answer_id) AS pos FROM answer_shapes "
                "WHERE dataset = ? AND kind = ? AND data_version = ? AND start_day = ? AND end_day = ? AND unit = ? "
                f"AND loss_nanos <= ? AND zoning IN ({zonings}) AND mechanism IN ({mechanisms}) "
                f"AND {hours} AND {weekdays}{pattern} AND share_group = ?"
                ") ranked WHERE pos <= ? ORDER BY noise_scale, created_at, answer_id LIMIT ?",
                tuple(params),
            )
            return [_shape_from_row(r) for r in cur.fetchall()]

    def commit_release(self, request: ReleaseRequest) -> ReleaseReceipt:
        """Check every cap, then charge, store and audit in one transaction; or do nothing."""
        windows = tuple(sorted(set(request.windows)))
        with self._transaction(write=True) as cur:
            if request.grid is not None:
                self._check_grid(cur, request.grid)
            self._lock_allocations(cur, exclusive=False)
            holders = (self._allocation_holders(cur, request.dataset, windows, request.client_id)
                       if self._locks_rows else {})
            self._lock_spend_rows(cur, request.dataset, windows, request.client_id, holders)
            # An identical query released meanwhile (another worker or host) wins: reuse it.
            existing = self._find_answer(cur, request.dataset, request.query_key)
            if existing is not None:
                self._append_audit(cur, _with_reuse(request.audit, existing.answer_id))
                return ReleaseReceipt(existing, reused=True, charged=PrivacyLoss.zero(),
                                      budgets=tuple(self._budgets(cur, request.dataset, request.client_id,
                                                                  list(windows))))
            # Check, without changing anything ...
            budgets = self._budgets(cur, request.dataset, request.client_id, list(windows))
            for budget in budgets:
                _check_budget(budget, request)
            # ... then commit: charge rows, running totals, the answer, the audit row.
            at = utc_now()
            for budget in budgets:
                cur.execute(
                    "INSERT INTO group_spend (dataset, win, group_name, nanos) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (dataset, win, group_name) DO UPDATE SET nanos = group_spend.nanos + excluded.nanos",
                    (request.dataset, budget.window, budget.allocation_holder, request.epsilon.nanos),
                )
            for w in windows:
                cur.execute(
                    "INSERT INTO charges (client_id, dataset, win, nanos, answer_id, at) VALUES (?, ?, ?, ?, ?, ?)",
                    (request.client_id, request.dataset, w, request.epsilon.nanos, request.answer_id, at),
                )
                for cid in (request.client_id, GLOBAL):
                    cur.execute(
                        "INSERT INTO spend (dataset, win, client_id, nanos) VALUES (?, ?, ?, ?) "
                        "ON CONFLICT (dataset, win, client_id) DO UPDATE SET nanos = spend.nanos + excluded.nanos",
                        (request.dataset, w, cid, request.epsilon.nanos),
                    )
            cur.execute(
                "INSERT INTO answers (answer_id, dataset, query_key, client_id, payload, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (request.answer_id, request.dataset, request.query_key, request.client_id,
                 _payload_text(request.payload), at),
            )
            self._append_audit(cur, request.audit)
            answer = StoredAnswer(request.answer_id, request.dataset, request.query_key, request.client_id,
                                  request.payload, at)
            _insert_shape(cur, answer, request.share_group)
            budgets = self._budgets(cur, request.dataset, request.client_id, list(windows))
            return ReleaseReceipt(answer, reused=False, charged=request.epsilon, budgets=tuple(budgets))

    # -- audit ------------------------------------------------------------------------------

    def _append_audit(self, cur: Cursor, entry: AuditEntry) -> AuditEntry:
        self._lock_audit_tail(cur)
        cur.execute("SELECT row_hash FROM audit ORDER BY id DESC LIMIT 1")
        row = cur.fetchone()
        prev = GENESIS_HASH if row is None else row[0]
        at = utc_now()
        row_hash = entry.chain_hash(prev, at)
        cur.execute(
            "INSERT INTO audit (at, client_id, action, dataset, query, epsilon_nanos, outcome, answer_id, "
            "prev_hash, row_hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (at, entry.client_id, entry.action, entry.dataset,
             None if entry.query is None else json.dumps(entry.query, sort_keys=True, separators=(",", ":")),
             entry.epsilon.nanos, entry.outcome, entry.answer_id, prev, row_hash),
        )
        return entry

    def _lock_audit_tail(self, cur: Cursor) -> None:
        """Serialize appends so the chain has one tail; SQLite's write lock already does."""

    def append_audit(self, entry: AuditEntry) -> AuditEntry:
        with self._transaction(write=True) as cur:
            return self._append_audit(cur, entry)

    def audit_reuse(self, entry: AuditEntry, windows: tuple[int, ...]) -> list[WindowBudget]:
        """Audit a free (reused or derived) answer and read the client's budgets: one transaction."""
        if entry.dataset is None or entry.client_id is None:
            raise InvalidInput("a reuse audit row names its dataset and client", field="dataset")
        with self._transaction(write=True) as cur:
            self._append_audit(cur, entry)
            return self._budgets(cur, entry.dataset, entry.client_id, sorted(set(windows)))

    def read_audit(self, *, after_id: int = 0, limit: int = 100) -> list[AuditEntry]:
        if not 1 <= limit <= 1000:
            raise InvalidInput(f"limit={limit} must be between 1 and 1000", field="limit")
        with self._transaction(write=False) as cur:
            cur.execute(
                "SELECT id, at, client_id, action, dataset, query, epsilon_nanos, outcome, answer_id, prev_hash, "
                "row_hash FROM audit WHERE id > ? ORDER BY id LIMIT ?",
                (after_id, limit),
            )
            rows = cur.fetchall()
        return [
            AuditEntry(
                id=int(r[0]), at=r[1], client_id=None if r[2] is None else int(r[2]), action=r[3], dataset=r[4],
                query=None if r[5] is None else json.loads(r[5]), epsilon=PrivacyLoss(int(r[6])), outcome=r[7],
                answer_id=r[8], prev_hash=r[9], row_hash=r[10],
            )
            for r in rows
        ]

    def iter_audit(self, batch: int = 1000) -> Iterator[AuditEntry]:
        after = 0
        while rows := self.read_audit(after_id=after, limit=batch):
            yield from rows
            after = rows[-1].id


def check_grid_matches(recorded: DatasetGrid, grid: DatasetGrid) -> None:
    """Window k of a dataset is one calendar span in one measure for life: anything else is refused."""
    if recorded != grid:
        raise Conflict(
            f"dataset {grid.dataset!r} has budgets recorded for {recorded.describe()}, but its data now has "
            f"{grid.describe()}; spent budget would be read against other weeks or another unit. Re-ingest with "
            f"--first-day {recorded.first_day} --window-days {recorded.window_days} and its first accounting, "
            "or ingest this data under a new dataset name",
            field="dataset",
        )


def check_cap_unit(recorded: DatasetGrid | None, cap: PrivacyLoss) -> None:
    """A cap is set in its dataset's measure: an ε cap never becomes a ρ cap, nor the reverse."""
    if recorded is not None and type(cap) is not PrivacyLoss and cap.unit != recorded.measure:
        raise InvalidInput(
            f"{cap.unit}={cap} cannot cap dataset {recorded.dataset!r}, whose budgets are in {recorded.measure}; "
            f"send the cap as {recorded.measure}",
            field=cap.unit,
        )


_SHAPE_COLUMNS = ("answer_id, dataset, kind, data_version, mechanism, start_day, end_day, zoning, hours_mask, "
                  "weekdays_mask, measure, zone_id, unit, loss_nanos, noise_scale, created_at, share_group")


def _shape_from_row(row: Any) -> AnswerShape:
    return AnswerShape(row[0], row[1], row[2], row[3], row[4], row[5], row[6], row[7], int(row[8]), int(row[9]),
                       row[10], row[11], row[12], int(row[13]), float(row[14]), row[15], row[16])


def _insert_shape(cur: Cursor, answer: StoredAnswer, share_group: str | None) -> bool:
    """Index what `answer` asked (answer_shapes), in the sharing group it was released in; False for
    answers without a shape. share_group None: a migration step older than groups (the column is
    filled by `rekey_answers`, a later step)."""
    shape = shape_of(answer)
    if shape is None:
        return False
    group_column, group_value = ("", ()) if share_group is None else (", share_group", (share_group,))
    cur.execute(
        "INSERT INTO answer_shapes (answer_id, dataset, kind, data_version, mechanism, start_day, end_day, zoning, "  # noqa: S608 -- a constant column name and placeholders only
        f"hours_mask, weekdays_mask, measure, zone_id, unit, loss_nanos, noise_scale, created_at{group_column}) "
        f"VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?{', ?' * len(group_value)})",
        (shape.answer_id, shape.dataset, shape.kind, shape.data_version, shape.mechanism, shape.start, shape.end,
         shape.zoning, shape.hours_mask, shape.weekdays_mask, shape.measure, shape.zone, shape.unit,
         shape.loss_nanos, shape.scale, shape.created_at, *group_value),
    )
    return True


def group_query_key(query_key: str, share_group: str) -> str:
    """The reuse key of a query within one sharing group: an answer is found again only by its group.

    A function of the group-free key so that a migration can re-key stored answers (`rekey_answers`)."""
    return hashlib.sha256(f"{query_key}|{share_group}".encode()).hexdigest()


def rekey_answers(cur: Cursor, batch: int = 500) -> int:
    """Migration (issue 17): before sharing groups every answer was reused by everyone. Each stored answer
    is moved into the group of the client who released it, then alone (`client:<id>`): its reuse key
    becomes `group_query_key(key, group)` and its shape row names the group. Answers of dpflows' own
    principals (`system:`, the bounding-report charges, keyed by ingestion) keep their keys. Returns
    answers re-keyed."""
    done, after = 0, ""
    while True:
        cur.execute("SELECT a.answer_id, a.query_key, a.client_id FROM answers a JOIN clients c ON c.id = a.client_id "
                    "WHERE a.answer_id > ? AND c.name NOT LIKE 'system:%' ORDER BY a.answer_id LIMIT ?",
                    (after, batch))
        rows = cur.fetchall()
        if not rows:
            return done
        for answer_id, key, client_id in rows:
            group = f"client:{int(client_id)}"
            cur.execute("UPDATE answers SET query_key = ? WHERE answer_id = ?",
                        (group_query_key(key, group), answer_id))
            cur.execute("UPDATE answer_shapes SET share_group = ? WHERE answer_id = ?", (group, answer_id))
            done += 1
        after = rows[-1][0]


def backfill_answer_shapes(cur: Cursor, batch: int = 500) -> int:
    """Migration: index answers stored before answer_shapes existed, parsing each payload once, in
    batches (a large ledger never sits in memory at once). Returns how many rows were added."""
    added, after = 0, ""
    while True:
        cur.execute(
            "SELECT a.answer_id, a.dataset, a.query_key, a.client_id, a.payload, a.created_at FROM answers a "
            "LEFT JOIN answer_shapes s ON s.answer_id = a.answer_id "
            "WHERE s.answer_id IS NULL AND a.answer_id > ? ORDER BY a.answer_id LIMIT ?",
            (after, batch),
        )
        rows = cur.fetchall()
        if not rows:
            return added
        for row in rows:
            added += _insert_shape(cur, StoredAnswer(row[0], row[1], row[2], int(row[3]), orjson.loads(row[4]),
                                                     row[5]), None)
        after = rows[-1][0]


def _with_reuse(entry: AuditEntry, answer_id: str) -> AuditEntry:
    return AuditEntry(action=entry.action, outcome="reused", client_id=entry.client_id, dataset=entry.dataset,
                      query=entry.query, epsilon=PrivacyLoss.zero(), answer_id=answer_id)


def _check_budget(budget: WindowBudget, request: ReleaseRequest) -> None:
    """Raise BudgetExceeded naming the window and the cap; exact integer comparison.

    Order: the client's own cap, then its group's allocation (both the client's to know, with
    figures), then the global cap and, for a client without an allocation, the unallocated pool:
    those hold other groups' spending, so their refusals say what happened and what to do but give
    no figure (issue 17)."""
    w = budget.window
    if budget.client_cap is None:
        raise BudgetExceeded(
            f"no budget cap is set for this client on dataset {request.dataset!r} window {w}; "
            "ask an admin to set one (dpflows admin set-cap)",
            field="dataset",
        )
    if budget.global_cap is None:
        raise BudgetExceeded(
            f"no global cap is set on dataset {request.dataset!r} window {w}; ask an admin to set one "
            "(dpflows admin set-cap --global)",
            field="dataset",
        )
    x = request.epsilon.nanos
    if budget.client_spent.nanos + x > budget.client_cap.nanos:
        left = PrivacyLoss(max(budget.client_cap.nanos - budget.client_spent.nanos, 0))
        raise BudgetExceeded(
            f"{request.epsilon.unit}={request.epsilon} exceeds your remaining budget of {left} "
            f"(cap {budget.client_cap}) on dataset {request.dataset!r} window {w}; ask for less or wait for an "
            "admin to raise the cap",
            field=request.epsilon.unit,
            details={"window": w, "remaining": left.to_json()},
        )
    if budget.group_cap is not None:
        if budget.group_spent.nanos + x > budget.group_cap.nanos:
            left = PrivacyLoss(max(budget.group_cap.nanos - budget.group_spent.nanos, 0))
            raise BudgetExceeded(
                f"{request.epsilon.unit}={request.epsilon} exceeds the remaining allocation of {left} of your group "
                f"{budget.group!r} (allocation {budget.group_cap}) on dataset {request.dataset!r} window {w}; ask "
                "for less or ask an admin to raise the allocation",
                field=request.epsilon.unit,
                details={"window": w, "remaining": left.to_json()},
            )
    if budget.global_spent.nanos + x > budget.global_cap.nanos:
        raise BudgetExceeded(
            f"{request.epsilon.unit}={request.epsilon} does not fit in what remains of the global budget on "
            f"dataset {request.dataset!r} window {w}, shared by all clients; ask for less",
            field=request.epsilon.unit,
            details={"window": w},
        )
    if budget.group_cap is None and budget.pool_cap is not None and budget.pool_spent.nanos + x > budget.pool_cap.nanos:
        raise BudgetExceeded(
            f"{request.epsilon.unit}={request.epsilon} does not fit in what remains of the budget shared by "
            f"clients without a group allocation on dataset {request.dataset!r} window {w}; ask for less, or ask "
            "an admin for a group allocation (dpflows admin set-cap --group)",
            field=request.epsilon.unit,
            details={"window": w},
        )


def _payload_text(payload: dict[str, Any]) -> str:
    """A stored answer's JSON text: orjson (a 10,000-key payload encodes ~10× faster), the same
    compact JSON as before; the stdlib for what orjson refuses (integers beyond 64 bits)."""
    try:
        return orjson.dumps(payload).decode()
    except TypeError:
        return json.dumps(payload, separators=(",", ":"))
