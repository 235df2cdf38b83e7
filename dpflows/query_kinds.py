"""The query kinds and the key fields of their answers: one list shared by the service and the client.

Imports nothing heavy (no Polars, no OpenDP), so `dpflows.client` reads it as the server does.
"""

from __future__ import annotations

QUERY_KINDS: tuple[str, ...] = ("flows", "presence", "patterns", "inflows", "outflows", "residents", "commuting")
#: The fields that key each answer's values, in the order values are released.
KEY_FIELDS: dict[str, tuple[str, ...]] = {
    "flows": ("origin", "destination"),
    "presence": ("zone", "hour"),
    "patterns": ("weekday", "hour"),
    "inflows": ("zone",),
    "outflows": ("zone",),
    "residents": ("zone", "window"),
    "commuting": ("home", "work", "window"),
}
#: What the counts of each kind measure (patterns: its `measure`, trips or presence).
COUNTED_MEASURE: dict[str, str] = {"flows": "trips", "presence": "presence", "inflows": "trips",
                                   "outflows": "trips", "residents": "residents", "commuting": "commuting"}
#: Kinds asked over whole windows only (one home and one work cell per person-window).
WINDOW_KINDS = ("residents", "commuting")
#: Kinds whose answers form a two-way table (consistent totals apply).
TABLE_KINDS = ("flows", "presence", "patterns")
PLACES = ("home", "work")
assert set(KEY_FIELDS) == set(QUERY_KINDS)
