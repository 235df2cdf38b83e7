"""The audit trail is verifiable: an edited row breaks the chain at that row, and a signed daily
digest detects edits, deletions and even a consistently re-hashed chain."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import sqlite3
from pathlib import Path

import pytest

from dpflows.audit import daily_digest, verify_audit, verify_digest
from dpflows.budget import Epsilon
from dpflows.cli import main
from dpflows.errors import InvalidInput
from dpflows.ledger import AuditEntry, Ledger
from dpflows.ledger.base import GENESIS_HASH
from dpflows.ledger.memory import MemoryLedger
from dpflows.ledger.sqlite import SqliteLedger

KEY = b"k" * 32


def fill(ledger: Ledger, n: int = 6) -> None:
    for i in range(n):
        ledger.append_audit(AuditEntry(action="query.flows", outcome="released", client_id=1, dataset="small",
                                       query={"kind": "flows", "i": i, "epsilon": 0.25},
                                       loss=Epsilon.parse("0.25"), answer_id=f"a{i}"))


def last_day(ledger: Ledger) -> dt.date:
    return dt.datetime.fromisoformat(ledger.read_audit(limit=1000)[-1].at).date()


def tamper_sqlite(path: Path, sql: str, params: tuple = ()) -> None:
    conn = sqlite3.connect(path)
    conn.execute("DROP TRIGGER IF EXISTS audit_no_update")
    conn.execute("DROP TRIGGER IF EXISTS audit_no_delete")
    conn.execute(sql, params)
    conn.commit()
    conn.close()


@pytest.fixture
def sqlite_ledger(tmp_path: Path):
    led = SqliteLedger(tmp_path / "ledger.db")
    fill(led)
    yield led, tmp_path / "ledger.db"
    led.close()


def test_an_intact_chain_verifies(sqlite_ledger) -> None:
    ledger, _ = sqlite_ledger
    report = verify_audit(ledger)
    assert report.ok and report.rows_checked == 6 and report.first_broken_id is None
    assert report.head_hash == ledger.read_audit(limit=10)[-1].row_hash


def test_empty_log_verifies_at_genesis() -> None:
    report = verify_audit(MemoryLedger())
    assert report.ok and report.rows_checked == 0 and report.head_hash == GENESIS_HASH


def test_an_edited_row_breaks_the_chain_at_that_row(sqlite_ledger) -> None:
    ledger, path = sqlite_ledger
    tamper_sqlite(path, "UPDATE audit SET epsilon_nanos = 0 WHERE id = 3")
    report = verify_audit(ledger)
    assert not report.ok and report.first_broken_id == 3 and report.rows_checked == 2
    assert "edited" in (report.reason or "")


def test_a_deleted_row_breaks_the_next_row(sqlite_ledger) -> None:
    ledger, path = sqlite_ledger
    tamper_sqlite(path, "DELETE FROM audit WHERE id = 4")
    report = verify_audit(ledger)
    assert not report.ok and report.first_broken_id == 5 and "prev_hash" in (report.reason or "")


def test_memory_ledger_tampering_is_found_too() -> None:
    ledger = MemoryLedger()
    fill(ledger, 4)
    ledger._audit[1] = dataclasses.replace(ledger._audit[1], outcome="reused")
    assert verify_audit(ledger).first_broken_id == 2


def test_digest_verifies_then_fails_after_tampering(sqlite_ledger) -> None:
    ledger, path = sqlite_ledger
    day = last_day(ledger)
    digest = daily_digest(ledger, day, KEY)
    assert digest["rows_total"] == 6 and digest["rows_on_day"] == 6 and digest["day"] == day.isoformat()
    assert digest["head_hash"] == verify_audit(ledger).head_hash and len(digest["hmac_sha256"]) == 64
    assert verify_digest(ledger, digest, KEY).ok
    # A snapshot of a day still running vouches for the rows up to its head: later rows keep it valid.
    assert digest["complete"] is False
    ledger.append_audit(AuditEntry(action="admin.set_cap", outcome="ok"))
    assert verify_digest(ledger, digest, KEY).ok
    # A wrong key or an altered digest fails the signature.
    assert not verify_digest(ledger, digest, b"x" * 32).ok
    assert not verify_digest(ledger, {**digest, "rows_total": 5}, KEY).ok
    tamper_sqlite(path, "UPDATE audit SET outcome = 'reused' WHERE id = 2")
    check = verify_digest(ledger, digest, KEY)
    assert not check.ok and check.first_broken_id == 2
    with pytest.raises(InvalidInput, match="broken at row id=2"):
        daily_digest(ledger, day, KEY)


def test_digest_catches_a_consistently_rehashed_chain(sqlite_ledger) -> None:
    """An attacker with write access edits row 2 and recomputes every later hash: the chain alone
    verifies again, the signed digest does not."""
    ledger, path = sqlite_ledger
    day = last_day(ledger)
    digest = daily_digest(ledger, day, KEY)
    rows = ledger.read_audit(limit=100)
    prev = rows[0].row_hash
    conn = sqlite3.connect(path)
    conn.execute("DROP TRIGGER audit_no_update")
    for row in rows[1:]:
        edited = dataclasses.replace(row, loss=Epsilon.zero()) if row.id == 2 else row
        new_hash = edited.chain_hash(prev, row.at)
        conn.execute("UPDATE audit SET epsilon_nanos = ?, prev_hash = ?, row_hash = ? WHERE id = ?",
                     (edited.loss.nanos, prev, new_hash, row.id))
        prev = new_hash
    conn.commit()
    conn.close()
    assert verify_audit(ledger).ok
    check = verify_digest(ledger, digest, KEY)
    assert not check.ok and "head_hash" in (check.reason or "")


def test_a_complete_day_refuses_backdated_rows(tmp_path: Path) -> None:
    """A digest of a finished day fails if a row dated that day appears afterwards."""
    path = tmp_path / "old.db"
    ledger = SqliteLedger(path)
    fill(ledger, 3)
    tamper_sqlite(path, "UPDATE audit SET at = '2024-03-04T10:00:00.000000+00:00'")
    rows = ledger.read_audit(limit=10)
    prev = GENESIS_HASH
    conn = sqlite3.connect(path)
    for row in rows:  # re-chain with the old timestamps: a valid log of 2024-03-04
        new_hash = row.chain_hash(prev, row.at)
        conn.execute("UPDATE audit SET prev_hash = ?, row_hash = ? WHERE id = ?", (prev, new_hash, row.id))
        prev = new_hash
    conn.commit()
    conn.close()
    day = dt.date(2024, 3, 4)
    digest = daily_digest(ledger, day, KEY)
    assert digest["complete"] is True and digest["rows_on_day"] == 3 and verify_digest(ledger, digest, KEY).ok
    assert daily_digest(ledger, dt.date(2024, 3, 3), KEY)["rows_total"] == 0
    ledger.append_audit(AuditEntry(action="admin.set_cap", outcome="ok"))  # dated today: fine
    assert verify_digest(ledger, digest, KEY).ok
    tamper_sqlite(path, "UPDATE audit SET at = '2024-03-04T23:00:00.000000+00:00' WHERE id = 4")
    last = ledger.read_audit(limit=10)[-1]
    tamper_sqlite(path, "UPDATE audit SET row_hash = ? WHERE id = 4", (last.chain_hash(last.prev_hash, last.at),))
    check = verify_digest(ledger, digest, KEY)
    assert not check.ok and "added after" in (check.reason or "")
    ledger.close()


def test_short_keys_are_refused(sqlite_ledger) -> None:
    ledger, _ = sqlite_ledger
    with pytest.raises(InvalidInput, match="at least 32 bytes"):
        daily_digest(ledger, last_day(ledger), b"short")


def test_cli_verify_and_digest(sqlite_ledger, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ledger, path = sqlite_ledger
    url = f"sqlite:///{path}"
    key_file = tmp_path / "digest.key"
    key_file.write_bytes(KEY + b"\n")
    assert main(["admin", "verify-audit", "--ledger-url", url]) == 0
    assert json.loads(capsys.readouterr().out)["chain"]["ok"] is True
    day = last_day(ledger).isoformat()
    assert main(["admin", "audit-digest", "--ledger-url", url, "--day", day, "--key-file", str(key_file)]) == 0
    digest_file = tmp_path / "digest.json"
    digest_file.write_text(capsys.readouterr().out)
    assert main(["admin", "verify-audit", "--ledger-url", url, "--digest", str(digest_file), "--key-file", str(key_file)]) == 0
    capsys.readouterr()
    tamper_sqlite(path, "UPDATE audit SET client_id = 99 WHERE id = 5")
    assert main(["admin", "verify-audit", "--ledger-url", url, "--digest", str(digest_file), "--key-file", str(key_file)]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["chain"]["first_broken_id"] == 5 and out["digest"]["ok"] is False
    short = tmp_path / "short.key"
    short.write_bytes(b"abc")
    assert main(["admin", "audit-digest", "--ledger-url", url, "--day", day, "--key-file", str(short)]) == 2
