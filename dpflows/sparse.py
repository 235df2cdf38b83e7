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
    parts = [_reduced(keys, weights) for keys, weights in row_chunks(spec, data)]
    if not parts:
        return ObservedCounts(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))
    keys, counts = _reduced(np.concatenate([k for k, _ in parts]), np.concatenate([c for _, c in parts]))
    positive = counts > 0
    return ObservedCounts(keys[positive], counts[positive])


def _reduced(keys: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct keys (ascending) and the sum of their weights, as int64."""
    unique, inverse = np.unique(np.asarray(keys, dtype=np.int64), return_inverse=True)
    return unique, np.rint(np.bincount(inverse, weights=weights, minlength=len(unique))).astype(np.int64)
