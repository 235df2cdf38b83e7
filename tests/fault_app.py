"""A WSGI entry point for fault-injection tests only: `gunicorn tests.fault_app:app`.

It builds the real `api.create_app()` and wraps the ledger it opened, so that no fault hook
lives in `dpflows/` or `api/`. Environment variables (all optional, read here only):

DPFLOWS_FAULT_DELAY_BEFORE_COMMIT_MS  sleep this long after the noisy answer is computed and
                                      before `commit_release` runs (a SIGKILL then lands
                                      between noise and commit)
DPFLOWS_FAULT_DELAY_AFTER_COMMIT_MS   sleep this long after `commit_release` returned and
                                      before the response is sent
DPFLOWS_FAULT_MARK_DIR                before each sleep, write `<pid>.<phase>` here so a test
                                      knows which worker to kill and that it is inside the sleep
DPFLOWS_FAULT_LEDGER_QUERY_ONLY       "1": every ledger connection gets `PRAGMA query_only=ON`,
                                      so reads work and every write fails as SQLite errors do
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from api import create_app

app = create_app()
_ledger: Any = app.extensions["dpflows"].service.ledger


def _mark(phase: str) -> None:
    mark_dir = os.environ.get("DPFLOWS_FAULT_MARK_DIR")
    if mark_dir:
        (Path(mark_dir) / f"{os.getpid()}.{phase}").write_text(str(time.time()))


def _wrap_commit() -> None:
    before_s = int(os.environ.get("DPFLOWS_FAULT_DELAY_BEFORE_COMMIT_MS", "0")) / 1000
    after_s = int(os.environ.get("DPFLOWS_FAULT_DELAY_AFTER_COMMIT_MS", "0")) / 1000
    if not (before_s or after_s):
        return
    commit_release = _ledger.commit_release

    def delayed_commit_release(request: Any) -> Any:
        if before_s:
            _mark("before")
            time.sleep(before_s)
        receipt = commit_release(request)
        if after_s:
            _mark(f"after-{receipt.answer.answer_id}")
            time.sleep(after_s)
        return receipt

    _ledger.commit_release = delayed_commit_release


def _make_query_only() -> None:
    if os.environ.get("DPFLOWS_FAULT_LEDGER_QUERY_ONLY") != "1":
        return
    connection = _ledger._connection

    def query_only_connection() -> Any:
        conn = connection()
        conn.execute("PRAGMA query_only=ON")
        return conn

    _ledger._connection = query_only_connection


_wrap_commit()
_make_query_only()
