"""Privacy accounting: the Ledger protocol and its implementations (the only code that speaks SQL)."""

from __future__ import annotations

from dpflows.errors import InvalidInput
from dpflows.ledger.base import (
    ROLES,
    Allocation,
    ApiKeyRecord,
    AuditEntry,
    Client,
    DatasetGrid,
    Ledger,
    ReleaseReceipt,
    ReleaseRequest,
    StoredAnswer,
    WindowBudget,
)


def open_ledger(url: str) -> Ledger:
    """A ledger from a URL: `sqlite:///path/to/ledger.db`, `memory://`, or `postgresql://...`."""
    if url.startswith("sqlite:///"):
        from dpflows.ledger.sqlite import SqliteLedger

        return SqliteLedger(url.removeprefix("sqlite:///"))
    if url == "memory://":
        from dpflows.ledger.memory import MemoryLedger

        return MemoryLedger()
    if url.startswith(("postgresql://", "postgres://")):
        from dpflows.ledger.postgres import PostgresLedger  # type: ignore[import-not-found,unused-ignore]

        return PostgresLedger(url)  # type: ignore[no-any-return,unused-ignore]
    scheme = url.split(":", 1)[0] if ":" in url else url[:16]  # never echo a URL: it may hold a password
    raise InvalidInput(
        f"ledger url scheme {scheme!r} is not supported; use sqlite:///PATH, memory:// or postgresql://...",
        field="ledger_url",
    )


__all__ = [
    "ROLES", "Allocation", "ApiKeyRecord", "AuditEntry", "Client", "DatasetGrid", "Ledger", "ReleaseReceipt",
    "ReleaseRequest", "StoredAnswer", "WindowBudget", "open_ledger",
]
