"""The bounding report's ingestion half: exact histograms (secret) and the one noisy release stored."""

from __future__ import annotations

import itertools
import json
from fractions import Fraction
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dpflows.aggregates import load_dataset, version_dir
from dpflows.budget import Epsilon
from dpflows.contribution_report import BIN_COUNT, BIN_UPPER, BoundingReport, bin_ranges
from dpflows.demo import generate_city
from dpflows.errors import InvalidInput
from dpflows.ingest.contribution_histograms import (
    ContributionHistograms,
    contribution_histogram,
    parse_report_epsilon,
    release_bounding_report,
)
from dpflows.ingest.pipeline import IngestOptions, ingest_events, ingest_trips_table
from dpflows.mechanisms import privacy_loss, scale_for_epsilon

RELEASE_FIELDS = {"format", "bin_upper", "measures", "noisy_counts", "mechanism", "noise_scale", "sensitivity",
                  "epsilon_nanos", "windows"}


def frame(units: dict[tuple[int, int], int]) -> pl.LazyFrame:
    """(person, window) -> that many records."""
    rows = [(p, w, i) for (p, w), n in units.items() for i in range(n)]
    return pl.LazyFrame(rows, schema={"person": pl.Int64, "window": pl.Int64, "cell": pl.Int64}, orient="row")


def reference(units: dict[tuple[int, int], int]) -> np.ndarray:
    bins = np.searchsorted(np.array(BIN_UPPER), np.array(list(units.values())), side="left")
    return np.bincount(bins, minlength=BIN_COUNT).astype(np.int64)


def test_bins_are_public_contiguous_and_end_open() -> None:
    ranges = bin_ranges()
    assert ranges[0] == (1, 1) and ranges[29] == (30, 30) and ranges[30] == (31, 40) and ranges[-1] == (100_001, None)
    assert all(lo == prev_hi + 1 for (_, prev_hi), (lo, _) in itertools.pairwise(ranges))


def test_histogram_is_exact_on_a_small_frame() -> None:
    units = {(1, 0): 1, (1, 1): 2, (2, 0): 30, (3, 0): 31, (4, 0): 40, (5, 0): 41, (6, 3): 150, (7, 0): 100_001}
    h = contribution_histogram(frame(units))
    assert h.dtype == np.int64 and h.shape == (BIN_COUNT,)
    expected = {0: 1, 1: 1, 29: 1, 30: 2, 31: 1, BIN_UPPER.index(150): 1, BIN_COUNT - 1: 1}
    assert {i: int(v) for i, v in enumerate(h) if v} == expected


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.tuples(st.integers(0, 30), st.integers(0, 3)), st.integers(1, 140), min_size=1,
                       max_size=40))
def test_histogram_matches_a_reference_and_adds_up_over_disjoint_persons(units: dict[tuple[int, int], int]) -> None:
    assert np.array_equal(contribution_histogram(frame(units)), reference(units))
    acc = ContributionHistograms()
    for bucket in range(3):  # person-hash buckets, as a bucketed ingestion would call it
        part = {k: n for k, n in units.items() if k[0] % 3 == bucket}
        if part:
            acc.add("trips", frame(part))
    assert np.array_equal(acc.counts["trips"], reference(units))


def test_disabled_accumulator_counts_nothing() -> None:
    acc = ContributionHistograms(enabled=False)
    acc.add("trips", frame({(1, 0): 3}))
    assert acc.counts == {} and release_bounding_report(acc, Epsilon.parse("0.05"), 4) is None


def test_release_goes_through_opendp_at_its_epsilon() -> None:
    acc = ContributionHistograms()
    acc.add("trips", frame({(1, 0): 3}))
    acc.add("presence", frame({(1, 0): 30}))
    eps = Epsilon.parse("0.05")
    report = release_bounding_report(acc, eps, windows=4)
    assert report is not None and report.measures == ("trips", "presence")
    # one person-window moves one bin of each histogram: ℓ1 sensitivity 2; OpenDP's map is exact
    assert report.sensitivity == 2 and report.scale == scale_for_epsilon(2, eps)
    assert privacy_loss(2, report.scale) <= Fraction(1, 20) and report.epsilon == eps
    # noise was drawn: P(all 74 values equal the exact ones) = tanh(1/80)^74 ≈ 0
    exact = np.concatenate([acc.counts["trips"], acc.counts["presence"]])
    assert not np.array_equal(np.concatenate([report.noisy["trips"], report.noisy["presence"]]), exact)
    with pytest.raises(TypeError):
        BoundingReport.from_release(("trips",), exact, 4)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", ["-0.1", "1.5", "nan"])
