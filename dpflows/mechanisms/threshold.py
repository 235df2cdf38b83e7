"""Approximate DP for large domains: OpenDP's discrete Laplace with a threshold, over the observed keys only.

A dense release noises every key of the public domain; a domain of millions of keys (cell-level
OD) cannot be noised in time. `make_laplace_threshold` takes the map of keys the data holds
(key -> count), adds discrete Laplace noise to each count, and releases only the keys whose noisy
count reaches the threshold (Rogers 2023; OpenDP's proof of `make_laplace_threshold`). A key
absent from the data is never released: that is what costs the δ.

Its input metric is the triple (ℓ0, ℓ1, ℓ∞) of one person-window's contribution to the answer's
keys: how many keys it touches, how much it adds in all, and the most it adds to one key
(dpflows.sensitivity). OpenDP's map gives ε = min(ℓ1, ℓ0·ℓ∞)/scale and a δ that falls as the
threshold rises; every figure here comes from that map:

- the scale is the smallest float whose map's ε is within the ε asked (`threshold_scale`);
- the threshold is the smallest integer whose map's δ, rounded up to atto-units, is within the δ
  asked, found by a doubling then a bisection over OpenDP's own map (`smallest_threshold`); δ
  falls monotonically in the threshold (tests/test_sparse_mechanism.py checks it on a grid), down to
  a floor of ℓ0·2^-53 ≈ ℓ0·1.1e-16 (OpenDP's float arithmetic rounds up): a δ below it is refused.

Both searches take time independent of the data: O(log threshold) constructions of the
measurement (each well under a millisecond), cached per (triple, scale, δ). The release itself
takes time in proportion to the observed keys (OpenDP's exact sampler, 9-14 µs of CPU a key on this
project's loaded machine, about half of it OpenSSL's generator, called for a few bytes at a time; the
keys are shared among the cores, `THREADS`); docs/privacy.md says what that timing can reveal.
"""

from __future__ import annotations

import itertools
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from typing import Any

import numpy as np
import opendp.prelude as dp

from dpflows.budget import ApproxDP, PrivacyLoss, delta_from_privacy_map
from dpflows.errors import InvalidInput
from dpflows.mechanisms._base import DEFAULT_CONFIDENCE, MechanismError
from dpflows.mechanisms.laplace import epsilon_for_error, error_bound, sum_error_bound

DISCRETE_LAPLACE_THRESHOLD = "discrete_laplace_threshold"
#: No threshold above this is searched: a δ that needs more is refused (it would release nothing).
MAX_THRESHOLD = 1 << 40


@dataclass(frozen=True)
class Contribution:
    """(ℓ0, ℓ1, ℓ∞): the most keys one person-window touches, the most it adds in all, and to one key."""

    l0: int
    l1: int
    linf: int

    def __post_init__(self) -> None:
        if not (1 <= self.l0 and 1 <= self.linf <= self.l1):
            raise MechanismError(f"contribution (l0={self.l0}, l1={self.l1}, linf={self.linf}) is not a bound: "
                                 "need l0 >= 1 and 1 <= linf <= l1")

    def as_tuple(self) -> tuple[int, int, int]:
        return (self.l0, self.l1, self.linf)

    def to_json(self) -> dict[str, int]:
        return {"l0": self.l0, "l1": self.l1, "linf": self.linf}

    @classmethod
    def from_json(cls, doc: Any) -> Contribution:
        return cls(int(doc["l0"]), int(doc["l1"]), int(doc["linf"]))


@lru_cache(maxsize=4096)
def _laplace_threshold(scale: float, threshold: int) -> dp.Measurement:
    """The measurement over maps of i64 keys to i64 counts, under the (ℓ0, ℓ1, ℓ∞) metric."""
    try:
        return dp.m.make_laplace_threshold(
            dp.map_domain(dp.atom_domain(T="i64"), dp.atom_domain(T="i64")),
            dp.l01inf_distance(dp.absolute_distance(T="i64")), scale=scale, threshold=threshold)
    except dp.OpenDPException as exc:
        raise MechanismError(f"noise scale {scale!r} with threshold {threshold} is not usable: {exc.message}") from exc


def threshold_privacy_loss(contribution: Contribution, scale: float, threshold: int) -> tuple[Fraction, Fraction]:
    """(ε, δ) of the thresholded release at this scale and threshold for this contribution, per OpenDP."""
    try:
        epsilon, delta = _laplace_threshold(scale, threshold).map(contribution.as_tuple())
    except dp.OpenDPException as exc:
        raise MechanismError(f"privacy map failed for {contribution.to_json()}: {exc.message}") from exc
    return Fraction(epsilon), Fraction(delta)


