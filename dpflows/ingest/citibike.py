"""The real Citi Bike extract in ../shared/data/citibike-nyc-2017 as a ready-made trips table.

Stations are cells. The extract has no person identifier, so each trip is its own privacy unit
(see its PROVENANCE.md): ingest it with `ingest_trips_table`, which then bounds per row.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import polars as pl


def citibike_trips_table(paths: Iterable[str | Path], stations_csv: str | Path | None = None) -> pl.DataFrame:
    """timestamp, origin, dest from the trips-*.csv.gz files (start_ts, start_station, end_station).

    A few stations used in the trips are missing from stations.csv (12 of 598 on 2017-04-18);
    given the catalog, trips touching them are dropped here, since a cell without coordinates
    cannot be zoned. No count of what was dropped is reported: it would be an exact count.
    """
    frames = [
        pl.read_csv(p, columns=["start_ts", "start_station", "end_station"], schema_overrides={
            "start_ts": pl.String, "start_station": pl.String, "end_station": pl.String})
        for p in paths
    ]
    trips = pl.concat(frames).select(
        pl.col("start_ts").str.to_datetime("%Y-%m-%d %H:%M:%S", time_unit="us").alias("timestamp"),
        pl.col("start_station").alias("origin"), pl.col("end_station").alias("dest"),
    )
    if stations_csv is not None:
        known = citibike_cells(stations_csv)["cell_id"]
        trips = trips.filter(pl.col("origin").is_in(known) & pl.col("dest").is_in(known))
    return trips


def citibike_cells(stations_csv: str | Path) -> pl.DataFrame:
    """cell_id, lat, lon from stations.csv."""
    return pl.read_csv(stations_csv, schema_overrides={"station_id": pl.String}).select(
        pl.col("station_id").alias("cell_id"), pl.col("latitude").alias("lat"), pl.col("longitude").alias("lon"))
