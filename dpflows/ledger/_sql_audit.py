"""The SQL ledger's append-only, hash-chained audit log (a part of `SqlLedger`)."""

from __future__ import annotations

import json
from collections.abc import Iterator

from dpflows.budget import PrivacyLoss
from dpflows.errors import InvalidInput
from dpflows.ledger._sql_base import Cursor, SqlBase, utc_now
from dpflows.ledger.base import (
    GENESIS_HASH,
    AuditEntry,
    WindowBudget,
)


class AuditLog(SqlBase):
    """Appends under one tail lock and reads in pages; rows never change once written."""

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
             entry.loss.nanos, entry.outcome, entry.answer_id, prev, row_hash),
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
                query=None if r[5] is None else json.loads(r[5]), loss=PrivacyLoss(int(r[6])), outcome=r[7],
                answer_id=r[8], prev_hash=r[9], row_hash=r[10],
            )
            for r in rows
        ]

    def iter_audit(self, batch: int = 1000) -> Iterator[AuditEntry]:
        after = 0
        while rows := self.read_audit(after_id=after, limit=batch):
            yield from rows
            after = rows[-1].id


def _with_reuse(entry: AuditEntry, answer_id: str) -> AuditEntry:
    return AuditEntry(action=entry.action, outcome="reused", client_id=entry.client_id, dataset=entry.dataset,
                      query=entry.query, loss=PrivacyLoss.zero(), answer_id=answer_id)
