"""The bounding report's secret half: exact contribution histograms, released once with noise.

Before bounding, ingestion counts for each measure how many person-windows have c records,
binned on the public bins of `dpflows.contribution_report`. These histograms are exact, hence
secret: they stay in memory, inside ingestion, and leave it only through
`release_bounding_report`, which adds OpenDP's discrete Laplace noise
(`mechanisms.release_contribution_histograms`). Only that noisy release is stored (in the
dataset's metadata) or shown.

Privacy: adding or removing one person's records in one window moves one person-window into
or out of one bin of each measure's histogram, so the ℓ1 sensitivity of all the histograms
together is the number of measures, and the release costs its ε in every window (windows
hold disjoint person-windows: parallel composition), like a query spanning every window.
It is a pure-DP release on every dataset; a zCDP dataset's ledger is charged the ρ that
OpenDP converts it to (ε²/2).

Accounting (see also docs/privacy.md): the release happens here, at ingestion, run by the
operator, who holds the raw events anyway; what `dpflows ingest` prints stays inside that
trust boundary. The release's ε is charged against the dataset's **global** cap in every
window by the service (`Service.charge_bounding_report`, a reserved system principal, audit
action ``ingest.bounding_report``), once per ingestion, **before anything of that ingestion
is served**: the report itself, and any query answer. Why there and not at ingestion: the
ledger fails closed, and no cap can exist for a dataset before its first ingestion, so an
ingestion-time charge could never succeed the first time; and charging before any answer
also covers a bound L chosen from this report and published with a later ingestion into the
same directory (`write_aggregates` carries an unpaid earlier report forward).

Additivity: histograms of disjoint sets of persons add up, so an ingestion that processes
persons in buckets calls `ContributionHistograms.add` once per bucket and measure with the
same accumulator (and collects each bucket's counts with `collect_with`, so the records are
derived once for both). A person-window must never be split across calls: its records would
be counted as two smaller person-windows.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from dpflows.aggregates import MEASURES
from dpflows.budget import Epsilon
from dpflows.contribution_report import BIN_COUNT, BIN_UPPER, BoundingReport
from dpflows.errors import InvalidData
from dpflows.mechanisms import release_contribution_histograms

#: Default ε of the bounding report, charged once in every window against the global cap.
DEFAULT_REPORT_EPSILON = "0.05"
#: A report needs little ε; more would spend the operator's global cap on bookkeeping.
MAX_REPORT_EPSILON = Epsilon.parse("1")


def contribution_histogram(records: pl.LazyFrame, *, person: str = "person", window: str = "window") -> np.ndarray:
    """Exact (secret) count of person-windows per public bin of their number of records."""
    return _to_array(_histogram_plan(records, person, window).collect(engine="streaming"))


def _histogram_plan(records: pl.LazyFrame, person: str = "person", window: str = "window") -> pl.LazyFrame:
    # (person, window, ...) -> (person, window): n records
    per_unit = records.group_by(person, window).agg(pl.len().alias("_n"))
    # (person, window) -> bin index: how many bin upper ends lie below n
    binned = per_unit.select(
        pl.sum_horizontal([(pl.col("_n") > upper).cast(pl.Int32) for upper in BIN_UPPER]).alias("_bin")
    )
    # bin -> person-windows
    return binned.group_by("_bin").agg(pl.len().alias("_units"))


def _to_array(counts: pl.DataFrame) -> np.ndarray:
    histogram = np.zeros(BIN_COUNT, dtype=np.int64)
    histogram[counts["_bin"].to_numpy()] = counts["_units"].to_numpy()
    return histogram


class ContributionHistograms:
    """Exact histograms per measure, summed over `add` calls; a disabled one computes nothing.

    `add` only plans the count; `collect_with` runs it together with the frame ingestion
    collects anyway (the bounded counts), so Polars derives the records once for both.
    """

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._counts: dict[str, np.ndarray] = {}
        self._pending: list[tuple[str, pl.LazyFrame]] = []

    @property
    def counts(self) -> dict[str, np.ndarray]:
        """measure -> exact histogram (secret), after running any histogram not yet collected."""
        if self._pending:
            self.collect_with()
        return self._counts

    def add(self, measure: str, records: pl.LazyFrame) -> None:
        """Count the (person, window, ...) records of one measure before they are bounded."""
        if not self.enabled:
            return
        if measure not in MEASURES:
            raise ValueError(f"measure {measure!r} is not one of {MEASURES}")
        self._pending.append((measure, _histogram_plan(records)))

    def add_counts(self, measure: str, counts: pl.DataFrame) -> None:
        """Add an exact histogram already counted elsewhere (the Spark engine): columns _bin, _units."""
        if not self.enabled:
            return
        if measure not in MEASURES:
            raise ValueError(f"measure {measure!r} is not one of {MEASURES}")
        self._counts[measure] = self._counts.get(measure, np.zeros(BIN_COUNT, dtype=np.int64)) + _to_array(counts)

    def add_sizes(self, measure: str, sizes: np.ndarray) -> None:
        """Add person-windows of these record counts (one per person-window), counted elsewhere."""
        if not self.enabled:
            return
        if measure not in MEASURES:
            raise ValueError(f"measure {measure!r} is not one of {MEASURES}")
        # bin index: how many bin upper ends lie below n, as _histogram_plan counts it
        bins = np.searchsorted(np.asarray(BIN_UPPER), sizes, side="left")
        self._counts[measure] = (self._counts.get(measure, np.zeros(BIN_COUNT, dtype=np.int64))
                                 + np.bincount(bins, minlength=BIN_COUNT).astype(np.int64))

    def collect_with(self, *frames: pl.LazyFrame) -> list[pl.DataFrame]:
        """Collect `frames` and every histogram added since, sharing their common subplans."""
        pending, self._pending = self._pending, []
        results = pl.collect_all([*frames, *(plan for _, plan in pending)], engine="streaming")
        for (measure, _), counts in zip(pending, results[len(frames):], strict=True):
            self._counts[measure] = self._counts.get(measure, np.zeros(BIN_COUNT, dtype=np.int64)) + _to_array(counts)
        return results[:len(frames)]


def parse_report_epsilon(value: str | float | Epsilon) -> Epsilon:
    """The report's ε: 0 (no report) up to MAX_REPORT_EPSILON."""
    epsilon = value if isinstance(value, Epsilon) else Epsilon.parse(value, field="report_epsilon")
    if epsilon > MAX_REPORT_EPSILON:
        raise InvalidData(f"report_epsilon={epsilon} is above {MAX_REPORT_EPSILON}; a bounding report needs "
                          "little budget (the default is 0.05), use 0.01 to 0.2", field="report_epsilon")
    return epsilon


def release_bounding_report(histograms: ContributionHistograms, epsilon: Epsilon,
                            windows: int, first_window: int = 0) -> BoundingReport | None:
    """Noise every measure's histogram once (OpenDP); None when disabled, ε is 0 or nothing was counted.

    The histograms count the person-windows of windows first_window .. first_window + windows - 1
    (an append counts its new windows only), so the report is charged in those windows only."""
    if not histograms.enabled or epsilon.nanos == 0 or not histograms.counts:
        return None
    measures = tuple(m for m in MEASURES if m in histograms.counts)
    release = release_contribution_histograms([histograms.counts[m] for m in measures], epsilon)
    return BoundingReport.from_release(measures, release, windows, first_window)
