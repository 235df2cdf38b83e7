"""Invariants of a ledger file, checked from outside the service (read-only SQL, no dpflows code
in the loop except `AuditEntry.chain_hash`, the definition of the audit chain)."""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from pathlib import Path

from dpflows.budget import Epsilon
from dpflows.ledger.base import GENESIS_HASH
from dpflows.ledger.sqlite import SqliteLedger


def nanos(value: float | int | str) -> int:
    """An ε as the API writes it (a JSON number) in the ledger's integer nano-units."""
    return Epsilon.parse(str(value)).nanos


def check_ledger(ledger_path: Path, received: Mapping[str, tuple[int, int]]) -> dict[str, int]:
    """Assert that every answer a client received was charged, every charge has a stored answer,
    the running totals equal the charge rows, and the audit chain verifies. `received` maps each
    fresh (not reused) 200 answer's id to (epsilon_charged in nanos, number of windows)."""
    con = sqlite3.connect(f"file:{ledger_path}?mode=ro", uri=True)
    try:
        for answer_id, (eps, n_windows) in received.items():
            assert con.execute("SELECT 1 FROM answers WHERE answer_id = ?", (answer_id,)).fetchone(), answer_id
            count, total = con.execute(
                "SELECT COUNT(*), COALESCE(SUM(nanos), 0) FROM charges WHERE answer_id = ?", (answer_id,)
            ).fetchone()
            assert (count, total) == (n_windows, eps * n_windows), answer_id
        orphans = con.execute(
            "SELECT COUNT(*) FROM charges WHERE answer_id NOT IN (SELECT answer_id FROM answers)").fetchone()[0]
        assert orphans == 0, f"{orphans} charge rows without a stored answer"
        uncharged = con.execute(
            "SELECT COUNT(*) FROM answers WHERE answer_id NOT IN (SELECT answer_id FROM charges)").fetchone()[0]
        assert uncharged == 0, f"{uncharged} stored answers without a charge"
        by_client = dict(((d, w, c), n) for d, w, c, n in con.execute(
            "SELECT dataset, win, client_id, SUM(nanos) FROM charges GROUP BY dataset, win, client_id"))
        spend = dict(((d, w, c), n) for d, w, c, n in con.execute(
            "SELECT dataset, win, client_id, nanos FROM spend"))
        expected = dict(by_client)
        for (d, w, _c), n in by_client.items():
            expected[(d, w, 0)] = expected.get((d, w, 0), 0) + n
        assert {k: v for k, v in spend.items() if v} == expected, "running totals differ from the charge rows"
        stats = {
            "answers": con.execute("SELECT COUNT(*) FROM answers").fetchone()[0],
            "charges": con.execute("SELECT COUNT(*) FROM charges").fetchone()[0],
        }
    finally:
        con.close()
    stats["audit_rows"] = verify_audit_chain(ledger_path)
    return stats


def verify_audit_chain(ledger_path: Path) -> int:
    """Walk the audit log: every row links to the previous one and its hash covers its content."""
    ledger = SqliteLedger(ledger_path)
    try:
        prev, n = GENESIS_HASH, 0
        for entry in ledger.iter_audit():
            assert entry.prev_hash == prev, f"audit row {entry.id} does not link to row {entry.id - 1}"
            assert entry.row_hash == entry.chain_hash(entry.prev_hash, entry.at), f"audit row {entry.id} altered"
            prev, n = entry.row_hash, n + 1
        return n
    finally:
        ledger.close()


def total_charged(ledger_path: Path) -> int:
    con = sqlite3.connect(f"file:{ledger_path}?mode=ro", uri=True)
    try:
        return int(con.execute("SELECT COALESCE(SUM(nanos), 0) FROM charges").fetchone()[0])
    finally:
        con.close()
