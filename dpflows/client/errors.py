"""The client's typed errors, chosen by the family the service's own error table gives each code."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class DpflowsClientError(Exception):
    """An error answer from the service (or no answer at all), with the API's code and field."""

    def __init__(self, message: str, *, code: str = "error", status: int | None = None,
                 field: str | None = None, details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status
        self.field = field
        self.details = details

    def __str__(self) -> str:
        where = f" (field {self.field})" if self.field else ""
        status = f"HTTP {self.status} " if self.status else ""
        return f"{status}{self.code}: {self.message}{where}"


class InvalidInputError(DpflowsClientError):
    """The request was malformed or named something impossible; fix the field it names."""


class AuthenticationError(DpflowsClientError):
    """Missing, unknown or revoked API key."""


class ForbiddenError(DpflowsClientError):
    """The key's role or a per-query ε cap forbids this query."""


class NotFoundError(DpflowsClientError):
    """Unknown dataset, zoning, client or key."""


class BudgetExceededError(DpflowsClientError):
    """A budget cap would be exceeded; nothing was charged and nothing released."""


class ConflictError(DpflowsClientError):
    """A name is already taken."""


class RateLimitedError(DpflowsClientError):
    """Too many requests for this key; wait ``retry_after`` seconds (if the service said)."""

    retry_after: float | None = None


class UnavailableError(DpflowsClientError):
    """The service cannot answer now (ledger or data unavailable); nothing was charged."""


class ConnectionFailedError(UnavailableError):
    """No HTTP answer at all: connection refused, DNS failure or timeout."""


#: The service's error families (``GET /v1/errors``: each code's family) -> this client's classes.
ERRORS_BY_FAMILY: dict[str, type[DpflowsClientError]] = {
    "InvalidInput": InvalidInputError, "AuthenticationFailed": AuthenticationError,
    "PolicyViolation": ForbiddenError, "NotFound": NotFoundError, "BudgetExceeded": BudgetExceededError,
    "Conflict": ConflictError, "RateLimited": RateLimitedError, "Unavailable": UnavailableError,
}
#: HTTP's own meaning of a status, for answers without a dpflows error body (a proxy's, say).
ERRORS_BY_STATUS: dict[int, type[DpflowsClientError]] = {
    400: InvalidInputError, 401: AuthenticationError, 403: ForbiddenError, 404: NotFoundError,
    409: ConflictError, 422: InvalidInputError, 429: RateLimitedError, 503: UnavailableError,
}


def error_from_response(status: int, body: Any, headers: Any = None,
                        families: Mapping[str, str] | None = None) -> DpflowsClientError:
    """The typed exception for an error answer: by the family the service's error table gives its
    code (`families`: code -> family, from ``GET /v1/errors``), else by HTTP status.

    ``headers`` is anything with ``.get(name, default)`` (a dict or an ``email.message.Message``).
    """
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict):
        code = str(err.get("code", "error"))
        message = str(err.get("message", "")) or f"HTTP {status}"
        family = (families or {}).get(code)
        cls = ERRORS_BY_FAMILY.get(family or "") or ERRORS_BY_STATUS.get(status, DpflowsClientError)
        exc = cls(message, code=code, status=status, field=err.get("field"), details=err.get("details"))
    else:
        cls = ERRORS_BY_STATUS.get(status, DpflowsClientError)
        exc = cls(f"HTTP {status} without a dpflows error body", code=f"http_{status}", status=status)
    if isinstance(exc, RateLimitedError) and headers is not None:
        try:
            exc.retry_after = float(headers.get("Retry-After", ""))
        except ValueError:
            exc.retry_after = None
    return exc
