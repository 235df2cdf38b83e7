"""Bearer-key authentication, rate limits and role checks, as one view decorator.

The key check itself lives in `dpflows.service.Service.authenticate` (hash lookup, constant-
time comparison). Here we only read the header, ask the service, and enforce the limits of
`api.ratelimit` and the roles. `require` sits above `@blp.arguments` on every view, so a
request is authenticated (and counted) before its body is parsed or validated: a bad key with
a bad body gets 401, and an address out of failed authentications gets 429 either way.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

from flask import current_app, g, request

from dpflows.errors import AuthenticationFailed, PolicyViolation
from dpflows.ledger import Client

F = TypeVar("F", bound=Callable[..., Any])


def bearer_key() -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, key = header.partition(" ")
    return key.strip() if scheme.lower() == "bearer" and key.strip() else None


def current_client() -> Client:
    return g.client  # type: ignore[no-any-return]


def require(*roles: str) -> Callable[[F], F]:
    """Authenticate the caller (failures counted per client address), take its key's rate-limit
    token, check its role, then run the view (and only then, the schema of its arguments)."""

    def decorator(view: F) -> F:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            ext = current_app.extensions["dpflows"]
            limits = ext.rate_limits
            address = limits.client_address(request.remote_addr, request.headers.get("X-Real-IP"),
                                             request.headers.get("X-Forwarded-For"))
            limits.check_address(address)
            try:
                client = ext.service.authenticate(bearer_key())
            except AuthenticationFailed:
                limits.failed_authentication(address)
                raise
            g.client = client
            limits.take(client.id)
            if roles and client.role not in roles:
                raise PolicyViolation(
                    f"role {client.role} may not call {request.method} {request.path}; it needs role "
                    f"{' or '.join(roles)}",
                    field="role",
                )
            return view(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorator
