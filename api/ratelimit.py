"""Rate limits that hold across every gunicorn worker of a host, and behind the proxy.

Two families of token buckets, both in one small SQLite file that every worker of the host
opens (a bucket in one worker's memory would let a client reach W × the limit):

- ``key:<client id>``: every authenticated request of a client, whatever worker serves it
  (DPFLOWS_RATE_LIMIT per second, bursts of DPFLOWS_RATE_BURST);
- ``addr:<address>``: failed authentications (missing, unknown or revoked key) of one client
  address (DPFLOWS_AUTH_FAILURE_LIMIT per second, bursts of DPFLOWS_AUTH_FAILURE_BURST). An
  address whose bucket is empty gets 429 before its key is even looked at, so guessing keys
  is as slow as the bucket refills, and a valid key cannot be told from an invalid one.

The client address is the TCP peer, unless the peer is one of DPFLOWS_TRUSTED_PROXIES (default
loopback and unix sockets: the nginx of deploy/nginx.conf on the same host); then it is the
address the proxy passes in X-Real-IP (else the last X-Forwarded-For entry, the one the proxy
appended). A header sent by anyone else is ignored: no client can choose its own bucket.

The file holds a few seconds of counters, nothing worth an fsync: WAL with synchronous off,
one upsert statement per take (atomic on its own; a refusal reads the bucket once more). Its
default place is beside a SQLite ledger (one per host), else under the temporary directory;
DPFLOWS_RATE_LIMIT_DB names it. A limiter that cannot use its file lets requests through and
logs it: the ledger bounds privacy loss whatever the request rate; the limits bound CPU.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import math
import os
import sqlite3
import stat
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from dpflows.errors import RateLimited

log = logging.getLogger("dpflows.api.ratelimit")

#: Rows of buckets idle long enough to be full again are deleted every this many takes.
PRUNE_EVERY = 500


@dataclass(frozen=True)
class Bucket:
    """`rate` tokens per second, at most `burst`; a request takes one."""

    rate: float
    burst: float

    def __post_init__(self) -> None:
        if not (self.rate > 0 and math.isfinite(self.rate) and self.burst >= 1 and math.isfinite(self.burst)):
            raise ValueError(f"rate limit {self.rate}/s with bursts of {self.burst}: the rate must be a positive "
                             "number and the burst at least 1")


def default_path(ledger_url: str, data_dir: str) -> str:
    """Beside a SQLite ledger; in memory for a memory ledger (itself per process); else under the temp dir."""
    if ledger_url.startswith("sqlite:///"):
        ledger = Path(ledger_url.removeprefix("sqlite:///"))
        return str(ledger.with_name(ledger.name + ".ratelimit"))
    if ledger_url == "memory://":
        return ":memory:"
    parts = urlsplit(ledger_url)  # the password never goes into a file name, not even hashed
    where = f"{parts.scheme}://{parts.hostname}:{parts.port}{parts.path}|{Path(data_dir).resolve()}"
    digest = hashlib.sha256(where.encode()).hexdigest()[:16]
    directory = Path(tempfile.gettempdir()) / f"dpflows-{os.getuid()}"
    _private_dir(directory)
    return str(directory / f"ratelimit-{digest}.db")


def _private_dir(path: Path) -> None:
    """Create a directory in the shared temp dir 0700, and refuse one another user could write to
    (they could swap the file and lift the limits)."""
    path.mkdir(mode=0o700, exist_ok=True)
    st = path.lstat()
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise RuntimeError(f"rate-limit directory {path} is not private to this user; remove it or set "
                           "DPFLOWS_RATE_LIMIT_DB to a path in a directory only the service can write")


class SharedBuckets:
    """Token buckets in one SQLite file, shared by every process that opens the same path."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = None
        self._pid = 0
        self._takes = 0
        self._lock = threading.Lock()

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None or self._pid != os.getpid():  # opened lazily, once per process (after fork)
            if self.path != ":memory:":
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
                os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))  # a new file is the owner's only
            conn = sqlite3.connect(self.path, timeout=5.0, isolation_level=None, check_same_thread=False)
            if self.path != ":memory:":
                conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=OFF")
            conn.execute("CREATE TABLE IF NOT EXISTS buckets (key TEXT PRIMARY KEY, tokens REAL NOT NULL, "
                         "updated REAL NOT NULL, full_at REAL NOT NULL)")
            self._conn, self._pid = conn, os.getpid()
        return self._conn

    def take(self, key: str, bucket: Bucket, *, peek: bool = False) -> float | None:
        """Take a token from `key`'s bucket (only look, with `peek`); None if there was one, else the
        seconds until there is.

        A take is one statement (an upsert that refills and takes only where a token is left, returning
        the tokens left), atomic on its own: no BEGIN and COMMIT around it. Only a refusal reads the
        bucket again, for the wait."""
        now = time.time()
        with self._lock:
            conn = self._connection()
            for _ in range(3):
                if not peek:
                    taken = conn.execute(_TAKE, {"key": key, "now": now, "rate": bucket.rate,
                                                 "burst": bucket.burst}).fetchone()
                    if taken is not None:
                        self._takes += 1
                        if self._takes % PRUNE_EVERY == 0:  # a bucket refilled to its burst is the same as none
                            conn.execute("DELETE FROM buckets WHERE full_at < ?", (now,))
                        return None
                row = conn.execute("SELECT tokens, updated FROM buckets WHERE key = ?", (key,)).fetchone()
                tokens = bucket.burst if row is None else min(
                    bucket.burst, row[0] + max(0.0, now - row[1]) * bucket.rate)
                if tokens < 1.0:
                    return (1.0 - tokens) / bucket.rate
                if peek:
                    return None
                now = time.time()  # refused, then refilled (or another worker's row came and went): again
            return None  # a bucket that keeps changing under us: let through, as when the file fails


