"""The query kinds and the key fields of their answers: one list shared by the service and the client.

Imports nothing heavy (no Polars, no OpenDP), so `dpflows.client` reads it as the server does.
"""

from __future__ import annotations

QUERY_KINDS: tuple[str, ...] = ("flows", "presence", "patterns")
#: The fields that key each answer's values, in the order values are released.
KEY_FIELDS: dict[str, tuple[str, ...]] = {
    "flows": ("origin", "destination"),
    "presence": ("zone", "hour"),
    "patterns": ("weekday", "hour"),
}
assert set(KEY_FIELDS) == set(QUERY_KINDS)
