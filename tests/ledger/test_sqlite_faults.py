"""A ledger that cannot write fails closed: Unavailable, nothing released, nothing charged."""

from __future__ import annotations

import sqlite3
import uuid
from pathlib import Path

import pytest

from dpflows.budget import Epsilon
from dpflows.errors import Unavailable
from dpflows.ledger import AuditEntry, ReleaseRequest
from dpflows.ledger.sqlite import SqliteLedger


def request(client_id: int) -> ReleaseRequest:
    aid = uuid.uuid4().hex
    return ReleaseRequest(client_id, "city", uuid.uuid4().hex, (0,), Epsilon.parse("0.1"), aid, {"values": [1]},
                          AuditEntry(action="query.flows", outcome="released", client_id=client_id))


def test_query_only_connection_is_unavailable_and_charges_nothing(tmp_path: Path) -> None:
    """PRAGMA query_only stands in for a read-only mount (root ignores file modes)."""
    path = tmp_path / "ledger.db"
    ledger = SqliteLedger(path)
    cid = ledger.create_client("a", "planner").id
    ledger.set_cap("city", Epsilon.parse("1"), client_id=cid, window=None)
    ledger.set_cap("city", Epsilon.parse("1"), client_id=None, window=None)
    ledger._connection().execute("PRAGMA query_only = ON")
    with pytest.raises(Unavailable, match="nothing was charged"):
        ledger.commit_release(request(cid))
    ledger._connection().execute("PRAGMA query_only = OFF")
    assert ledger.total_charged("city", 0) == Epsilon.zero()


def test_full_disk_is_unavailable_and_charges_nothing(tmp_path: Path) -> None:
    """max_page_count caps the file as a full disk would: writes fail with SQLITE_FULL."""
    path = tmp_path / "ledger.db"
    ledger = SqliteLedger(path)
    cid = ledger.create_client("a", "planner").id
    ledger.set_cap("city", Epsilon.parse("1000"), client_id=cid, window=None)
    ledger.set_cap("city", Epsilon.parse("1000"), client_id=None, window=None)
    conn = ledger._connection()
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count = {pages + 2}")
    big = {"values": list(range(20_000))}
    failed = 0
    for _ in range(5):
        req = request(cid)
        try:
            ledger.commit_release(ReleaseRequest(req.client_id, req.dataset, req.query_key, req.windows,
                                                 req.loss, req.answer_id, big, req.audit))
        except Unavailable:
            failed += 1
    assert failed >= 1
    released = 5 - failed
    assert ledger.total_charged("city", 0) == Epsilon(released * Epsilon.parse("0.1").nanos)
    with sqlite3.connect(path) as raw:
        assert raw.execute("SELECT COUNT(*) FROM answers").fetchone()[0] == released
