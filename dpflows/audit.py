"""Checking the audit trail: walk its hash chain, and sign a daily digest of its head.

Every audit row stores ``prev_hash`` (the previous row's ``row_hash``) and ``row_hash`` =
``AuditEntry.chain_hash(prev_hash, at)`` over its own content (ledger/base.py). So

- editing a row's content breaks that row (its stored ``row_hash`` no longer matches);
- deleting or reordering rows breaks the next row (its ``prev_hash`` no longer links);
- rewriting the whole chain consistently from some row on, or cutting rows off the end, is
  *not* visible from the database alone. That is what the **daily digest** is for: an admin
  signs the chain head at the end of each day (HMAC-SHA256 with a secret key kept away from
  the ledger's host) and stores the digest elsewhere. A later `verify_digest` recomputes the
  head for that day from the ledger and fails if any row up to it was changed, removed or
  re-hashed.

Row ids are not required to be consecutive: PostgreSQL sequences skip numbers on rolled-back
transactions. Ordering is by id; linkage is by hash.

Only hashes, counts and ids go into a report or a digest: never an answer's values.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from dpflows.errors import InvalidInput
from dpflows.ledger import AuditEntry, Ledger
from dpflows.ledger.base import GENESIS_HASH

DIGEST_VERSION = 1
#: An HMAC key shorter than this is refused: it would be guessable offline from a digest.
MIN_KEY_BYTES = 32
_BATCH = 1000


@dataclass(frozen=True)
class VerifyReport:
    """The outcome of walking the chain: ok, or the first row that breaks it and why."""

    ok: bool
    rows_checked: int
    head_id: int | None  # last row checked (the chain head when ok)
    head_hash: str  # row_hash of that row, GENESIS_HASH for an empty log
    first_broken_id: int | None = None
    reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _iter_audit(ledger: Ledger) -> Iterator[AuditEntry]:
    after = 0
    while rows := ledger.read_audit(after_id=after, limit=_BATCH):
        yield from rows
        after = rows[-1].id


def _walk(rows: Iterator[AuditEntry]) -> VerifyReport:
    prev = GENESIS_HASH
    count = 0
    last_id: int | None = None
    for entry in rows:
        if entry.prev_hash != prev:
            return VerifyReport(False, count, last_id, prev, entry.id,
                                "prev_hash does not match the previous row's row_hash "
                                "(a row before it was removed, inserted or re-hashed)")
        if entry.chain_hash(entry.prev_hash, entry.at) != entry.row_hash:
            return VerifyReport(False, count, last_id, prev, entry.id,
                                "row_hash does not match the row's content (the row was edited)")
        prev = entry.row_hash
        last_id = entry.id
        count += 1
    return VerifyReport(True, count, last_id, prev)


def verify_audit(ledger: Ledger) -> VerifyReport:
    """Walk the whole audit chain from the genesis hash; report the first broken row id."""
    return _walk(_iter_audit(ledger))


def _day_end(day: dt.date) -> str:
    """The first timestamp of the next UTC day, in the ledger's ISO format (string-comparable)."""
    nxt = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), tzinfo=dt.UTC)
    return nxt.isoformat(timespec="microseconds")


def _day_start(day: dt.date) -> str:
    return dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC).isoformat(timespec="microseconds")


def _rows_until(ledger: Ledger, end: str, upto_id: int | None) -> Iterator[AuditEntry]:
    # Rows are appended in id order with non-decreasing UTC timestamps (one writer holds the
    # chain tail), so the rows of days up to `day` are a prefix of the log.
    for entry in _iter_audit(ledger):
        if entry.at >= end or (upto_id is not None and entry.id > upto_id):
            return
        yield entry


def _signature(body: dict[str, Any], key: bytes) -> str:
    text = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hmac.new(key, text.encode(), hashlib.sha256).hexdigest()


def _check_key(key: bytes) -> None:
    if len(key) < MIN_KEY_BYTES:
        raise InvalidInput(
            f"the digest key has {len(key)} bytes; use a random key of at least {MIN_KEY_BYTES} bytes "
            "(e.g. `head -c 32 /dev/urandom | base64 > digest.key`)",
            field="key",
        )


