"""Bearer-key authentication, role checks and a per-key rate limit, as view decorators.

The key check itself lives in `dpflows.service.Service.authenticate` (hash lookup, constant-
time comparison). Here we only read the header, ask the service, and enforce roles.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from flask import current_app, g, request

from dpflows.errors import PolicyViolation, RateLimited
from dpflows.ledger import Client

F = TypeVar("F", bound=Callable[..., Any])


class RateLimiter:
    """Token bucket per client: `rate` requests per second, bursts up to `burst`.

    Per process: with W gunicorn workers a client can reach W × rate in total. That bounds
    abuse of CPU, not privacy: the ledger bounds privacy loss whatever the request rate.
    """

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self._buckets: dict[int, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, client_id: int) -> None:
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(client_id, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - last) * self.rate)
            if tokens < 1.0:
                retry = max(1, int((1.0 - tokens) / self.rate + 0.999))
                self._buckets[client_id] = (tokens, now)
                raise RateLimited(
                    f"too many requests for this key: the limit is {self.rate:g} per second with bursts of "
                    f"{self.burst}; retry after {retry} s",
                    details={"retry_after": retry},
                )
            self._buckets[client_id] = (tokens - 1.0, now)


def bearer_key() -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, key = header.partition(" ")
    return key.strip() if scheme.lower() == "bearer" and key.strip() else None


def current_client() -> Client:
    return g.client  # type: ignore[no-any-return]


def require(*roles: str) -> Callable[[F], F]:
    """Authenticate the caller, check its role and its rate limit, then run the view."""

    def decorator(view: F) -> F:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            ext = current_app.extensions["dpflows"]
            client = ext.service.authenticate(bearer_key())
            g.client = client
            if roles and client.role not in roles:
                raise PolicyViolation(
                    f"role {client.role} may not call {request.method} {request.path}; it needs role "
                    f"{' or '.join(roles)}",
                    field="role",
                )
            ext.rate_limiter.take(client.id)
            return view(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorator
