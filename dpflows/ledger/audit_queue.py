"""Group commit for the audit rows of free answers (reused or derived): batches, not one fsync each.

A reused or derived answer charges nothing: its budget was charged, durably and atomically, when
the answer it repeats or sums was released (rule 3). Its audit row records that a client was
shown an already charged answer again, so it need not be on disk before the answer leaves the
process; it is queued here and written with the others of its process by one ledger transaction
(one fsync), in the order queued, through the same hash-chained append as every audit row
(`AuditLog._append_audit`: the chain keeps one tail across workers and hosts, and `dpflows admin
verify-audit` checks it as before). A row is written

- at most `window_s` after it was queued, by a background thread of the process;
- at once, in the request's own thread, when `max_rows` rows are already waiting (a burst waits
  on the disk rather than growing the queue);
- with the next audit row the process appends in a transaction of its own (a charge, a refusal, an
  admin action), in that transaction and before that row: rows of one process stay in the order
  of their events;
- when the process exits normally (atexit), when its ledger is closed, and before the process
  reads the audit log (so what a process reads includes what it queued).

Each row is stamped when it is written (at most `window_s` after the answer, while the ledger
answers), so timestamps stay in chain order. What a crash can lose (SIGKILL, power cut): the rows
queued and not yet committed, at most `max_rows` per process and, while the ledger answers, only
those of the last `window_s`. A row is never dropped on a write error: it stays queued and is
retried (backing off to `MAX_RETRY_SECONDS`); once `max_rows` wait, further reuses fail with
`Unavailable`, as they do when the ledger cannot be reached at all. Rows are never copied into a
forked child (it starts with an empty queue), so no row is written twice.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from dpflows.ledger.base import AuditEntry

log = logging.getLogger("dpflows.ledger.audit")

#: The longest pause between retries of a batch the ledger refused.
MAX_RETRY_SECONDS = 30.0
#: How often an idle flusher looks whether its queue still exists.
IDLE_CHECK_SECONDS = 30.0

_LIVE: weakref.WeakSet[AuditQueue] = weakref.WeakSet()


class AuditQueue:
    """Audit rows waiting for one transaction that writes them all; see the module docstring."""

    def __init__(self, write: Callable[[list[AuditEntry]], None], *, window_s: float, max_rows: int) -> None:
        if not window_s > 0 or max_rows < 1:
            raise ValueError(f"an audit queue needs a positive window (got {window_s} s) and room for a row "
                             f"(got {max_rows})")
        self.window_s = window_s
        self.max_rows = max_rows
        self._write = write
        self._pending: list[AuditEntry] = []
        self._first_at = 0.0  # monotonic time the oldest pending row was queued
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._flushing = threading.Lock()  # one batch at a time, so rows are written once and in order
        self._riding = threading.local()  # per thread: rows an open transaction has taken (see `riding`)
        self._pid = os.getpid()
        self._thread: threading.Thread | None = None
        self._closed = False
        self.batches = 0  # transactions written (for tests and benchmarks)
        _LIVE.add(self)

    def _check_fork(self) -> None:
        """A forked child starts empty: its parent writes its own rows."""
        if self._pid != os.getpid():
            self._pid = os.getpid()
            self._pending = []
            self._thread = None
            self._lock = threading.Lock()
            self._wake = threading.Condition(self._lock)
            self._flushing = threading.Lock()

    def __len__(self) -> int:
        return len(self._pending)

    def put(self, entry: AuditEntry) -> None:
        """Queue one row; when the queue is full, write it first (raises Unavailable if that fails)."""
        self._check_fork()
        if self._closed:
            self._write([entry])  # a closed queue writes through
            return
        while True:
            with self._lock:
                if len(self._pending) < self.max_rows:
                    self._pending.append(entry)
                    if len(self._pending) == 1:  # the flusher sleeps while the queue is empty: wake it once
                        self._first_at = time.monotonic()
                        self._wake.notify()
                    break
            self.flush()  # full: this request waits for the disk
        self._start()

    def flush(self) -> int:
        """Write every queued row in one transaction now; the number written. Rows stay queued on failure."""
        self._check_fork()
        with self._flushing:
            with self._lock:
                batch = list(self._pending)
            if not batch:
                return 0
            self._write(batch)
            with self._lock:
                del self._pending[:len(batch)]  # only flushes remove rows, one at a time, from the front
                if self._pending:
                    self._first_at = time.monotonic()
            self.batches += 1
            return len(batch)

    @contextmanager
    def riding(self) -> Iterator[None]:
        """Around a write transaction of this thread: the rows queued so far may ride along in it (the
        transaction takes them with `riders`); they leave the queue only if it commits. Never waits:
        while the flusher is writing, nothing rides (the flusher holds the older rows)."""
        self._check_fork()
        if not self._flushing.acquire(blocking=False):
            yield
            return
        self._riding.taken = 0
        self._riding.open = True
        try:
            yield
            with self._lock:
                del self._pending[:self._riding.taken]  # written, and committed
                if self._pending:
                    self._first_at = time.monotonic()
        finally:
            self._riding.open = False
            self._flushing.release()

    def riders(self) -> list[AuditEntry]:
        """Inside `riding`, once: the queued rows, to write before the transaction's own row."""
        if not getattr(self._riding, "open", False) or self._riding.taken:
            return []
        with self._lock:
            batch = list(self._pending)
        self._riding.taken = len(batch)
        return batch

    def close(self) -> None:
        """Write what is queued (errors are raised) and write any later row at once."""
        self._closed = True
        self.flush()
        with self._lock:
            self._wake.notify_all()

    def _start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._thread = threading.Thread(target=_run, args=(weakref.ref(self), self._wake),
                                            name="dpflows-audit-queue", daemon=True)
            self._thread.start()

    def _due_in(self) -> float | None:
        """Seconds until the oldest queued row is due (<= 0: now); None when nothing is queued."""
        if not self._pending:
            return None
        return self._first_at + self.window_s - time.monotonic()


def _run(ref: weakref.ReferenceType[AuditQueue], wake: threading.Condition) -> None:
    """The flusher: wait until the oldest row is due, write the batch, repeat; ends with its queue."""
    failures = 0
    while True:
        queue = ref()
        if queue is None or queue._closed or queue._pid != os.getpid():
            return
        with wake:
            due = queue._due_in()
            if due is None or due > 0:
                # Idle: until a row is queued (notified), waking now and then to end with a dropped queue.
                wait = IDLE_CHECK_SECONDS if due is None else due
                del queue  # a queue nobody else holds is collected while this thread waits
                wake.wait(timeout=wait)
                continue
        try:
            queue.flush()
            failures = 0
        except Exception as exc:  # the thread never dies with rows queued: they stay, and are retried
            failures += 1
            log.error("audit rows of free answers could not be written (%s); %d kept, retrying",
                      type(exc).__name__, len(queue))
            pause = min(queue.window_s * 2 ** failures, MAX_RETRY_SECONDS)
            del queue
            time.sleep(pause)
            continue
        del queue


def flush_all() -> None:
    """Write every live queue of this process (at normal exit)."""
    for queue in list(_LIVE):
        if queue._pid != os.getpid():
            continue
        try:
            queue.flush()
        except Exception as exc:  # at exit: report (never a row's content) and go on
            log.error("at exit, %d audit rows of free answers could not be written (%s)", len(queue),
                      type(exc).__name__)


atexit.register(flush_all)
