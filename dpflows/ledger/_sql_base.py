"""What the SQL ledger's parts share: the cursor protocol, the clock, and the hooks a dialect provides."""

from __future__ import annotations

import datetime as dt
from contextlib import AbstractContextManager
from typing import Any, Protocol

from dpflows.ledger.base import (
    Client,
    WindowBudget,
)

GLOBAL = 0  # client_id of the global cap and of the all-clients spend row
EVERY_WINDOW = -1
_CLIENT_SELECT = ("SELECT c.id, c.name, c.role, c.created_at, g.group_name FROM clients c "
                  "LEFT JOIN client_groups g ON g.client_id = c.id")


def utc_now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")


class Cursor(Protocol):
    """The small part of a DB-API cursor the ledger uses."""

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> Any: ...
    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...


class SqlBase:
    """The hooks SQLite and PostgreSQL provide, and helpers every part of the SQL ledger uses."""

    def _transaction(self, *, write: bool) -> AbstractContextManager[Cursor]:
        raise NotImplementedError

    def _is_unique_violation(self, exc: Exception) -> bool:
        raise NotImplementedError

    def _lock_audit_tail(self, cur: Cursor) -> None:
        """Serialize appends so the chain has one tail; SQLite's write lock already does."""

    def _budgets(self, cur: Cursor, dataset: str, client_id: int, windows: list[int]) -> list[WindowBudget]:
        raise NotImplementedError

    def _lock_allocations(self, cur: Cursor, *, exclusive: bool) -> None:
        raise NotImplementedError

    def _client_from_row(self, row: Any) -> Client:
        raise NotImplementedError

    def get_client(self, client_id: int) -> Client:
        raise NotImplementedError