def _digest_body(ledger: Ledger, day: dt.date, upto_id: int | None = None) -> tuple[dict[str, Any], VerifyReport]:
    start, end = _day_start(day), _day_end(day)
    rows_on_day = 0

    def counted() -> Iterator[AuditEntry]:
        nonlocal rows_on_day
        for entry in _rows_until(ledger, end, upto_id):
            if entry.at >= start:
                rows_on_day += 1
            yield entry

    report = _walk(counted())
    body = {
        "version": DIGEST_VERSION,
        "day": day.isoformat(),
        "complete": dt.datetime.now(dt.UTC).isoformat(timespec="microseconds") >= end,
        "head_id": report.head_id,
        "head_hash": report.head_hash,
        "rows_total": report.rows_checked,
        "rows_on_day": rows_on_day,
    }
    return body, report


def daily_digest(ledger: Ledger, day: dt.date, key: bytes) -> dict[str, Any]:
    """Sign the chain head at the end of `day` (UTC): store the result away from the ledger.

    Refuses to sign a chain that is already broken up to that day, so a digest always vouches
    for a chain that verified when it was made. A digest of a day that has not ended yet is a
    snapshot (``"complete": false``): it vouches for the rows up to its ``head_id`` only, so
    rows appended later that day do not fail it. Sign each day once it is over.
    """
    _check_key(key)
    body, report = _digest_body(ledger, day)
    if not report.ok:
        raise InvalidInput(
            f"the audit chain is broken at row id={report.first_broken_id} ({report.reason}); "
            "investigate before signing a digest",
            field="ledger",
        )
    return {**body, "hmac_sha256": _signature(body, key)}


@dataclass(frozen=True)
class DigestCheck:
    ok: bool
    reason: str | None = None
    first_broken_id: int | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def verify_digest(ledger: Ledger, digest: dict[str, Any], key: bytes) -> DigestCheck:
    """Check a digest's signature, then that the ledger still yields the same head for its day."""
    _check_key(key)
    body = {k: v for k, v in digest.items() if k != "hmac_sha256"}
    signature = digest.get("hmac_sha256")
    if not isinstance(signature, str) or not hmac.compare_digest(_signature(body, key), signature):
        return DigestCheck(False, "the digest's signature is wrong: the digest was altered or the key differs")
    try:
        day = dt.date.fromisoformat(str(body["day"]))
    except (KeyError, ValueError):
        return DigestCheck(False, "the digest has no valid 'day'")
    head_id = body.get("head_id")
    if head_id is not None and not isinstance(head_id, int):
        return DigestCheck(False, "the digest has no valid 'head_id'")
    # Rows up to the signed head must hash to the signed head, in the signed number.
    now, report = _digest_body(ledger, day, upto_id=head_id if head_id is not None else 0)
    if not report.ok:
        return DigestCheck(False, f"the audit chain is broken: {report.reason}", report.first_broken_id)
    for name in ("head_id", "head_hash", "rows_total", "rows_on_day"):
        if now[name] != body.get(name):
            return DigestCheck(False, f"{name} differs from the signed digest: rows up to {day} were changed, "
                                      "removed or re-hashed since it was signed")
    if body.get("complete"):
        # The day was over when signed: no row dated that day (or before) may have appeared since.
        later, _ = _digest_body(ledger, day)
        if later["rows_total"] != body.get("rows_total"):
            return DigestCheck(False, f"rows dated {day} or earlier were added after the day's digest was signed")
    return DigestCheck(True)


def read_key_file(path: str | Path) -> bytes:
    """The admin's digest key: the file's bytes with surrounding whitespace removed."""
    try:
        key = Path(path).read_bytes().strip()
    except OSError as exc:
        raise InvalidInput(f"key file {str(path)!r} cannot be read ({type(exc).__name__})", field="key_file") from exc
    _check_key(key)
    return key