@lru_cache(maxsize=1024)
def threshold_scale(contribution: Contribution, epsilon_nanos: int) -> float:
    """The smallest float scale whose OpenDP map gives at most ε for this contribution (ε does not depend on
    the threshold; the map is read at the smallest threshold OpenDP allows, ℓ∞)."""
    if epsilon_nanos <= 0:
        raise InvalidInput("epsilon=0 releases nothing useful; send a positive epsilon", field="epsilon")
    target = Fraction(epsilon_nanos, 1_000_000_000)
    scale = float(Fraction(min(contribution.l1, contribution.l0 * contribution.linf)) / target)
    for _ in range(64):
        if threshold_privacy_loss(contribution, scale, contribution.linf)[0] <= target:
            return scale
        scale = float(np.nextafter(scale, np.inf))
    raise MechanismError(f"no noise scale meets epsilon={target} for {contribution.to_json()}")


@lru_cache(maxsize=1024)
def smallest_threshold(contribution: Contribution, scale: float, delta_attos: int) -> int:
    """The smallest integer threshold whose OpenDP map gives a δ, in atto-units rounded up, of at most
    `delta_attos`: a doubling from ℓ∞, then a bisection (δ falls as the threshold rises)."""
    if delta_attos <= 0:
        raise InvalidInput("delta=0 releases nothing from a sparse answer; send a positive delta such as 1e-9",
                           field="delta")

    def fits(threshold: int) -> bool:
        return delta_from_privacy_map(threshold_privacy_loss(contribution, scale, threshold)[1]) <= delta_attos

    low = contribution.linf  # OpenDP refuses a threshold below ℓ∞
    if fits(low):
        return low
    if not fits(MAX_THRESHOLD):
        # OpenDP's δ never falls below ℓ0·2^-53 or so (its float arithmetic rounds up): ask at least that
        floor = delta_from_privacy_map(threshold_privacy_loss(contribution, scale, MAX_THRESHOLD)[1])
        raise InvalidInput(f"delta={delta_attos / 10**18!r} is below the smallest delta OpenDP's privacy map gives "
                           f"for this answer ({floor / 10**18:.3g}, at l0={contribution.l0}); send at least that",
                           field="delta")
    step = 1
    while not fits(low + step):
        low, step = low + step, step * 2
    high = low + step  # fits; low does not
    while high - low > 1:
        mid = (low + high) // 2
        if fits(mid):
            high = mid
        else:
            low = mid
    return high


@dataclass(frozen=True)
class SparseRelease:
    """The released keys (indices into the answer's public domain, ascending) and their noisy counts."""

    keys: np.ndarray  # int64
    values: np.ndarray  # int64, each >= threshold
    mechanism: str
    scale: float
    threshold: int
    contribution: Contribution
    loss: ApproxDP  # the (ε, δ) asked, charged; OpenDP's map at (scale, threshold) is within it
    error_bound_95: float


def plan_threshold(contribution: Contribution, loss: PrivacyLoss) -> tuple[float, int]:
    """(scale, threshold) for an (ε, δ): what a quote shows and a release uses."""
    scale = threshold_scale(contribution, loss.nanos)
    return scale, smallest_threshold(contribution, scale, loss.delta_attos)


#: Records (trips, person-hours) handed to OpenDP per call: 8 bytes each, so at most 32 MB at once per thread.
CHUNK_RECORDS = 1 << 22
#: OpenDP runs outside the GIL (ctypes releases it around each call): the keys are noised on this many threads,
#: the cores this process may run on (at most 8), once an answer holds PARALLEL_KEYS observed keys (below, one
#: call is quicker than starting threads). Its sampler costs the same for every key (9-14 µs of CPU here, nearly
#: all of it OpenDP's exact discrete Laplace and OpenSSL's generator), whatever the key's count.
THREADS = max(1, min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))
PARALLEL_KEYS = 20_000
#: Each thread takes this many parts of equal key counts, one at a time: a thread the machine's other work slows
#: down takes fewer parts, instead of the answer waiting for its one half.
PARTS_PER_THREAD = 4


@lru_cache(maxsize=256)
def _count_then_threshold(scale: float, threshold: int) -> dp.Measurement:
    """OpenDP's count_by (a vector of keys, one per record -> the map key -> count) chained into the thresholded
    Laplace: the map is built inside OpenDP from a numpy array, which OpenDP reads in one copy (0.3-0.8 µs a
    key with the conversions into and out of its map, measured), instead of from a Python dict, which its
    binding checks and converts key by key (about 2 µs of CPU a key more at load 3.4). Only the threshold
    measurement's own map is used for privacy (see release_sparse)."""
    try:
        count_by = dp.t.make_count_by(dp.vector_domain(dp.atom_domain(T="i64")), dp.symmetric_distance(), TV="i64")
        return count_by >> _laplace_threshold(scale, threshold)
    except dp.OpenDPException as exc:
        raise MechanismError(f"noise scale {scale!r} with threshold {threshold} is not usable: {exc.message}") from exc


