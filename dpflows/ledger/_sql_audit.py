"""The SQL ledger's append-only, hash-chained audit log (a part of `SqlLedger`).

Rows of charged answers and of refusals are appended inside their own transaction; rows of free
answers (reused or derived) are queued and group-committed (dpflows.ledger.audit_queue): the same
append, a batch per transaction.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager

from dpflows.budget import PrivacyLoss
from dpflows.errors import InvalidInput
from dpflows.ledger._sql_base import Cursor, SqlBase, utc_now
from dpflows.ledger.audit_queue import AuditQueue
from dpflows.ledger.base import (
    GENESIS_HASH,
    AuditEntry,
    WindowBudget,
)


class AuditLog(SqlBase):
    """Appends under one tail lock and reads in pages; rows never change once written."""

    #: the group commit of free answers' rows: at most this long after the answer, at most this many queued
    audit_window_s = 0.2
    audit_queue_rows = 1000
    _audit_queue: AuditQueue | None = None

    # -- audit ------------------------------------------------------------------------------

    def _append_audit(self, cur: Cursor, entry: AuditEntry) -> AuditEntry:
        """Append `entry`, after the rows this process queued when the transaction rides `_queued_audit`."""
        queued = [] if self._audit_queue is None else self._audit_queue.riders()
        self._append_audit_rows(cur, [*queued, entry])
        return entry

    @contextmanager
    def _queued_audit(self) -> Iterator[None]:
        """Wrap a write transaction that appends an audit row: the rows queued by this process are written
        in it, first (they stay queued if it fails), so one process's rows keep the order of its events."""
        if self._audit_queue is None:
            yield
            return
        with self._audit_queue.riding():
            yield

    def _append_audit_rows(self, cur: Cursor, entries: list[AuditEntry]) -> None:
        """Chain `entries`, in order, onto the tail: one tail lock and one read of the tail for all."""
        self._lock_audit_tail(cur)
        cur.execute("SELECT row_hash FROM audit ORDER BY id DESC LIMIT 1")
        row = cur.fetchone()
        prev = GENESIS_HASH if row is None else row[0]
        at = utc_now()
        for entry in entries:
            row_hash = entry.chain_hash(prev, at)
            cur.execute(
                "INSERT INTO audit (at, client_id, action, dataset, query, epsilon_nanos, outcome, answer_id, "
                "prev_hash, row_hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (at, entry.client_id, entry.action, entry.dataset,
                 None if entry.query is None else json.dumps(entry.query, sort_keys=True, separators=(",", ":")),
                 entry.loss.nanos, entry.outcome, entry.answer_id, prev, row_hash),
            )
            prev = row_hash

    def configure_audit_queue(self, *, window_s: float, max_rows: int) -> None:
        """How long a free answer's audit row may wait for its group commit, and how many may wait."""
        if self._audit_queue is not None:
            self._audit_queue.flush()
        self.audit_window_s, self.audit_queue_rows = window_s, max_rows
        self._audit_queue = None

    def _queue(self) -> AuditQueue:
        if self._audit_queue is None:
            self._audit_queue = AuditQueue(self._write_audit_batch, window_s=self.audit_window_s,
                                           max_rows=self.audit_queue_rows)
        return self._audit_queue

    def _write_audit_batch(self, entries: list[AuditEntry]) -> None:
        with self._transaction(write=True) as cur:
            self._append_audit_rows(cur, entries)

    def queue_audit(self, entry: AuditEntry) -> None:
        """Audit a free answer in the next group commit (at most `audit_window_s` from now)."""
        self._queue().put(entry)

    def flush_audit(self) -> int:
        """Write the queued rows now; how many were written."""
        return 0 if self._audit_queue is None else self._audit_queue.flush()

    def _close_audit_queue(self) -> None:
        if self._audit_queue is not None:
            self._audit_queue.close()

    def _lock_audit_tail(self, cur: Cursor) -> None:
        """Serialize appends so the chain has one tail; SQLite's write lock already does."""

    def append_audit(self, entry: AuditEntry) -> AuditEntry:
        with self._queued_audit(), self._transaction(write=True) as cur:
            return self._append_audit(cur, entry)

    def audit_reuse(self, entry: AuditEntry, windows: tuple[int, ...]) -> list[WindowBudget]:
        """Audit a free (reused or derived) answer in the next group commit and read the client's budgets (one read)."""
        if entry.dataset is None or entry.client_id is None:
            raise InvalidInput("a reuse audit row names its dataset and client", field="dataset")
        with self._transaction(write=False) as cur:
            budgets = self._budgets(cur, entry.dataset, entry.client_id, sorted(set(windows)))
        self.queue_audit(entry)
        return budgets

    def read_audit(self, *, after_id: int = 0, limit: int = 100) -> list[AuditEntry]:
        if not 1 <= limit <= 1000:
            raise InvalidInput(f"limit={limit} must be between 1 and 1000", field="limit")
        self.flush_audit()  # what this process queued is part of what it reads
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
