"""SQLite ledger: the embedded default for one host.

WAL mode lets readers proceed while one writer holds the lock; every charge runs inside
`BEGIN IMMEDIATE`, which takes SQLite's single write lock before the first read, so the cap
check and the charge rows are serialized across all threads, gunicorn workers and processes
on the host that share the file. `synchronous=FULL` makes a commit durable before `COMMIT`
returns, so no answer leaves the process before its charge is on disk.

Schema versions live in `PRAGMA user_version` (0: before issue 18). Tables are created with IF
NOT EXISTS on every open; a step that must transform data runs once, under the write lock, when
a ledger below SCHEMA_VERSION is opened (by `dpflows migrate`, or by the first worker to start):
1 indexes the shape of every answer stored before answer_shapes existed; 2 (issue 17) moves every
stored answer into the sharing group of the client who released it (`rekey_answers`); 3 (issue 17,
populations) places every dataset in a population with its datasets' caps and spend
(`migrate_to_populations`). Columns added after a table was first created are added at open
(`_add_columns`).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from dpflows.errors import Unavailable
from dpflows.ledger._migrate_populations import migrate_to_populations
from dpflows.ledger._sql import Cursor, SqlLedger, backfill_answer_shapes, rekey_answers

SCHEMA_VERSION = 3

SCHEMA = """
CREATE TABLE IF NOT EXISTS datasets (
    dataset TEXT PRIMARY KEY, first_day TEXT NOT NULL, window_days INTEGER NOT NULL,
    measure TEXT NOT NULL, registered_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS clients (
    id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL UNIQUE, role TEXT NOT NULL,
    created_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS api_keys (
    id INTEGER PRIMARY KEY AUTOINCREMENT, client_id INTEGER NOT NULL REFERENCES clients(id),
    key_hash TEXT NOT NULL UNIQUE, prefix TEXT NOT NULL, created_at TEXT NOT NULL, revoked_at TEXT);
CREATE TABLE IF NOT EXISTS caps (
    client_id INTEGER NOT NULL, dataset TEXT NOT NULL, win INTEGER NOT NULL,
    cap_nanos INTEGER NOT NULL CHECK (cap_nanos >= 0), updated_at TEXT NOT NULL,
    PRIMARY KEY (client_id, dataset, win));
CREATE TABLE IF NOT EXISTS spend (
    dataset TEXT NOT NULL, win INTEGER NOT NULL, client_id INTEGER NOT NULL,
    nanos INTEGER NOT NULL CHECK (nanos >= 0), PRIMARY KEY (dataset, win, client_id));
CREATE TABLE IF NOT EXISTS charges (
    id INTEGER PRIMARY KEY AUTOINCREMENT, client_id INTEGER NOT NULL, dataset TEXT NOT NULL,
    win INTEGER NOT NULL, nanos INTEGER NOT NULL CHECK (nanos >= 0), answer_id TEXT NOT NULL,
    at TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS charges_by_window ON charges (dataset, win, client_id);
CREATE TABLE IF NOT EXISTS answers (
    answer_id TEXT PRIMARY KEY, dataset TEXT NOT NULL, query_key TEXT NOT NULL,
    client_id INTEGER NOT NULL, payload TEXT NOT NULL, created_at TEXT NOT NULL,
    UNIQUE (dataset, query_key));
CREATE TABLE IF NOT EXISTS answer_shapes (
    answer_id TEXT PRIMARY KEY REFERENCES answers(answer_id), dataset TEXT NOT NULL, kind TEXT NOT NULL,
    data_version TEXT NOT NULL, mechanism TEXT NOT NULL, start_day TEXT NOT NULL, end_day TEXT NOT NULL,
    zoning TEXT NOT NULL, hours_mask INTEGER NOT NULL, weekdays_mask INTEGER NOT NULL, measure TEXT NOT NULL,
    zone_id TEXT NOT NULL, unit TEXT NOT NULL, loss_nanos INTEGER NOT NULL, noise_scale REAL NOT NULL,
    created_at TEXT NOT NULL, share_group TEXT NOT NULL DEFAULT '');
CREATE INDEX IF NOT EXISTS answer_shapes_by_query
    ON answer_shapes (dataset, kind, data_version, start_day, end_day, zoning, noise_scale);
CREATE TABLE IF NOT EXISTS client_groups (
    client_id INTEGER PRIMARY KEY REFERENCES clients(id), group_name TEXT NOT NULL, updated_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS group_caps (
    group_name TEXT NOT NULL, dataset TEXT NOT NULL, win INTEGER NOT NULL,
    cap_nanos INTEGER NOT NULL CHECK (cap_nanos >= 0), updated_at TEXT NOT NULL,
    PRIMARY KEY (group_name, dataset, win));
CREATE TABLE IF NOT EXISTS group_spend (
    dataset TEXT NOT NULL, win INTEGER NOT NULL, group_name TEXT NOT NULL,
    nanos INTEGER NOT NULL CHECK (nanos >= 0), PRIMARY KEY (dataset, win, group_name));
CREATE TABLE IF NOT EXISTS populations (
    population TEXT PRIMARY KEY, first_day TEXT, window_days INTEGER, measure TEXT, horizon_windows INTEGER,
    horizon_cap_nanos INTEGER CHECK (horizon_cap_nanos >= 0), registered_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS population_caps (
    population TEXT NOT NULL, win INTEGER NOT NULL, cap_nanos INTEGER NOT NULL CHECK (cap_nanos >= 0),
    updated_at TEXT NOT NULL, PRIMARY KEY (population, win));
CREATE TABLE IF NOT EXISTS population_group_caps (
    group_name TEXT NOT NULL, population TEXT NOT NULL, win INTEGER NOT NULL,
    cap_nanos INTEGER NOT NULL CHECK (cap_nanos >= 0), updated_at TEXT NOT NULL,
    PRIMARY KEY (group_name, population, win));
CREATE TABLE IF NOT EXISTS population_spend (
    population TEXT NOT NULL, win INTEGER NOT NULL, holder TEXT NOT NULL,
    nanos INTEGER NOT NULL CHECK (nanos >= 0), PRIMARY KEY (population, win, holder));
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT, at TEXT NOT NULL, client_id INTEGER, action TEXT NOT NULL,
    dataset TEXT, query TEXT, epsilon_nanos INTEGER NOT NULL, outcome TEXT NOT NULL, answer_id TEXT,
    prev_hash TEXT NOT NULL, row_hash TEXT NOT NULL);
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
    BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
    BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS charges_no_update BEFORE UPDATE ON charges
    BEGIN SELECT RAISE(ABORT, 'charges are append-only'); END;
CREATE TRIGGER IF NOT EXISTS charges_no_delete BEFORE DELETE ON charges
    BEGIN SELECT RAISE(ABORT, 'charges are append-only'); END;
"""

#: (table, column, definition) added to tables created before the column existed
ADDED_COLUMNS = (
    ("answer_shapes", "share_group", "TEXT NOT NULL DEFAULT ''"),
    ("datasets", "population", "TEXT NOT NULL DEFAULT 'default'"),
    ("datasets", "window_offset", "INTEGER NOT NULL DEFAULT 0"),
)


#: statements that need the added columns
AFTER_COLUMNS = """
CREATE INDEX IF NOT EXISTS answer_shapes_by_group
    ON answer_shapes (dataset, share_group, kind, data_version, start_day, end_day, zoning, noise_scale);
"""


class SqliteLedger(SqlLedger):
    """One SQLite file shared by every worker on a host; a connection per thread."""

    _locks_rows = False  # BEGIN IMMEDIATE holds the database's only write lock

    def __init__(self, path: str | Path, *, busy_timeout_s: float = 30.0) -> None:
        self.path = str(path)
        self._busy_timeout_s = busy_timeout_s
        self._local = threading.local()
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            # Budgets, key hashes and what every client asked: readable by the service's user alone.
            # SQLite gives its -wal and -shm files the database file's permissions.
            Path(self.path).touch(mode=0o600, exist_ok=True)
        try:
            conn = self._connection()
            conn.executescript(SCHEMA)
            self._add_columns(conn)
            conn.executescript(AFTER_COLUMNS)
        except sqlite3.Error as exc:
            raise Unavailable(f"the ledger database cannot be opened or created ({type(exc).__name__})") from exc
        self.migration_steps_applied = self.migrate()

    @staticmethod
    def _add_columns(conn: sqlite3.Connection) -> None:
        """ALTER TABLE ... ADD COLUMN for columns newer than an existing table; a no-op when present."""
        for table, column, definition in ADDED_COLUMNS:
            present = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
            if column not in present:
                try:
                    conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")
                except sqlite3.OperationalError as exc:  # another worker added it first
                    if "duplicate column" not in str(exc):
                        raise

    def migrate(self) -> int:
        """Bring the data to SCHEMA_VERSION; idempotent, and safe when several workers open at once.

        Returns the number of steps applied (0 when current). A current ledger costs one read; else
        the version is read again under the write lock, so one process migrates and the others find
        it done. Runs on the connection directly (not `_transaction`): subclasses are not set up yet.
        """
        try:
            conn = self._connection()
            if int(conn.execute("PRAGMA user_version").fetchone()[0]) >= SCHEMA_VERSION:
                return 0
            conn.execute("BEGIN IMMEDIATE")
            try:
                current = int(conn.execute("PRAGMA user_version").fetchone()[0])
                if current < 1:
                    backfill_answer_shapes(conn.cursor())
                if current < 2:
                    rekey_answers(conn.cursor())
                if current < 3:
                    migrate_to_populations(conn.cursor())
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION:d}")
                conn.commit()
            except BaseException:
                conn.rollback()
                raise
        except sqlite3.Error as exc:
            raise Unavailable(f"the ledger schema could not be upgraded ({type(exc).__name__})") from exc
        return max(SCHEMA_VERSION - current, 0)

    def _connection(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=self._busy_timeout_s, isolation_level=None,
                                   check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            self._local.conn = conn
        return conn

    @contextmanager
    def _transaction(self, *, write: bool) -> Iterator[Cursor]:
        try:
            conn = self._connection()
            cur = conn.cursor()
            cur.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        except sqlite3.Error as exc:
            raise Unavailable(
                f"the ledger is unavailable ({type(exc).__name__}); nothing was charged or released, retry later"
            ) from exc
        try:
            yield cur
        except sqlite3.IntegrityError:
            conn.rollback()
            raise  # a unique violation the caller turns into Conflict
        except sqlite3.Error as exc:
            conn.rollback()
            raise Unavailable(
                f"the ledger failed ({type(exc).__name__}); nothing was charged or released, retry later"
            ) from exc
        except BaseException:
            conn.rollback()
            raise
        try:
            conn.commit()
        except sqlite3.Error as exc:
            conn.rollback()
            raise Unavailable(
                f"the ledger could not commit ({type(exc).__name__}); nothing was charged or released, retry later"
            ) from exc

    def _lock_spend_rows(self, cur: Cursor, place: tuple[str, int], dataset: str, windows: tuple[int, ...],
                         client_id: int, holders: dict[int, str], legacy_holders: dict[int, str] | None,
                         horizon: bool) -> None:
        """BEGIN IMMEDIATE already holds the database's only write lock."""

    def _is_unique_violation(self, exc: Exception) -> bool:
        return isinstance(exc, sqlite3.IntegrityError) and "UNIQUE" in str(exc)

    def close(self) -> None:
        self._close_audit_queue()
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