def _chunks(counts: np.ndarray) -> list[tuple[int, int]]:
    """[start, stop) ranges of keys: the same number of keys in each (OpenDP's cost is per key, not per record),
    PARTS_PER_THREAD per thread when there are enough keys to share, and cut further where a range would hold
    more than CHUNK_RECORDS records (but for one key bigger than that)."""
    keys, total = len(counts), int(counts.sum())
    parts = THREADS * PARTS_PER_THREAD if THREADS > 1 and keys >= PARALLEL_KEYS else 1
    by_keys = [keys * i // parts for i in range(1, parts)]
    by_records = np.searchsorted(np.cumsum(counts), np.arange(CHUNK_RECORDS, total, CHUNK_RECORDS), side="right")
    edges = sorted({0, *by_keys, *by_records.tolist(), keys})
    return list(itertools.pairwise(edges)) or [(0, 0)]


def release_sparse(keys: np.ndarray, counts: np.ndarray, contribution: Contribution,
                   loss: PrivacyLoss) -> SparseRelease:
    """Noise each observed key's count and keep those reaching the threshold (OpenDP does both).

    `keys` are distinct int64 indices of the answer's public domain, `counts` their (positive) true
    counts. OpenDP's thresholded Laplace noises every key independently and keeps it or not by its own
    noisy value alone (its proof; its output is a map, order-free), so applying it to the keys in parts
    (ranges of keys, on THREADS threads) and joining the maps gives exactly the
    distribution of one application to all of them: the (ε, δ) is that of OpenDP's map of the threshold
    measurement at the query's (ℓ0, ℓ1, ℓ∞), whatever the parts. Each part reaches OpenDP as the vector of
    its keys repeated by their counts, which OpenDP's count_by turns back into the same map.
    """
    scale, threshold = plan_threshold(contribution, loss)
    epsilon, delta = threshold_privacy_loss(contribution, scale, threshold)
    if epsilon > Fraction(loss.nanos, 1_000_000_000) or delta_from_privacy_map(delta) > loss.delta_attos:
        raise MechanismError("the privacy map exceeds the (epsilon, delta) asked")  # a guard: cannot happen
    keys = np.asarray(keys, dtype=np.int64)
    counts = np.asarray(counts, dtype=np.int64)

    def noise(part: tuple[int, int]) -> dict[int, int]:
        start, stop = part
        records = np.repeat(keys[start:stop], counts[start:stop])
        try:
            return dict(_count_then_threshold(scale, threshold)(records))
        except dp.OpenDPException as exc:
            raise MechanismError(f"noise could not be drawn: {exc.variant}") from exc

    parts = _chunks(counts)
    if len(parts) == 1 or THREADS == 1:
        maps = [noise(part) for part in parts]
    else:
        with ThreadPoolExecutor(max_workers=min(THREADS, len(parts)), thread_name_prefix="dpflows-sparse") as pool:
            maps = list(pool.map(noise, parts))
    released = {k: v for m in maps for k, v in m.items()}
    out_keys = np.fromiter(released.keys(), dtype=np.int64, count=len(released))
    out_values = np.fromiter(released.values(), dtype=np.int64, count=len(released))
    order = np.argsort(out_keys, kind="stable")
    return SparseRelease(out_keys[order], out_values[order], DISCRETE_LAPLACE_THRESHOLD, scale, threshold,
                         contribution, ApproxDP(loss.nanos, loss.delta_attos), error_bound(scale))


class LaplaceThreshold:
    """The thresholded discrete Laplace as a noise family: its released values' error is the discrete
    Laplace's at the same scale (a key below the threshold is not released: see `release_sparse`)."""

    name = DISCRETE_LAPLACE_THRESHOLD

    def scale(self, sensitivity: float, loss: PrivacyLoss) -> float:
        raise MechanismError("a sparse answer's scale depends on its (l0, l1, linf); use plan_threshold")

    def release(self, true_counts: np.ndarray, sensitivity: float, loss: PrivacyLoss) -> Any:
        raise MechanismError("a sparse answer is released from its observed keys; use release_sparse")

    def error_bound(self, scale: float, confidence: float = DEFAULT_CONFIDENCE) -> float:
        return error_bound(scale, confidence)

    def sum_error_bound(self, scale: float, terms: int, confidence: float = DEFAULT_CONFIDENCE) -> float:
        return sum_error_bound(scale, terms, confidence)

    def loss_for_error(self, sensitivity: float, max_error: float, confidence: float = DEFAULT_CONFIDENCE,
                       floor: PrivacyLoss | None = None) -> PrivacyLoss:
        from dpflows.budget import Epsilon

        return epsilon_for_error(int(sensitivity), max_error, confidence,
                                 floor=None if floor is None else Epsilon(floor.nanos))

    def parse_sensitivity(self, stored: Any) -> float:
        """A sparse answer stores its (ℓ0, ℓ1, ℓ∞); its ℓ1 is what the answer shows as `sensitivity`."""
        return float(Contribution.from_json(stored).l1) if isinstance(stored, dict) else float(stored)
