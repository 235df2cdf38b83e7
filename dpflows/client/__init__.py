"""A Python client for the dpflows HTTP API: typed calls, answers as Polars frames, typed errors.

The one place in ``dpflows`` that speaks HTTP, as a client only: it uses the standard
library's ``urllib.request`` and imports neither Flask nor ``api``. Every answer keeps what
the service said about its cost and accuracy next to the values::

    client = DpflowsClient("http://127.0.0.1:8000", api_key)
    quote = client.quote("flows", "city", "districts", "2024-03-04", "2024-03-11", epsilon=0.25)
    answer = client.flows("city", "districts", "2024-03-04", "2024-03-11", epsilon=0.25)
    answer.values          # polars: origin, destination, count, error_bound_95, lower, upper
    answer.budget_remaining, answer.reused, answer.windows
    answer.to_geojson()    # for GIS tools (see dpflows.geo)

Errors mirror the API's error codes (``{"error": {"code", "message", "field"}}``)::

    DpflowsClientError                 .code .status .field .message
    ├── InvalidInputError              invalid_input, domain_too_large, invalid_data (422), bad JSON (400)
    ├── AuthenticationError            unauthenticated (401)
    ├── ForbiddenError                 forbidden (403)
    ├── NotFoundError                  not_found (404)
    ├── BudgetExceededError            budget_exceeded (409): nothing was charged
    ├── ConflictError                  conflict (409)
    ├── RateLimitedError               rate_limited (429), .retry_after seconds if given
    └── UnavailableError               unavailable, data_unavailable (503)
        └── ConnectionFailedError      the service could not be reached at all
"""

from __future__ import annotations

from dpflows.client.errors import (
    ERRORS_BY_FAMILY,
    ERRORS_BY_STATUS,
    AuthenticationError,
    BudgetExceededError,
    ConflictError,
    ConnectionFailedError,
    DpflowsClientError,
    ForbiddenError,
    InvalidInputError,
    NotFoundError,
    RateLimitedError,
    UnavailableError,
    error_from_response,
)
from dpflows.client.http import DpflowsClient
from dpflows.client.records import (
    Budget,
    BudgetWindow,
    ClientInfo,
    DatasetInfo,
    IssuedKey,
    KeyInfo,
    Mechanism,
    QueryAnswer,
    Quote,
    RelativeChangeAnswer,
    WindowCharge,
    parse_answer,
    values_frame,
)
from dpflows.query_kinds import KEY_FIELDS, QUERY_KINDS

__all__ = [
    "ERRORS_BY_FAMILY", "ERRORS_BY_STATUS", "KEY_FIELDS", "QUERY_KINDS", "AuthenticationError", "Budget",
    "BudgetExceededError", "BudgetWindow", "ClientInfo", "ConflictError", "ConnectionFailedError", "DatasetInfo",
    "DpflowsClient", "DpflowsClientError", "ForbiddenError", "InvalidInputError", "IssuedKey", "KeyInfo",
    "Mechanism", "NotFoundError", "QueryAnswer", "Quote", "RateLimitedError", "RelativeChangeAnswer",
    "UnavailableError", "WindowCharge", "error_from_response", "parse_answer", "values_frame",
]
