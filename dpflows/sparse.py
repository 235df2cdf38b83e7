"""Sparse answers: when a query is released over its observed keys only, and what those keys hold.

Whether an answer is sparse is decided from public facts only: the size of its public domain
(zones, hours, weekdays and the windows it spans, `queries.domain_size`) against the dataset's
`dense_limit`, and whether its accounting releases sparsely (approximate DP). Never from how many
keys the data holds: a query over the limit on a dataset without sparse release is refused, with
the reason and the fix, before anything is read.

A sparse answer's true counts are those of the keys at least one aggregate row hits (the observed
keys), computed from the same rows and key indices as a dense answer (`queries.row_chunks`), so a
key means the same in both. What is released of them is decided by OpenDP's thresholded mechanism
(dpflows.mechanisms.release_sparse); how many keys were observed never leaves this module's caller
(no answer, error or log holds it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dpflows.accounting import accounting
from dpflows.aggregates import Dataset
from dpflows.errors import DomainTooLarge
from dpflows.queries import QuerySpec, domain_size, row_chunks

#: Observed keys are counted with one bincount over the whole domain up to this many keys (8 bytes each,
#: 32 MB), else by sorting the rows' keys: a choice made from the domain's size (public) alone.
BINCOUNT_DOMAIN = 4_000_000
#: Above, rows are gathered and sorted once; past this many gathered rows (16 bytes each, 128 MB) they are reduced
#: to their distinct keys before more are read.
REDUCE_ROWS = 8_000_000


def is_sparse(spec: QuerySpec, data: Dataset) -> bool:
    """Whether `spec` is released sparsely on `data`; refused (DomainTooLarge) where its domain is above the
    dataset's dense limit and its accounting has no sparse release. Public facts only."""
    size = domain_size(spec, data)
    meta = data.metadata
    if size <= meta.dense_limit:
        return False
    acc = accounting(meta.accounting)
    if acc.allows_sparse:
        return True
    raise DomainTooLarge(
        f"{spec.kind} on zoning={spec.zoning!r} has {size} keys, above the dense-release limit of "
        f"{meta.dense_limit} of dataset {meta.name!r}, which is accounted in {acc.label} and so cannot release "
        "only the keys its data supports; use a coarser zoning or fewer hours or windows, or ask the operator for "
        "a dataset ingested with --accounting approx_dp (sparse release with a threshold, costing a delta)",
        field="zoning",
    )


@dataclass(frozen=True)
class ObservedCounts:
    """The keys (domain indices, ascending) that at least one counted row hits, and their exact counts (>= 1)."""

    keys: np.ndarray  # int64
    counts: np.ndarray  # int64

    def __len__(self) -> int:
        return len(self.keys)


def observed_counts(spec: QuerySpec, data: Dataset) -> ObservedCounts:
    """Exact counts of the observed keys of `spec` (never leaves the process), read piece by piece from the
    slots the query asks for (`queries.row_chunks`): memory follows the keys hit, never the domain's size."""
    size = domain_size(spec, data)
    if size <= BINCOUNT_DOMAIN:
        binned = np.zeros(size, dtype=np.float64)
        for keys, weights in row_chunks(spec, data):
            binned += np.bincount(keys, weights=weights, minlength=size)
        counts = np.rint(binned).astype(np.int64)
        hit = np.flatnonzero(counts)
        return ObservedCounts(hit.astype(np.int64), counts[hit])
    # Rows are gathered and reduced once (one sort: 27 ms for the 684,549 rows of a week's cell-level morning
    # peak, against 80 ms for a reduction per slot then of the parts); past REDUCE_ROWS rows the gathered part
    # is reduced to its distinct keys first, so memory follows the keys hit.
    keys, counts = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float64)
    pending: list[tuple[np.ndarray, np.ndarray]] = []
    rows = 0
    for chunk_keys, weights in row_chunks(spec, data):
        pending.append((np.asarray(chunk_keys, dtype=np.int64), np.asarray(weights, dtype=np.float64)))
        rows += len(chunk_keys)
        if rows >= REDUCE_ROWS:
            keys, counts = _reduced([(keys, counts), *pending])
            pending, rows = [], len(keys)
    keys, counts = _reduced([(keys, counts), *pending])
    exact = np.rint(counts).astype(np.int64)
    positive = exact > 0
    return ObservedCounts(keys[positive], exact[positive])


def _reduced(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """The distinct keys (ascending) of the parts' rows and the sum of their weights."""
    keys = np.concatenate([k for k, _ in parts])
    weights = np.concatenate([w for _, w in parts])
    if not len(keys):
        return keys, weights
    order = np.argsort(keys)
    keys, weights = keys[order], weights[order]
    starts = np.flatnonzero(np.concatenate(([True], keys[1:] != keys[:-1])))
    return keys[starts], np.add.reduceat(weights, starts)
