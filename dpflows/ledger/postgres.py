"""PostgreSQL ledger: one database shared by several API hosts.

The statements are `_sql.py`'s; this module adds the schema, a connection pool and the locks
that make a charge safe when many hosts spend on the same windows at once:

* **Spend rows, in one global order.** `commit_release` first makes the running-total rows it
  reads and writes exclusive, in the order: the population's record (only with a horizon cap,
  whose check reads windows the charge does not touch); per population window ascending, the
  holder row (group allocation or pool) and the population's total row; per dataset window
  ascending, the client's row, then the all-clients row, client_id 0. Each row is created if
  missing (`INSERT ... ON CONFLICT DO NOTHING`) and then locked (`SELECT ... FOR UPDATE`) before
  the next one is touched, so every transaction takes its row locks in one total order and two
  releases can never deadlock. Two releases on a common population window (of one dataset or of
  two datasets of one population) serialize on its total row; the second one runs its cap check
  only after the first has committed or rolled back.
* **Allocations held still.** Changing a group allocation, a global cap or a group membership takes
  an exclusive advisory lock; every charge takes it shared before its first spend row, so the
  allocations a charge checks are those in force when it commits (and so are the global and
  horizon caps). A dataset's own caps from before populations lock their group_spend row between
  the client's row and the all-clients row of each window.
* **Answer reuse under races.** Transactions run at READ COMMITTED, so once the second of two
  identical queries gets the all-clients row of their (shared) windows, its next statement sees
  the first one's stored answer and returns it at zero cost. Should two releases with one query
  key but no common window race (a caller bug), the unique constraint on (dataset, query_key)
  refuses the second insert and the release is retried once, which then reuses the answer.
* **One audit tail.** Every audit append (inside a release or alone) first takes a
  transaction-scoped advisory lock, so the hash chain has one tail and ids grow in commit order.
  Lock order is always the allocations lock, spend rows, then the audit lock, never the reverse.

`audit` and `charges` are append-only: triggers refuse UPDATE, DELETE and TRUNCATE.
Requires PostgreSQL 14 or later (`CREATE OR REPLACE TRIGGER`).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import psycopg.errors
from psycopg_pool import ConnectionPool

from dpflows.errors import Unavailable
from dpflows.ledger._migrate_populations import migrate_to_populations
from dpflows.ledger._sql import GLOBAL, Cursor, SqlLedger, backfill_answer_shapes, rekey_answers
from dpflows.ledger._sql_populations import TOTAL
from dpflows.ledger.base import ReleaseReceipt, ReleaseRequest

# Advisory lock keys (bigint): "dpflows" in ASCII, shifted, plus a small tag. Advisory locks are
# per database, so these only have to avoid other users of the same database.
_LOCK_BASE = int.from_bytes(b"dpflows", "big") << 8
MIGRATE_LOCK = _LOCK_BASE | 1
AUDIT_TAIL_LOCK = _LOCK_BASE | 2
ALLOCATIONS_LOCK = _LOCK_BASE | 3

MIN_SERVER_VERSION = 140000

# Versioned schema: each step runs once, in order, under MIGRATE_LOCK, and is recorded in
# dpflows_schema. Statements also use IF NOT EXISTS / OR REPLACE so a half-applied step can be
# rerun. Timestamps stay ISO-8601 text and payloads JSON text, exactly as in sqlite.py, so both
# ledgers return identical records.
MIGRATIONS: list[tuple[int, list[str | Callable[[psycopg.Connection[Any]], object]]]] = [
    (1, [
        """CREATE TABLE IF NOT EXISTS clients (
            id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, name TEXT NOT NULL UNIQUE,
            role TEXT NOT NULL, created_at TEXT NOT NULL)""",
        """CREATE TABLE IF NOT EXISTS api_keys (
            id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            client_id BIGINT NOT NULL REFERENCES clients(id), key_hash TEXT NOT NULL UNIQUE,
            prefix TEXT NOT NULL, created_at TEXT NOT NULL, revoked_at TEXT)""",
        """CREATE TABLE IF NOT EXISTS caps (
            client_id BIGINT NOT NULL, dataset TEXT NOT NULL, win BIGINT NOT NULL,
            cap_nanos BIGINT NOT NULL CHECK (cap_nanos >= 0), updated_at TEXT NOT NULL,
            PRIMARY KEY (client_id, dataset, win))""",
        """CREATE TABLE IF NOT EXISTS spend (
            dataset TEXT NOT NULL, win BIGINT NOT NULL, client_id BIGINT NOT NULL,
            nanos BIGINT NOT NULL CHECK (nanos >= 0), PRIMARY KEY (dataset, win, client_id))""",
        """CREATE TABLE IF NOT EXISTS charges (
            id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, client_id BIGINT NOT NULL,
            dataset TEXT NOT NULL, win BIGINT NOT NULL, nanos BIGINT NOT NULL CHECK (nanos >= 0),
            answer_id TEXT NOT NULL, at TEXT NOT NULL)""",
        "CREATE INDEX IF NOT EXISTS charges_by_window ON charges (dataset, win, client_id)",
        """CREATE TABLE IF NOT EXISTS answers (
            answer_id TEXT PRIMARY KEY, dataset TEXT NOT NULL, query_key TEXT NOT NULL,
            client_id BIGINT NOT NULL, payload TEXT NOT NULL, created_at TEXT NOT NULL,
            CONSTRAINT answers_dataset_query_key_key UNIQUE (dataset, query_key))""",
        """CREATE TABLE IF NOT EXISTS audit (
            id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, at TEXT NOT NULL, client_id BIGINT,
            action TEXT NOT NULL, dataset TEXT, query TEXT, epsilon_nanos BIGINT NOT NULL,
            outcome TEXT NOT NULL, answer_id TEXT, prev_hash TEXT NOT NULL, row_hash TEXT NOT NULL)""",
        """CREATE OR REPLACE FUNCTION dpflows_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                RAISE EXCEPTION '% is append-only: % is refused', TG_TABLE_NAME, TG_OP
                    USING ERRCODE = 'restrict_violation';
            END $$""",
        *(
            f"""CREATE OR REPLACE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table}
                FOR EACH ROW EXECUTE FUNCTION dpflows_append_only()"""
            for table in ("audit", "charges")
        ),
        *(
            f"""CREATE OR REPLACE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table}
                FOR EACH STATEMENT EXECUTE FUNCTION dpflows_append_only()"""
            for table in ("audit", "charges")
        ),
    ]),
    # 2: each dataset's window grid and measure, recorded on first cap or charge (issue 12)
    (2, [
        """CREATE TABLE IF NOT EXISTS datasets (
            dataset TEXT PRIMARY KEY, first_day TEXT NOT NULL, window_days BIGINT NOT NULL,
            measure TEXT NOT NULL, registered_at TEXT NOT NULL)""",
    ]),
    # Issue 18: what each answer asked, without its values (the index of free derivations),
    # filled for answers stored before this step from their payloads.
    (3, [
        """CREATE TABLE IF NOT EXISTS answer_shapes (
            answer_id TEXT PRIMARY KEY REFERENCES answers(answer_id), dataset TEXT NOT NULL,
            kind TEXT NOT NULL, data_version TEXT NOT NULL, mechanism TEXT NOT NULL,
            start_day TEXT NOT NULL, end_day TEXT NOT NULL, zoning TEXT NOT NULL,
            hours_mask BIGINT NOT NULL, weekdays_mask BIGINT NOT NULL, measure TEXT NOT NULL,
            zone_id TEXT NOT NULL, unit TEXT NOT NULL, loss_nanos BIGINT NOT NULL,
            noise_scale DOUBLE PRECISION NOT NULL, created_at TEXT NOT NULL)""",
        """CREATE INDEX IF NOT EXISTS answer_shapes_by_query
            ON answer_shapes (dataset, kind, data_version, start_day, end_day, zoning, noise_scale)""",
        lambda conn: backfill_answer_shapes(_PgCursor(conn.cursor())),
    ]),
    # Issue 17: sharing groups. Each client's group (none: alone); every answer stored before this
    # step moves into the group of the client who released it (its reuse key and its shape row).
    (4, [
        """CREATE TABLE IF NOT EXISTS client_groups (
            client_id BIGINT PRIMARY KEY REFERENCES clients(id), group_name TEXT NOT NULL,
            updated_at TEXT NOT NULL)""",
        "ALTER TABLE answer_shapes ADD COLUMN IF NOT EXISTS share_group TEXT NOT NULL DEFAULT ''",
        # derivation candidates are searched within one group: other groups' answers are not even scanned
        """CREATE INDEX IF NOT EXISTS answer_shapes_by_group
            ON answer_shapes (dataset, share_group, kind, data_version, start_day, end_day, zoning, noise_scale)""",
        # each group's share of a dataset's global cap, and the running spend of each allocation
        # (group_name '': the unallocated pool)
        """CREATE TABLE IF NOT EXISTS group_caps (
            group_name TEXT NOT NULL, dataset TEXT NOT NULL, win BIGINT NOT NULL,
            cap_nanos BIGINT NOT NULL CHECK (cap_nanos >= 0), updated_at TEXT NOT NULL,
            PRIMARY KEY (group_name, dataset, win))""",
        """CREATE TABLE IF NOT EXISTS group_spend (
            dataset TEXT NOT NULL, win BIGINT NOT NULL, group_name TEXT NOT NULL,
            nanos BIGINT NOT NULL CHECK (nanos >= 0), PRIMARY KEY (dataset, win, group_name))""",
        lambda conn: rekey_answers(_PgCursor(conn.cursor())),
    ]),
    # Issue 17, populations: each population's grid, measure and horizon cap; its global caps, groups'
    # allocations and running spend ('*' all, '' the pool, else a group); each dataset's population and
    # offset on its grid; then every dataset placed with its caps and spend (_migrate_populations).
    (5, [
        """CREATE TABLE IF NOT EXISTS populations (
            population TEXT PRIMARY KEY, first_day TEXT, window_days BIGINT, measure TEXT, horizon_windows BIGINT,
            horizon_cap_nanos BIGINT CHECK (horizon_cap_nanos >= 0), registered_at TEXT NOT NULL)""",
        """CREATE TABLE IF NOT EXISTS population_caps (
            population TEXT NOT NULL, win BIGINT NOT NULL, cap_nanos BIGINT NOT NULL CHECK (cap_nanos >= 0),
            updated_at TEXT NOT NULL, PRIMARY KEY (population, win))""",
        """CREATE TABLE IF NOT EXISTS population_group_caps (
            group_name TEXT NOT NULL, population TEXT NOT NULL, win BIGINT NOT NULL,
            cap_nanos BIGINT NOT NULL CHECK (cap_nanos >= 0), updated_at TEXT NOT NULL,
            PRIMARY KEY (group_name, population, win))""",
        """CREATE TABLE IF NOT EXISTS population_spend (
            population TEXT NOT NULL, win BIGINT NOT NULL, holder TEXT NOT NULL,
            nanos BIGINT NOT NULL CHECK (nanos >= 0), PRIMARY KEY (population, win, holder))""",
        "ALTER TABLE datasets ADD COLUMN IF NOT EXISTS population TEXT NOT NULL DEFAULT 'default'",
        "ALTER TABLE datasets ADD COLUMN IF NOT EXISTS window_offset BIGINT NOT NULL DEFAULT 0",
        lambda conn: migrate_to_populations(_PgCursor(conn.cursor())),
    ]),
]
SCHEMA_VERSION = MIGRATIONS[-1][0]

_ANSWERS_UNIQUE = "answers_dataset_query_key_key"


@functools.lru_cache(maxsize=256)
def _to_pyformat(sql: str) -> str:
    """`?` placeholders (sqlite3, _sql.py) to psycopg's `%s`; a literal % must be doubled.

    Every `?` is taken for a placeholder: _sql.py's statements keep none inside string literals.
    """
    return sql.replace("%", "%%").replace("?", "%s")


class _PgCursor(Cursor):
    """A psycopg cursor that accepts the `?` statements of _sql.py."""

    def __init__(self, cur: psycopg.Cursor[Any]) -> None:
        self._cur = cur

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> _PgCursor:
        self._cur.execute(_to_pyformat(sql), params)
        return self

    def fetchone(self) -> Any:
        return self._cur.fetchone()

    def fetchall(self) -> list[Any]:
        return self._cur.fetchall()


def _unavailable(what: str, exc: BaseException) -> Unavailable:
    """A client-safe error: the exception's class only, never its text (it may name host or user)."""
    return Unavailable(f"{what} ({type(exc).__name__}); nothing was charged or released, retry later")


