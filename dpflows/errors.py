"""One exception tree for dpflows. Every message is safe to show a client.

Messages name the parameter, the offending value and the fix. They never carry an exact
count, a raw record or a person identifier: callers pass only public values (query
parameters, file names, row numbers, column names) into them.

    DpflowsError                      code
    ├── InvalidInput                  invalid_input      bad parameter or malformed query
    │   ├── DomainTooLarge            domain_too_large   dense release would be too big
    │   └── InvalidData               invalid_data       bad ingestion input (file, column, rows)
    ├── NotFound                      not_found          unknown dataset, zoning, client, answer
    ├── AuthenticationFailed          unauthenticated    missing, unknown or revoked key
    ├── PolicyViolation               forbidden          role or per-query cap forbids the query
    ├── BudgetExceeded                budget_exceeded    a cap would be exceeded; nothing charged
    ├── Conflict                      conflict           name already taken
    ├── RateLimited                   rate_limited       too many requests for one key
    └── Unavailable                   unavailable        ledger or aggregates cannot be used now
        └── DataUnavailable           data_unavailable   aggregate files missing or corrupt

`api/` maps `code` to an HTTP status in one place; this module knows nothing of HTTP.
"""

from __future__ import annotations

from typing import Any


class DpflowsError(Exception):
    """Base of every error dpflows raises on purpose."""

    code = "error"

    def __init__(self, message: str, *, field: str | None = None, details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        """The client-facing shape of the error (no traceback, no internal state)."""
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.field is not None:
            body["field"] = self.field
        if self.details is not None:
            body["details"] = self.details
        return body


class InvalidInput(DpflowsError):
    """Bad parameter or malformed query; nothing was charged."""

    code = "invalid_input"


class DomainTooLarge(InvalidInput):
    """The answer's key domain is too large to release densely."""

    code = "domain_too_large"


class InvalidData(InvalidInput):
    """Bad ingestion input (file, column, rows)."""

    code = "invalid_data"


class NotFound(DpflowsError):
    """Unknown dataset, zoning, client or answer."""

    code = "not_found"


class AuthenticationFailed(DpflowsError):
    """Missing, unknown or revoked API key."""

    code = "unauthenticated"


class PolicyViolation(DpflowsError):
    """The client's role or a per-query cap forbids the query."""

    code = "forbidden"


class BudgetExceeded(DpflowsError):
    """A budget cap would be exceeded; nothing was charged or released."""

    code = "budget_exceeded"


class Conflict(DpflowsError):
    """A name is taken, or a dataset conflicts with what the ledger recorded."""

    code = "conflict"


class RateLimited(DpflowsError):
    """Too many requests for one key or client address; retry after a while."""

    code = "rate_limited"


class Unavailable(DpflowsError):
    """The ledger or the aggregates cannot be used now; nothing was charged."""

    code = "unavailable"


class DataUnavailable(Unavailable):
    """Aggregate files are missing or corrupt."""

    code = "data_unavailable"
