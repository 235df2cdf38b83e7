"""The bounding report: how much contribution bounding drops, read from a noisy histogram.

Bounding, not noise, can dominate the error of an answer: with L too small a busy person's
records are thinned and every count is low. To choose L without looking at raw data,
ingestion releases once, with its own small ε, a **noisy histogram of per-person-window
record counts** for each measure (dpflows.ingest.contribution_histograms makes it; this module only reads it).
Everything below is post-processing of that release and costs nothing more:

- the estimated share of records dropped at the dataset's bound and at candidate bounds;
- quantiles (50/90/95/99%) of the number of records per person-window;
- a suggested bound for a stated typical query (see below).

Bins are public and fixed: one per value 1..30 (where most bounds are chosen: a bin of one
value needs no guess about where its records lie), then bins ending at 40, 50, 60, 80, 100,
120, 150, 200, 250, 300, 400, 500, 600, 800, 1,000, 2,000, 5,000, 10,000, 20,000, 50,000,
100,000, and an open last bin above 100,000. Every bin's upper end is a candidate bound.
Wider bins in the tail hold more of a thin heavy tail each, which the noise then hides less.
The histogram pools all windows: one privacy unit (a person-window) falls in exactly one bin
of each measure's histogram, whichever window it belongs to.

Reading the noisy histogram (post-processing):

1. *Where the distribution ends.* A truly empty bin far in the tail, read with its noise,
   would stand for thousands of phantom records at 50,000 records each and swamp every
   estimate. So the tail is cut after the last *detected* bin: a run of k adjacent bins
   (k = 1..4) is detected when all its bins reach t_k, the thresholds chosen so that with
   probability ≥ 95% no run of empty bins is detected (independent noise, union bound); the
   support ends at the first bin of the last detected run, which therefore lies, with that
   probability, within the true support. Runs find a tail spread over neighbouring bins at
   about t_1/k person-windows per bin instead of t_1. The price: a thinner tail (pooled over
   windows) is invisible, and the share dropped is then too low. The report states t_k; a
   larger report ε or a larger population makes them small relative to the counts.
2. Within the support, every sum (person-windows, records, records kept at L, the cumulative
   counts quantiles are read from) uses the noisy bins as released, negative ones included,
   which keeps it unbiased (reading negatives as 0 would add about scale/2 per empty bin).
3. Records inside a bin are taken as spread uniformly over its integers (the open last bin
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
from dpflows.mechanisms import (
    DEFAULT_CONFIDENCE,
    DISCRETE_LAPLACE,
    NoisyRelease,
    error_bound,
    scale_for_epsilon,
    sum_error_bound,
)

REPORT_FORMAT = 1
#: Upper ends of the bins (inclusive); the last bin, (BIN_UPPER[-1], ∞), is open.
BIN_UPPER: tuple[int, ...] = (
    *range(1, 31),
    40, 50, 60, 80, 100,
    120, 150, 200, 250, 300, 400, 500, 600, 800, 1000,
    2000, 5000, 10_000, 20_000, 50_000, 100_000,
)
BIN_COUNT = len(BIN_UPPER) + 1
QUANTILES = (0.5, 0.9, 0.95, 0.99)
#: No run of empty bins is taken for data with at least this probability.
DETECTION_CONFIDENCE = 0.95
#: Runs of 1 to this many adjacent bins are tested: a tail spread over neighbouring bins is
#: found at a lower count per bin than one bin alone would need.
RUN_LENGTHS = 4
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
    windows: int  # how many windows it was released over (and is charged in): first_window, first_window + 1, ...
    first_window: int = 0  # an append's report covers the appended windows only

    @classmethod
    def from_release(cls, measures: tuple[str, ...], release: NoisyRelease, windows: int,
                     first_window: int = 0) -> BoundingReport:
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
                   int(release.sensitivity), release.mechanism, windows, first_window)

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
            **({"first_window": self.first_window} if self.first_window else {}),
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
                         int(doc["sensitivity"]), str(doc["mechanism"]), int(doc["windows"]),
                         int(doc.get("first_window", 0)))
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidData("bounding report is malformed") from exc
        if (report.mechanism != DISCRETE_LAPLACE or not measures or report.windows < 1 or report.first_window < 0
                or any(v.shape != (BIN_COUNT,) for v in noisy.values())):
            raise InvalidData("bounding report is malformed")
        return report

    # -- post-processing --------------------------------------------------------------------

    def error_bound_95(self) -> float:
        """95% absolute error of each noisy bin (OpenDP's accuracy helper)."""
        return error_bound(self.scale, DEFAULT_CONFIDENCE)

    def detection_thresholds(self) -> list[float]:
        """t_k for k = 1..RUN_LENGTHS: k adjacent empty bins all read ≥ t_k with small probability.

        Noise is independent across bins, so P(k given empty bins all read ≥ t) = P(Z ≥ t)^k. Each
        run length gets a quarter of 1 − DETECTION_CONFIDENCE, split over all runs of that length
        in all measures (a union bound): with probability ≥ 95% no run of empty bins is detected.
        """
        alpha = 1.0 - DETECTION_CONFIDENCE
        out = []
        for k in range(1, RUN_LENGTHS + 1):
            runs = len(self.measures) * (BIN_COUNT - k + 1)
            p = (alpha / RUN_LENGTHS / runs) ** (1.0 / k)  # one-sided tail per bin
            out.append(error_bound(self.scale, 1.0 - 2.0 * p))  # P(|Z| >= t) = 2 P(Z >= t)
        return out

    def support_end(self, measure: str) -> int:
        """Bins read as data: up to the last bin starting a detected run (module docstring, step 2)."""
        values = self.noisy[measure]
        end = 0
        for k, threshold in enumerate(self.detection_thresholds(), start=1):
            above = values >= threshold
            for first in range(BIN_COUNT - k + 1):
                if above[first:first + k].all():
                    end = max(end, first + 1)
        return end

    def within_support(self, measure: str) -> np.ndarray:
        """The noisy bins up to the support end, as released (unbiased sums); 0 beyond it."""
        values = self.noisy[measure].astype(np.float64)
        values[self.support_end(measure):] = 0.0
        return values


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
    rank_error_95: float  # 95% bound on the error of the share of person-windows at or below `upper`


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
    h = report.within_support(measure)
    units = max(float(h.sum()), 0.0)
    total = max(float(h @ np.where(np.isinf(_UPPER), _LOWER, (_LOWER + _UPPER) / 2.0)), 0.0)

    def at(candidate: int) -> Candidate:
        kept = float(h @ _kept_per_unit(candidate))
        over = min(max(float(h @ _share_over(candidate)), 0.0), units)
        dropped = min(max(total - kept, 0.0), total)
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
                          _quantiles(report, measure), best.bound, typical, candidates,
                          [int(v) for v in report.noisy[measure]])