def test_report_epsilon_is_bounded(bad: str) -> None:
    with pytest.raises(InvalidInput, match="report_epsilon"):
        parse_report_epsilon(bad)


@pytest.fixture(scope="module")
def city(tmp_path_factory: pytest.TempPathFactory):
    return generate_city(tmp_path_factory.mktemp("city"), persons=600, seed=3, days=14)


def test_ingestion_stores_the_release_and_nothing_exact(city, tmp_path: Path) -> None:
    out = ingest_events(city.events, city.cells, tmp_path / "ds",
                        IngestOptions(**city.span, name="city", seed=11, report_epsilon="0.1"))
    doc = json.loads((version_dir(out) / "metadata.json").read_text())
    stored = doc["bounding_report"]
    assert set(stored) == RELEASE_FIELDS  # the mechanism's output and how it was made; no exact field
    assert set(doc) - {"bounding_report"} == {"format_version", "name", "first_day", "end_day", "window_days",
                                              "bounds", "trip_rule", "presence_rule", "places", "accounting",
                                              "ingestion_id", "files", "windows", "privacy_unit"}
    assert stored["sensitivity"] == 2 and stored["noise_scale"] == scale_for_epsilon(2, Epsilon.parse("0.1"))
    assert stored["epsilon_nanos"] == 100_000_000 and stored["windows"] == 2
    assert {m: len(v) for m, v in stored["noisy_counts"].items()} == {"trips": BIN_COUNT, "presence": BIN_COUNT}
    data = load_dataset(out)
    assert data.bounding_report is not None and data.bounding_report.measures == ("trips", "presence")
    [charge] = data.report_charges
    assert (charge.ingestion, charge.epsilon, charge.windows) == (data.version, Epsilon.parse("0.1"), 2)


def test_no_report_when_asked_or_without_persons(city, tmp_path: Path) -> None:
    out = ingest_events(city.events, city.cells, tmp_path / "ds",
                        IngestOptions(**city.span, name="city", seed=11, report_epsilon=0))
    assert "bounding_report" not in json.loads((version_dir(out) / "metadata.json").read_text())
    assert load_dataset(out).bounding_report is None and load_dataset(out).report_charges == ()
    trips = pl.DataFrame({"timestamp": ["2024-03-04 08:00:00"], "origin": ["C0101"], "dest": ["C0102"]})
    out = ingest_trips_table(trips, city.cells, tmp_path / "tt",
                             IngestOptions(**city.span, name="tt", seed=1, input_format="trips"))
    assert load_dataset(out).bounding_report is None


def test_reingestion_carries_an_earlier_report_forward(city, tmp_path: Path) -> None:
    first = load_dataset(ingest_events(city.events, city.cells, tmp_path / "ds",
                                       IngestOptions(**city.span, name="city", seed=1)))
    second = load_dataset(ingest_events(city.events, city.cells, tmp_path / "ds",
                                        IngestOptions(**city.span, name="city", seed=2, bound_trips=10,
                                                      report_epsilon=0)))
    assert [c.ingestion for c in second.report_charges] == [first.version]
    third = load_dataset(ingest_events(city.events, city.cells, tmp_path / "ds",
                                       IngestOptions(**city.span, name="city", seed=3)))
    assert [c.ingestion for c in third.report_charges] == [first.version, third.version]


def test_ingest_command_prints_the_report(city, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from dpflows.cli import main

    args = ["ingest", str(city.events), "--cells", str(city.cells), "--zoning", f"districts={city.districts}",
            "--first-day", str(city.first_day), "--end-day", str(city.end_day)]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    out = capsys.readouterr().out
    assert "bounding report (noisy; epsilon=0.05 in every window" in out
    assert "trips    L=20: ~" in out and "presence L=60: ~" in out and "suggested L=" in out
    assert "flows between 50 zones" in out
    assert main([*args, "--out", str(tmp_path / "b"), "--report-epsilon", "0"]) == 0
    assert "bounding report" not in capsys.readouterr().out
    assert main([*args, "--out", str(tmp_path / "c"), "--report-epsilon", "2"]) == 2
    assert "report_epsilon=2 is above 1" in capsys.readouterr().err