class PostgresLedger(SqlLedger):
    """A pool of connections to one PostgreSQL database; safe for many threads and many hosts."""

    def __init__(self, url: str, *, min_size: int = 1, max_size: int = 8, connect_timeout_s: float = 10.0,
                 pool_timeout_s: float = 10.0, lock_timeout_s: float = 10.0, pipeline: bool = True) -> None:
        self._url = url
        self._lock_timeout_ms = max(1, int(lock_timeout_s * 1000))
        self._pipeline = pipeline and psycopg.Pipeline.is_supported()
        self._connect_timeout_s = connect_timeout_s
        self._closed = False
        # The schema first, on a connection of its own: this also fails fast (Unavailable)
        # when the server is down, before a pool starts retrying in the background.
        self.migration_steps_applied = self.migrate()
        self._pool: ConnectionPool[psycopg.Connection[Any]] = ConnectionPool(
            url,
            min_size=min_size,
            max_size=max_size,
            open=False,
            timeout=pool_timeout_s,
            # A connection broken by a server restart is replaced at checkout, not handed out.
            check=ConnectionPool.check_connection,
            configure=self._configure,
            kwargs={"autocommit": True, "connect_timeout": max(1, int(connect_timeout_s)),
                    "application_name": "dpflows-ledger"},
            name="dpflows-ledger",
        )
        try:
            self._pool.open(wait=True, timeout=connect_timeout_s)
        except psycopg.Error as exc:
            self._pool.close()
            self._closed = True
            raise _unavailable("the ledger database cannot be reached", exc) from exc

    # -- schema -----------------------------------------------------------------------------

    def _connect(self) -> psycopg.Connection[Any]:
        try:
            return psycopg.connect(self._url, autocommit=True, connect_timeout=max(1, int(self._connect_timeout_s)),
                                   application_name="dpflows-migrate")
        except psycopg.Error as exc:
            raise _unavailable("the ledger database cannot be reached", exc) from exc

    def migrate(self) -> int:
        """Bring the schema to SCHEMA_VERSION; idempotent, and safe when several hosts start at once.

        Returns the number of migration steps applied (0 when the schema was current).
        """
        with self._connect() as conn:
            if conn.info.server_version < MIN_SERVER_VERSION:
                raise Unavailable(
                    f"PostgreSQL server version {conn.info.server_version} is too old for the ledger; "
                    "use PostgreSQL 14 or later"
                )
            try:
                with conn.transaction():
                    # Held until commit: a second host starting now waits here, then finds the
                    # schema current. DDL is transactional, so a failed step leaves nothing behind.
                    conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATE_LOCK,))
                    conn.execute(
                        "CREATE TABLE IF NOT EXISTS dpflows_schema (version INTEGER PRIMARY KEY, "
                        "applied_at TEXT NOT NULL)"
                    )
                    row = conn.execute("SELECT COALESCE(MAX(version), 0) FROM dpflows_schema").fetchone()
                    current = int(row[0]) if row is not None else 0
                    applied = 0
                    for version, statements in MIGRATIONS:
                        if version <= current:
                            continue
                        for statement in statements:
                            if callable(statement):  # a data step, in the same transaction
                                statement(conn)
                            else:
                                conn.execute(statement)  # no parameters: a % in it is literal
                        conn.execute(
                            "INSERT INTO dpflows_schema (version, applied_at) VALUES (%s, now()::text)", (version,)
                        )
                        applied += 1
            except psycopg.Error as exc:
                raise _unavailable("the ledger schema could not be created or upgraded", exc) from exc
        return applied

    # -- transactions and locks ------------------------------------------------------------

    def _configure(self, conn: psycopg.Connection[Any]) -> None:
        """Session limits, so that one stalled host cannot hold every other host's charges hostage.

        A release waiting longer than lock_timeout for a spend row fails with Unavailable (and
        charges nothing); a session idle inside a transaction for 60 s is ended by the server,
        which releases its locks.
        """
        conn.execute(
            "SELECT set_config('lock_timeout', %s, false), "
            "set_config('idle_in_transaction_session_timeout', '60s', false)",
            (f"{self._lock_timeout_ms}ms",),
        )

    @contextmanager
    def _transaction(self, *, write: bool) -> Iterator[Cursor]:
        # READ COMMITTED (the server default) on purpose: each statement sees what committed
        # before it started, which is what lets a release that waited on a spend row see the
        # answer stored by the release it waited for. For the same reason a read-only block
        # gains nothing from BEGIN/COMMIT: its statements run in autocommit, two round trips fewer.
        committing = False
        try:
            with self._pool.connection() as conn:
                if not write:
                    with conn.cursor() as cur:
                        yield _PgCursor(cur)
                    return
                # Pipeline mode: statements whose results are not fetched (locks, inserts, COMMIT)
                # travel with the next one that is, so a charge costs a few round trips, not twenty.
                # The server still runs them one by one, in the order sent.
                pipeline = conn.pipeline() if self._pipeline else contextlib.nullcontext()
                with pipeline, conn.transaction(), conn.cursor() as cur:
                    yield _PgCursor(cur)
                    committing = True
        except psycopg.IntegrityError:
            raise  # a unique violation the caller turns into Conflict (or a reuse, below)
        except psycopg.Error as exc:
            if committing and write:
                # The COMMIT was sent but not confirmed: it may have landed. Retrying the same
                # query is safe: if it did land, the retry reuses the stored answer at no cost.
                raise Unavailable(
                    f"the ledger could not confirm the commit ({type(exc).__name__}); retry the same "
                    "query later: it will not be charged twice"
                ) from exc
            raise _unavailable("the ledger is unavailable", exc) from exc

    def _lock_spend_rows(self, cur: Cursor, place: tuple[str, int], dataset: str, windows: tuple[int, ...],
                         client_id: int, holders: dict[int, str], legacy_holders: dict[int, str] | None,
                         horizon: bool) -> None:
        """Create if missing, then lock, each row a charge reads and writes, in one global order: the
        population's record if it has a horizon cap (its check reads windows the charge does not touch,
        so every charge of the population serializes on it); then per population window ascending, the
        holder row (its group's allocation or the pool) and the total row; then per dataset window
        ascending, the client's row, the dataset's own group row (legacy caps only) and the all-clients row."""
        population, offset = place
        if horizon:
            cur.execute("SELECT population FROM populations WHERE population = ? FOR UPDATE", (population,))
        for window in sorted(windows):
            for holder in (holders.get(window + offset, ""), TOTAL):
                cur.execute("INSERT INTO population_spend (population, win, holder, nanos) VALUES (?, ?, ?, 0) "
                            "ON CONFLICT (population, win, holder) DO NOTHING", (population, window + offset, holder))
                cur.execute("SELECT nanos FROM population_spend WHERE population = ? AND win = ? AND holder = ? "
                            "FOR UPDATE", (population, window + offset, holder))
        for window in sorted(windows):
            cids = (client_id, GLOBAL) if client_id != GLOBAL else (GLOBAL,)
            for cid in cids:
                if cid == GLOBAL and legacy_holders is not None:
                    cur.execute(
                        "INSERT INTO group_spend (dataset, win, group_name, nanos) VALUES (?, ?, ?, 0) "
                        "ON CONFLICT (dataset, win, group_name) DO NOTHING",
                        (dataset, window, legacy_holders.get(window, "")),
                    )
                    cur.execute(
                        "SELECT nanos FROM group_spend WHERE dataset = ? AND win = ? AND group_name = ? FOR UPDATE",
                        (dataset, window, legacy_holders.get(window, "")),
                    )
                cur.execute(
                    "INSERT INTO spend (dataset, win, client_id, nanos) VALUES (?, ?, ?, 0) "
                    "ON CONFLICT (dataset, win, client_id) DO NOTHING",
                    (dataset, window, cid),
                )
                cur.execute(
                    "SELECT nanos FROM spend WHERE dataset = ? AND win = ? AND client_id = ? FOR UPDATE",
                    (dataset, window, cid),
                )  # not fetched: the lock is taken when the server runs it, before what follows

    def _lock_allocations(self, cur: Cursor, *, exclusive: bool) -> None:
        """Allocations, the global caps and group memberships change under an exclusive advisory lock;
        every charge holds it shared for its transaction (taken before any spend row, so no cycle)."""
        lock = "pg_advisory_xact_lock" if exclusive else "pg_advisory_xact_lock_shared"
        cur.execute(f"SELECT {lock}(?)", (ALLOCATIONS_LOCK,))

    def _lock_audit_tail(self, cur: Cursor) -> None:
        """One tail for the hash chain: appends serialize on a transaction-scoped advisory lock."""
        cur.execute("SELECT pg_advisory_xact_lock(?)", (AUDIT_TAIL_LOCK,))

    def _is_unique_violation(self, exc: Exception) -> bool:
        return isinstance(exc, psycopg.errors.UniqueViolation)

    def commit_release(self, request: ReleaseRequest) -> ReleaseReceipt:
        """As SqlLedger's; a release that lost an insert race on its query key is retried once, and reuses."""
        for attempt in (1, 2):
            try:
                return super().commit_release(request)
            except psycopg.IntegrityError as exc:
                lost_race = (isinstance(exc, psycopg.errors.UniqueViolation)
                             and exc.diag.constraint_name == _ANSWERS_UNIQUE)
                if not lost_race or attempt == 2:
                    raise _unavailable("the ledger refused the release", exc) from exc
                # Rolled back; the identical query committed meanwhile, so the retry finds and reuses it.
        raise AssertionError("unreachable")

    def close(self) -> None:
        if not self._closed:
            self._close_audit_queue()
            self._closed = True
            self._pool.close()