def _quantiles(report: BoundingReport, measure: str) -> list[Quantile]:
    """The first bin where the noisy cumulative share reaches q, and a 95% bound on that share's error.

    The share at or below bin j is (1 − s)·A − s·B over the true count, A and B the sums of the
    noises in bins up to j and after it (within the support), s the share: a sum of the support's
    independent noises with weights at most max(s, 1 − s). By the contraction principle for
    symmetric variables (Ledoux and Talagrand 1991, Thm 4.4), its tail is at most twice that of
    the plain sum, so sum_error_bound at 97.5%, times max(s, 1 − s), bounds it at 95%.
    """
    h = report.within_support(measure)
    units = float(h.sum())
    if units <= 0:
        return []
    cum = np.cumsum(h)
    plain = sum_error_bound(report.scale, max(report.support_end(measure), 1), 1.0 - (1.0 - DEFAULT_CONFIDENCE) / 2)
    out = []
    for q in QUANTILES:
        reached = np.flatnonzero(cum >= q * units - 1e-9)
        j = int(reached[0]) if reached.size else BIN_COUNT - 1
        share = float(cum[j]) / units
        upper = None if math.isinf(_UPPER[j]) else int(_UPPER[j])
        out.append(Quantile(q, int(_LOWER[j]), upper, max(share, 1.0 - share) * plain / units))
    return out


