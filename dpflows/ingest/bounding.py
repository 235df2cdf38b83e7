"""Contribution bounding: at most L records per person per window, kept by uniform sampling.

The bound L is the ℓ1 sensitivity of every count over the bounded records: neighbouring
datasets differ by one person's records in one window, and after this step those are at most
L records, each counted in at most one key of any query (design §2). L is stored with the
aggregates and the noise is calibrated to it.

Which L records survive is chosen uniformly at random, never "the first L": the order of a
person's records (earliest trips, most frequent cells) would leak into the choice. Each record
is ranked by a keyed hash of its content with a secret 64-bit seed, a pseudo-random
permutation of the person-window's records; the L smallest ranks are kept. This is sampling
for contribution bounding, not noise, and is seeded only in tests: by default the seed comes
from `secrets`, so the choice cannot be predicted or replayed from the data alone.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence

import polars as pl


def new_seed() -> int:
    """A fresh secret seed for one ingestion (polars hashes take a 64-bit seed)."""
    return secrets.randbits(63)


def bound_per_person_window(records: pl.LazyFrame, bound: int, *, seed: int,
                            person: str = "person", window: str = "window") -> pl.LazyFrame:
    """Keep at most `bound` records of each (person, window), chosen uniformly at random."""
    if bound < 1:
        raise ValueError(f"bound={bound} must be at least 1")
    columns = records.collect_schema().names()
    # (person, window, ...) -> each record gets a rank in a random permutation of its group
    ranked = records.with_columns(record_hash(columns, seed).rank("ordinal").over([person, window]).alias("_rank"))
    # (person, window) -> at most `bound` records
    return ranked.filter(pl.col("_rank") <= bound).drop("_rank")


def record_hash(columns: Sequence[str], seed: int) -> pl.Expr:
    """The rank key of a record: a keyed 64-bit hash of its whole content (all `columns`, in order)."""
    return pl.struct(columns).hash(seed)


def cap_per_person_key(records: pl.LazyFrame, cap: int, *, keys: list[str], person: str = "person") -> pl.LazyFrame:
    """Keep at most `cap` records of each person per aggregate row (`keys`): zCDP's per-key cap.

    Applied before the per-window bound, it makes C the most one person adds to one row, which
    with L gives the ℓ2 sensitivity of the Gaussian (mechanisms.l2_sensitivity). Records of one
    person with equal keys count identically, so which of them are kept does not matter.
    """
    if cap < 1:
        raise ValueError(f"cap={cap} must be at least 1")
    # (person, *keys) -> at most `cap` records
    return records.filter(pl.int_range(pl.len()).over([person, *keys]) < cap)
