"""The bounding report: how much contribution bounding drops, read from a noisy histogram.

Bounding, not noise, can dominate the error of an answer: with L too small a busy person's
records are thinned and every count is low. To choose L without looking at raw data,
ingestion releases once, with its own small ε, a **noisy histogram of per-person-window
record counts** for each measure (dpflows.ingest.report makes it; this module only reads it).
Everything below is post-processing of that release and costs nothing more:

- the estimated share of records dropped at the dataset's bound and at candidate bounds;
- quantiles (50/90/95/99%) of the number of records per person-window;
- a suggested bound for a stated typical query (see `suggest`).

Bins are public and fixed: one per value 1..10, then bins ending at 12, 15, 20, 25, 30, 40,
50, 60, 80, 100, ten per decade up to 1,000, then 2,000, 5,000, 10,000, 20,000, 50,000,
100,000, and an open last bin above 100,000. Every bin's upper end is a candidate bound, so
the share dropped at a candidate needs no guess about where records fall inside a bin except
for the bins above it. The histogram pools all windows: one privacy unit (a person-window)
falls in exactly one bin of each measure's histogram, whichever window it belongs to.

Reading the noisy histogram (the *denoised* histogram, post-processing):

1. negative noisy bins are read as 0;
2. a truly empty bin reads at least the *detection threshold* τ with probability at most
   5% / (number of bins), so that all empty bins stay below it with probability ≥ 95%; the
   distribution is taken to end at the last bin reading ≥ τ, and bins beyond it are read as
   0. Without this, noise in empty bins of 50,000 records would swamp every estimate.
   The price: fewer than about τ person-windows (pooled over windows) beyond the last
   detected bin are invisible, so the share dropped is then an underestimate. The report
   states τ; a larger report ε or a larger population lowers it relative to the counts.
3. records inside a bin are taken as spread uniformly over its integers (the open last bin
   as all at its lower end: a lower bound).

The suggested bound minimises, over the candidate bounds L, an upper bound on the mean
absolute error per value of a typical one-window query with K values released at ε:

    MAE(L) ≤ D(L) / K + E|Z_{L/ε}|

where D(L) = records dropped per window (bounding only removes records, so every value's
bias is ≥ 0 and the biases sum to D(L)) and Z is the discrete Laplace noise at scale L/ε.
Its argmin depends on the noisy histogram only through the person-window counts weighted
by at most L (the change of D(L) between candidates), never through the records of the
heavy tail, so it is robust where the share dropped is not: raising L by one pays off while
more than about K/ε person-windows per window exceed L (Amin et al. 2019, "Bounding user
contributions: a bias-variance trade-off in differential privacy", for one sum).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from dpflows.budget import Epsilon
from dpflows.errors import InvalidData
from dpflows.mechanisms import DEFAULT_CONFIDENCE, DISCRETE_LAPLACE, NoisyRelease, error_bound, sum_error_bound

REPORT_FORMAT = 1
#: Upper ends of the bins (inclusive); the last bin, (BIN_UPPER[-1], ∞), is open.
BIN_UPPER: tuple[int, ...] = (
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10,
    12, 15, 20, 25, 30, 40, 50, 60, 80, 100,
    120, 150, 200, 250, 300, 400, 500, 600, 800, 1000,
    2000, 5000, 10_000, 20_000, 50_000, 100_000,
)
BIN_COUNT = len(BIN_UPPER) + 1
QUANTILES = (0.5, 0.9, 0.95, 0.99)
#: All empty bins read below the detection threshold with at least this probability.
DETECTION_CONFIDENCE = 0.95
#: The typical query a suggestion is made for, unless told otherwise: one window at this ε ...
TYPICAL_EPSILON = 1.0
#: ... over a zoning of this many zones when the dataset has none besides cells.
TYPICAL_ZONES = 50

_LOWER = np.array([1, *(u + 1 for u in BIN_UPPER)], dtype=np.float64)
_UPPER = np.array([*BIN_UPPER, np.inf], dtype=np.float64)


def bin_ranges() -> list[tuple[int, int | None]]:
    """(lowest, highest) records per person-window of each bin; None: the open last bin."""
    return [(int(lo), None if math.isinf(hi) else int(hi)) for lo, hi in zip(_LOWER, _UPPER, strict=True)]


@dataclass(frozen=True)
class BoundingReport:
    """The released noisy histograms (one per measure) and how they were released; nothing exact."""

    measures: tuple[str, ...]
    noisy: dict[str, np.ndarray]  # measure -> BIN_COUNT noisy int64 counts, pooled over windows
    epsilon: Epsilon  # charged once in every window (parallel composition across windows)
    scale: float
    sensitivity: int  # ℓ1 over all measures' histograms: one bin of each per person-window
    mechanism: str
    windows: int

    @classmethod
    def from_release(cls, measures: tuple[str, ...], release: NoisyRelease, windows: int) -> BoundingReport:
        """Split one mechanism output (the measures' histograms concatenated) back per measure."""
        if not isinstance(release, NoisyRelease):  # exact arrays never become a report
            raise TypeError("a bounding report is made from a mechanism's NoisyRelease only")
        if release.values.shape != (BIN_COUNT * len(measures),):
            raise InvalidData(f"bounding report release has {release.values.size} values; "
                              f"expected {BIN_COUNT} per measure for {list(measures)}")
        parts = np.split(np.asarray(release.values, dtype=np.int64), len(measures))
        if not isinstance(release.epsilon, Epsilon):
            raise InvalidData("a bounding report is a pure-DP (discrete Laplace) release")
        return cls(measures, dict(zip(measures, parts, strict=True)), release.epsilon, release.scale,
                   int(release.sensitivity), release.mechanism, windows)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": REPORT_FORMAT,
            "bin_upper": list(BIN_UPPER),
            "measures": list(self.measures),
            "noisy_counts": {m: [int(v) for v in self.noisy[m]] for m in self.measures},
            "mechanism": self.mechanism,
            "noise_scale": self.scale,
            "sensitivity": self.sensitivity,
            "epsilon_nanos": self.epsilon.nanos,
            "windows": self.windows,
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> BoundingReport:
        """Parse a stored report; InvalidData if it is not one this version wrote."""
        try:
            if doc["format"] != REPORT_FORMAT or list(doc["bin_upper"]) != list(BIN_UPPER):
                raise InvalidData("bounding report has an unknown format or bins")
            measures = tuple(str(m) for m in doc["measures"])
            noisy = {m: np.asarray(doc["noisy_counts"][m], dtype=np.int64) for m in measures}
            report = cls(measures, noisy, Epsilon(int(doc["epsilon_nanos"])), float(doc["noise_scale"]),
                         int(doc["sensitivity"]), str(doc["mechanism"]), int(doc["windows"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidData("bounding report is malformed") from exc
        if (report.mechanism != DISCRETE_LAPLACE or not measures or report.windows < 1
                or any(v.shape != (BIN_COUNT,) for v in noisy.values())):
            raise InvalidData("bounding report is malformed")
        return report

    # -- post-processing --------------------------------------------------------------------

    def error_bound_95(self) -> float:
        """95% absolute error of each noisy bin (OpenDP's accuracy helper)."""
        return error_bound(self.scale, DEFAULT_CONFIDENCE)

    def detection_threshold(self) -> float:
        """τ: an empty bin reads ≥ τ with probability ≤ 5%/bins (all bins of all measures)."""
        bins = BIN_COUNT * len(self.measures)
        # error_bound gives t with P(|Z| >= t) = alpha; one side has half of it.
        return error_bound(self.scale, 1.0 - 2.0 * (1.0 - DETECTION_CONFIDENCE) / bins)

    def denoised(self, measure: str) -> np.ndarray:
        """Negative bins read as 0, and bins beyond the last one reaching τ read as 0 (module docstring)."""
        counts = np.clip(self.noisy[measure], 0, None).astype(np.float64)
        detected = np.flatnonzero(counts >= self.detection_threshold())
        end = int(detected[-1]) + 1 if detected.size else 0
        counts[end:] = 0.0
        return counts


def _kept_per_unit(bound: int) -> np.ndarray:
    """E[min(c, L)] for c uniform on each bin's integers (the open bin: its lower end)."""
    lo, hi = _LOWER, np.where(np.isinf(_UPPER), _LOWER, _UPPER)
    below = (lo + hi) / 2.0
    # bins straddling L: integers lo..L count themselves, L+1..hi count L
    k = np.clip(bound - lo + 1, 0, None)
    straddle = (k * (lo + np.minimum(hi, bound)) / 2.0 + (hi - lo + 1 - k) * bound) / (hi - lo + 1)
    return np.where(hi <= bound, below, np.where(lo > bound, float(bound), straddle))


def _share_over(bound: int) -> np.ndarray:
    """P(c > L) for c uniform on each bin's integers."""
    lo, hi = _LOWER, np.where(np.isinf(_UPPER), _LOWER, _UPPER)
    return np.clip((hi - np.maximum(lo - 1, bound)) / (hi - lo + 1), 0.0, 1.0)


def mean_absolute_noise(scale: float) -> float:
    """E|Z| of the discrete Laplace at `scale`: 2a / (1 − a²), a = e^(−1/scale) (its pmf: mechanisms)."""
    a = math.exp(-1.0 / scale)
    return 2.0 * a / (1.0 - a * a)


@dataclass(frozen=True)
class TypicalQuery:
    """What a suggested bound is optimised for: one window, `keys` values released at ε."""

    keys: int
    epsilon: float
    description: str


def typical_query(measure: str, zones: int | None) -> TypicalQuery:
    """One week of flows between all zones (trips) or presence per zone and hour, at ε = 1."""
    z = zones or TYPICAL_ZONES
    if measure == "trips":
        return TypicalQuery(z * z, TYPICAL_EPSILON, f"flows between {z} zones over one window")
    return TypicalQuery(z * 24, TYPICAL_EPSILON, f"presence per zone and hour of day, {z} zones, one window")


@dataclass(frozen=True)
class Candidate:
    bound: int
    share_dropped: float  # of records
    share_over: float  # of person-windows with more records than the bound
    mae_bound: float  # upper bound on the typical query's mean absolute error per value


@dataclass(frozen=True)
class Quantile:
    q: float
    lower: int  # the quantile lies in [lower, upper] records per person-window
    upper: int | None  # None: above the last finite bin
    rank_error_95: float  # ± on the share of person-windows at or below `upper` (approximate)


@dataclass(frozen=True)
class MeasureSummary:
    measure: str
    bound: int
    person_windows: float  # estimated, pooled over all windows
    share_dropped: float
    share_over: float
    quantiles: list[Quantile]
    suggested_bound: int
    typical: TypicalQuery
    candidates: list[Candidate]
    noisy_counts: list[int]


def summarize(report: BoundingReport, measure: str, bound: int, typical: TypicalQuery) -> MeasureSummary:
    """Share dropped at `bound` and at each candidate, quantiles, and the suggested bound."""
    h = report.denoised(measure)
    units = float(h.sum())
    total = float(h @ np.where(np.isinf(_UPPER), _LOWER, (_LOWER + _UPPER) / 2.0))

    def at(candidate: int) -> Candidate:
        kept = float(h @ _kept_per_unit(candidate))
        over = float(h @ _share_over(candidate))
        dropped = max(total - kept, 0.0)
        mae = dropped / report.windows / typical.keys + mean_absolute_noise(candidate / typical.epsilon)
        return Candidate(candidate, dropped / total if total else 0.0, over / units if units else 0.0, mae)

    # Candidates up to the first bound that drops nothing by this reading (and the current one).
    candidates: list[Candidate] = []
    for upper in BIN_UPPER:
        candidates.append(at(upper))
        if candidates[-1].share_dropped == 0.0:
            break
    best = min(candidates, key=lambda c: (c.mae_bound, c.bound))
    current = at(bound)
    return MeasureSummary(measure, bound, units, current.share_dropped, current.share_over,
                          _quantiles(report, h), best.bound, typical, candidates,
                          [int(v) for v in report.noisy[measure]])


def _quantiles(report: BoundingReport, h: np.ndarray) -> list[Quantile]:
    units = float(h.sum())
    if units <= 0:
        return []
    cum = np.cumsum(h)
    out = []
    for q in QUANTILES:
        j = int(np.searchsorted(cum, q * units - 1e-9))
        j = min(j, BIN_COUNT - 1)
        # The share at or below bin j sums j+1 independent noises (before clamping).
        rank_error = sum_error_bound(report.scale, j + 1) / units
        upper = None if math.isinf(_UPPER[j]) else int(_UPPER[j])
        out.append(Quantile(q, int(_LOWER[j]), upper, rank_error))
    return out


@dataclass(frozen=True)
class ReportCharge:
    """A bounding report an ingestion must have paid for: its ingestion digest, ε and windows."""

    ingestion: str
    epsilon: Epsilon
    windows: int

    @property
    def query_key(self) -> str:
        """The ledger key of its charge: one charge per ingestion, whichever worker or host makes it."""
        return hashlib.sha256(f"bounding_report|{self.ingestion}".encode()).hexdigest()

    def to_json(self) -> dict[str, Any]:
        return {"ingestion": self.ingestion, "epsilon_nanos": self.epsilon.nanos, "windows": self.windows}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> ReportCharge:
        charge = cls(str(doc["ingestion"]), Epsilon(int(doc["epsilon_nanos"])), int(doc["windows"]))
        if not charge.ingestion or charge.windows < 1:
            raise InvalidData("earlier bounding report entry is malformed")
        return charge