@dataclass(frozen=True)
class ReportCharge:
    """A bounding report an ingestion must have paid for: its ingestion digest, release and windows."""

    ingestion: str
    epsilon: Epsilon
    windows: int
    scale: float
    sensitivity: int
    first_window: int = 0  # charged in windows first_window .. first_window + windows - 1

    @property
    def window_indexes(self) -> tuple[int, ...]:
        return tuple(range(self.first_window, self.first_window + self.windows))

    @property
    def query_key(self) -> str:
        """The ledger key of its charge: one charge per ingestion, whichever worker or host makes it."""
        return hashlib.sha256(f"bounding_report|{self.ingestion}".encode()).hexdigest()

    def to_json(self) -> dict[str, Any]:
        return {"ingestion": self.ingestion, "epsilon_nanos": self.epsilon.nanos, "windows": self.windows,
                "noise_scale": self.scale, "sensitivity": self.sensitivity,
                **({"first_window": self.first_window} if self.first_window else {})}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> ReportCharge:
        epsilon = Epsilon(int(doc["epsilon_nanos"]))
        if "noise_scale" in doc:
            scale, sensitivity = float(doc["noise_scale"]), int(doc["sensitivity"])
        else:  # carried by an early version: a measurement with the same ε stands in for it
            scale, sensitivity = scale_for_epsilon(1, epsilon), 1
        charge = cls(str(doc["ingestion"]), epsilon, int(doc["windows"]), scale, sensitivity,
                     int(doc.get("first_window", 0)))
        if not charge.ingestion or charge.windows < 1 or charge.first_window < 0:
            raise InvalidData("earlier bounding report entry is malformed")
        return charge


NOTES = (
    "Estimated from one noisy histogram of records per person-window, pooled over all windows; everything "
    "here is post-processing of that release and costs nothing more.",
    "Bins beyond the last detected one read as 0 (a run of k adjacent bins is detected when all reach "
    "detection_thresholds[k-1]): a thinner tail is invisible, and share_dropped is then an underestimate.",
    "Sums and cumulative shares use the noisy bins as released, negative ones included (unbiased).",
    "Records are taken as spread uniformly inside each bin (the open last bin: all at its lower end).",
    "suggested_bound minimises an upper bound on the mean absolute error per value of the typical query "
    "(records dropped per value + mean absolute noise at scale bound/epsilon); see dpflows.contribution_report.",
)


def report_document(report: BoundingReport, bounds: dict[str, int], zones: int | None) -> dict[str, Any]:
    """The whole report as plain values, for the API and the command line."""
    measures = []
    for measure in report.measures:
        s = summarize(report, measure, bounds[measure], typical_query(measure, zones))
        measures.append({
            "measure": measure, "bound": s.bound, "person_windows": s.person_windows,
            "share_dropped": s.share_dropped, "share_over_bound": s.share_over,
            "suggested_bound": s.suggested_bound,
            "typical_query": {"keys": s.typical.keys, "epsilon": s.typical.epsilon,
                              "description": s.typical.description},
            "quantiles": [vars(q) for q in s.quantiles],
            "candidates": [vars(c) for c in s.candidates],
            "histogram": [{"lower": lo, "upper": hi, "noisy_count": n}
                          for (lo, hi), n in zip(bin_ranges(), s.noisy_counts, strict=True)],
        })
    return {
        "epsilon": report.epsilon, "windows": report.windows,
        "mechanism": {"name": report.mechanism, "noise_scale": report.scale, "sensitivity": report.sensitivity},
        "error_bound_95": report.error_bound_95(), "confidence": DEFAULT_CONFIDENCE,
        "detection_thresholds": report.detection_thresholds(), "measures": measures, "notes": list(NOTES),
    }


def format_report(doc: dict[str, Any]) -> str:
    """A few lines for `dpflows ingest`: share dropped, quantiles and suggestion per measure."""
    lines = [f"bounding report (noisy; epsilon={doc['epsilon']} in every window, charged to the global cap "
             "before the service serves this dataset):"]
    for m in doc["measures"]:
        quantiles = ", ".join(f"{q['q']:.0%} {_range(q['lower'], q['upper'])}" for q in m["quantiles"])
        lines.append(
            f"  {m['measure']:<8} L={m['bound']}: ~{m['share_dropped']:.1%} of records dropped, "
            f"{m['share_over_bound']:.1%} of person-windows above L; records per person-window: {quantiles}; "
            f"suggested L={m['suggested_bound']} (for {m['typical_query']['description']} at "
            f"epsilon={m['typical_query']['epsilon']:g})")
    t = doc["detection_thresholds"]
    lines.append(f"  each bin ±{doc['error_bound_95']:.0f} person-windows (95%); a tail is seen only from "
                 f"{t[0]:.0f} person-windows in one bin, or {t[1]:.0f} in each of two adjacent bins (pooled over "
                 "windows): less than that is invisible and the share dropped then too low")
    return "\n".join(lines)


def _range(lower: int, upper: int | None) -> str:
    if upper is None:
        return f">{lower - 1}"
    return str(upper) if lower == upper else f"{lower}-{upper}"
