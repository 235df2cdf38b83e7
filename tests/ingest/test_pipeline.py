"""Ingestion end to end: demo city → aggregates → load_dataset; citibike; errors that name no person."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import polars as pl
import pytest

from dpflows.aggregates import load_dataset, read_interchange
from dpflows.demo import generate_city
from dpflows.errors import InvalidData
from dpflows.ingest.citibike import citibike_cells, citibike_trips_table
from dpflows.ingest.pipeline import IngestOptions, ZoningSpec, ingest_events, ingest_trips_table

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data" / "citibike-nyc-2017"
SECRET = 9876543210  # a distinctive pseudonym that must never appear in a message


@pytest.fixture(scope="module")
def city(tmp_path_factory: pytest.TempPathFactory):
    return generate_city(tmp_path_factory.mktemp("city"), persons=600, seed=3, days=14)


def test_demo_city_is_deterministic_and_zonings_are_public_and_coarse(city, tmp_path: Path) -> None:
    again = generate_city(tmp_path, persons=600, seed=3, days=14)
    assert pl.read_parquet(again.events).equals(pl.read_parquet(city.events))
    districts = pl.read_csv(city.districts)
    sectors = pl.read_csv(city.sectors)
    assert districts.height == sectors.height == 400
    sizes = districts.group_by("zone_id").len()["len"]
    assert 5 <= sizes.min() and sizes.max() <= 15
    assert sectors.group_by("zone_id").len()["len"].min() >= 50
    other = generate_city(tmp_path / "other", persons=600, seed=4, days=14)
    assert not pl.read_parquet(other.events).equals(pl.read_parquet(city.events))


def test_ingest_round_trip_with_bounds_windows_and_zonings(city, tmp_path: Path) -> None:
    out = ingest_events(city.events, city.cells, tmp_path / "ds",
                        IngestOptions(**city.span, name="city", bound_trips=6, bound_presence=30,
                                      zonings=[ZoningSpec("districts", city.districts), ZoningSpec("sectors", city.sectors, True, 50)],
                                      seed=11))
    data = load_dataset(out)
    meta = data.metadata
    assert (meta.first_day, meta.end_day, meta.window_count) == (dt.date(2024, 3, 4), dt.date(2024, 3, 18), 2)
    assert (meta.bound_trips, meta.bound_presence, meta.trip_rule["kind"]) == (6, 30, "stay")
    assert data.zoning("sectors").coarse and data.zoning("districts").zone_count == 50
    # bounded: at most 6 trips per person-week, 600 persons, 2 weeks
    assert 0 < data.frame("trips")["count"].sum() <= 6 * 600 * 2
    assert 0 < data.frame("presence")["count"].sum() <= 30 * 600 * 2
    hours = read_interchange(out, "trips").collect().group_by("hour").agg(pl.col("count").sum())
    peak = hours.sort("count", descending=True)["hour"][0]
    assert 6 <= peak <= 19
    assert "person" not in read_interchange(out, "trips").collect().columns


def write_events(tmp_path: Path, rows: list[tuple], name: str = "events.csv") -> Path:
    path = tmp_path / name
    path.write_text("person,timestamp,cell_id\n" + "".join(",".join(map(str, r)) + "\n" for r in rows))
    return path


def test_bad_inputs_name_file_column_and_rows_never_persons(city, tmp_path: Path) -> None:
    good = (SECRET, "2024-03-04 08:00:00", "C0101")
    cases = [
        ([good, (SECRET, "yesterday", "C0101"), (SECRET, "2024-03-04 09:00:00", "C0101")], "rows [2]", "timestamp"),
        ([good, (SECRET, "2024-03-04 09:00:00", "NOPE")], "missing from the cell catalog in rows [2]", "cell_id"),
        ([good, ("C0101", "2024-03-04 09:00:00", SECRET)], "rows [2]", "cell_id"),  # swapped columns
        ([good, (SECRET, "", "C0101")], "rows [2]", "timestamp"),
    ]
    for rows, fragment, column in cases:
        with pytest.raises(InvalidData) as info:
            ingest_events(write_events(tmp_path, rows), city.cells, tmp_path / "out",
                          IngestOptions(**city.span, name="x", seed=1))
        message = info.value.message
        assert "events.csv" in message and fragment in message and column in message, message
        assert str(SECRET) not in message
    missing = tmp_path / "m.csv"
    missing.write_text("who,when,where\n1,2,3\n")
    with pytest.raises(InvalidData, match=r"m\.csv: missing column\(s\) \['person', 'timestamp', 'cell_id'\]"):
        ingest_events(missing, city.cells, tmp_path / "out", IngestOptions(**city.span, name="x"))
    empty = tmp_path / "e.csv"
    empty.write_text("person,timestamp,cell_id\n")
    with pytest.raises(InvalidData, match="no rows"):
        ingest_events(empty, city.cells, tmp_path / "out", IngestOptions(**city.span, name="x"))


def test_citibike_day_as_a_trips_table(tmp_path: Path) -> None:
    trips = citibike_trips_table([SHARED / "trips-2017-04-18.csv.gz"], SHARED / "stations.csv")
    cells = tmp_path / "stations.csv"
    citibike_cells(SHARED / "stations.csv").write_csv(cells)
    out = ingest_trips_table(trips, cells, tmp_path / "cb",
                             IngestOptions(name="citibike", bound_trips=1, seed=5, first_day=dt.date(2017, 4, 18),
                                           end_day=dt.date(2017, 4, 19), input_format="trips"))
    data = load_dataset(out)
    assert data.metadata.first_day == dt.date(2017, 4, 18) and data.metadata.bound_trips == 1
    assert data.frame("trips")["count"].sum() == trips.height  # each trip its own unit: bound 1 keeps all
    assert len(data.catalog) == 614