#: The refill (tokens + elapsed × rate, at most the burst) and the take (one token), where one is left.
_REFILLED = "min(:burst, buckets.tokens + max(0.0, :now - buckets.updated) * :rate)"
_TAKE = (  # only these constant fragments are interpolated
    "INSERT INTO buckets (key, tokens, updated, full_at) VALUES (:key, :burst - 1, :now, :now + 1 / :rate) "  # noqa: S608
    f"ON CONFLICT(key) DO UPDATE SET tokens = {_REFILLED} - 1, updated = :now, "
    f"full_at = :now + (:burst - ({_REFILLED} - 1)) / :rate WHERE {_REFILLED} >= 1 "
    "RETURNING tokens"
)


def _addresses(spec: str) -> tuple[list[ipaddress.IPv4Network | ipaddress.IPv6Network], bool]:
    nets, unix = [], False
    for item in (s.strip() for s in spec.split(",")):
        if item == "unix":
            unix = True
        elif item:
            try:
                nets.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                raise ValueError(f"DPFLOWS_TRUSTED_PROXIES: {item!r} is not an address or network; give a comma-"
                                 "separated list such as 127.0.0.1,::1,unix") from None
    return nets, unix


class RateLimits:
    """What `api.auth.require` asks before and after authenticating a request."""

    def __init__(self, buckets: SharedBuckets, per_key: Bucket, auth_failures: Bucket, trusted_proxies: str) -> None:
        self.buckets = buckets
        self.per_key = per_key
        self.auth_failures = auth_failures
        self._trusted, self._trust_unix = _addresses(trusted_proxies)

    def _trusted_peer(self, peer: str) -> bool:
        try:
            ip = ipaddress.ip_address(peer)
        except ValueError:
            return self._trust_unix  # a unix socket's peer has no address
        return any(ip in net for net in self._trusted)

    def client_address(self, peer: str | None, real_ip: str | None, forwarded_for: str | None) -> str:
        """The peer, or the address a trusted proxy passes for it."""
        peer = peer or ""
        if self._trusted_peer(peer):
            passed = real_ip or (forwarded_for.rsplit(",", 1)[-1] if forwarded_for else None)
            if passed:
                try:
                    return str(ipaddress.ip_address(passed.strip()))
                except ValueError:
                    pass  # not an address: keep the peer's
        return peer or "unix"

    def _take(self, key: str, bucket: Bucket, what: str, *, peek: bool = False) -> None:
        try:
            wait = self.buckets.take(key, bucket, peek=peek)
        except (sqlite3.Error, OSError) as exc:
            log.error("rate limiter unavailable (%s); request let through", type(exc).__name__)
            return
        if wait is not None:
            retry = max(1, math.ceil(wait))
            raise RateLimited(f"too many {what}: the limit is {bucket.rate:g} per second with bursts of "
                              f"{bucket.burst:g}; retry after {retry} s", details={"retry_after": retry})

    def check_address(self, address: str) -> None:
        """Refuse an address that has used up its failed authentications, before looking at its key."""
        self._take(f"addr:{address}", self.auth_failures, "failed authentications from this address", peek=True)

    def failed_authentication(self, address: str) -> None:
        self._take(f"addr:{address}", self.auth_failures, "failed authentications from this address")

    def take(self, client_id: int) -> None:
        self._take(f"key:{client_id}", self.per_key, "requests for this key")
