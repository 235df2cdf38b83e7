"""IngestOptions: one checked record from the CLI's flags to every engine."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

import pytest

from dpflows.aggregates import PlaceRule
from dpflows.budget import Epsilon
from dpflows.cli import build_parser, ingest_options
from dpflows.errors import InvalidData, InvalidInput
from dpflows.ingest.inputs import ZoningSpec
from dpflows.ingest.options import IngestOptions
from dpflows.ingest.pipeline import ingest_events, ingest_trips_table

MON, END = dt.date(2024, 3, 4), dt.date(2024, 3, 18)
SPAN = {"first_day": MON, "end_day": END}
REQUIRED = ["ingest", "e.parquet", "--cells", "c.csv", "--out", "data/city", "--first-day", "2024-03-04",
            "--end-day", "2024-03-18"]


def from_flags(*flags: str) -> IngestOptions:
    return ingest_options(build_parser().parse_args([*REQUIRED, *flags]))


def test_every_flag_reaches_its_field() -> None:
    options = from_flags("--window-days", "14", "--bound-trips", "5", "--bound-presence", "40", "--trip-rule",
                         "consecutive", "--min-dwell-minutes", "12.5", "--days", "2024-03-04..2024-03-10,2024-03-12",
                         "--zoning", "districts=d.csv", "--zoning", "sectors=s.csv:coarse:50", "--accounting", "zcdp",
                         "--key-cap-trips", "2", "--delta", "1e-9", "--report-epsilon", "0.1", "--buckets", "3",
                         "--home-hours", "20-7", "--work-hours", "8-18", "--min-work-days", "2")
    assert options == IngestOptions(
        name="city", **SPAN, missing_days=[dt.date(2024, 3, 11), *(MON + dt.timedelta(days=d) for d in range(9, 14))],
        window_days=14, bound_trips=5, bound_presence=40, trip_rule="consecutive", min_dwell_minutes=12.5,
        zonings=[ZoningSpec("districts", Path("d.csv")), ZoningSpec("sectors", Path("s.csv"), True, 50)],
        accounting="zcdp", key_cap_trips=2, delta=1e-9, report_epsilon="0.1", buckets=3,
        places=PlaceRule((20, 7), (8, 18), min_work_days=2))
    assert options.report_budget == Epsilon.parse("0.1") and options.missing_days == tuple(sorted(options.missing_days))
    assert from_flags("--trips-table").input_format == from_flags("--input-format", "trips").input_format == "trips"


def test_every_field_has_a_flag_or_a_mapping() -> None:
    """A new option is a field plus a flag of the same dest: the CLI then copies it without more code."""
    args = vars(build_parser().parse_args(REQUIRED))
    mapped = {"name", "missing_days", "zonings", "places"}  # --name/--out, --days, --zoning, --home/work-hours...
    mapped.add("seed")  # never a flag: the bounding's secret seed is drawn fresh by each ingestion
    assert {f.name for f in dataclasses.fields(IngestOptions)} - mapped <= set(args)


def test_the_record_is_frozen_and_checked_when_made() -> None:
    options = IngestOptions(name="city", **SPAN)
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.bound_presence = 1  # type: ignore[misc]
    for kw, fragment in [({"first_day": None}, "--first-day and --end-day"), ({"end_day": MON}, "must be after"),
                         ({"trip_rule": "teleport"}, "trip_rule='teleport'"), ({"buckets": 0}, "buckets=0"),
                         ({"bound_presence": 0}, "bound for presence=0"), ({"bound_trips": 0}, "bound for trips=0"),
                         ({"window_days": 0}, "window_days=0"), ({"report_epsilon": "5"}, "report_epsilon=5"),
                         ({"accounting": "approx"}, "accounting='approx'"), ({"delta": 1.0}, "delta=1.0"),
                         ({"key_cap_trips": 0}, "key_cap_trips=0"), ({"name": "../x"}, "is not a valid name"),
                         ({"missing_days": [END]}, "inside [first_day, end_day)"),
                         ({"input_format": "gpx"}, "input_format='gpx'"),
                         ({"input_format": "trips", "buckets": 2}, "--buckets applies to events"),
                         ({"input_format": "citibike", "places": PlaceRule()}, "a trips table has no homes"),
                         ({"window_days": 1, "places": PlaceRule(min_work_days=2)}, "can never be met")]:
        with pytest.raises(InvalidInput) as info:
            IngestOptions(**{"name": "city", **SPAN, **kw})
        assert fragment in info.value.message, (kw, info.value.message)


def test_engines_refuse_what_they_cannot_do(tmp_path: Path) -> None:
    options = IngestOptions(name="city", **SPAN)
    options.check_engine("polars")
    options.check_engine("spark")
    for kw, fragment in [({"missing_days": [MON]}, "--days is supported by --engine polars"),
                         ({"buckets": 2}, "--buckets applies to events ingested with --engine polars"),
                         ({"input_format": "trips"}, "--trips-table is ingested with --engine polars")]:
        with pytest.raises(InvalidData, match=fragment):
            IngestOptions(name="city", **SPAN, **kw).check_engine("spark")
    with pytest.raises(InvalidData, match="ingest_trips_table reads input_format 'trips' or 'citibike'"):
        ingest_trips_table(tmp_path / "t.parquet", tmp_path / "c.csv", tmp_path / "out", options)
    with pytest.raises(InvalidData, match="ingest_events reads input_format 'events'"):
        ingest_events(tmp_path / "e.parquet", tmp_path / "c.csv", tmp_path / "out",
                      IngestOptions(name="city", **SPAN, input_format="trips"))
    assert not (tmp_path / "out").exists()


def test_seed_none_draws_a_fresh_one_per_ingestion() -> None:
    options = IngestOptions(name="city", **SPAN)
    assert options.drawn_seed() != options.drawn_seed()
    assert IngestOptions(name="city", **SPAN, seed=7).drawn_seed() == 7
