"""The real Citi Bike extract in ../shared/data/citibike-nyc-2017 as a ready-made trips table.

Stations are cells. The extract has no person identifier, so each trip is its own privacy unit
(see its PROVENANCE.md): ingest it with `ingest_trips_table`, which then bounds per row.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from dpflows.errors import InvalidData


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
    """cell_id, lat, lon from stations.csv; a file that is not one is refused, named, with what it must hold."""
    path = Path(stations_csv)
    if not path.is_file():
        raise InvalidData(f"{path.name}: {'is a directory' if path.is_dir() else 'file not found'}; give the "
                          "published stations.csv with --cells", field="cells")
    try:
        return pl.read_csv(path, schema_overrides={"station_id": pl.String}).select(
            pl.col("station_id").alias("cell_id"), pl.col("latitude").cast(pl.Float64).alias("lat"),
            pl.col("longitude").cast(pl.Float64).alias("lon"))
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise InvalidData(f"{path.name}: not a Citi Bike stations CSV with columns station_id, latitude, longitude "
                          "(numbers); give the published stations.csv with --cells", field="cells") from exc


@dataclass(frozen=True)
class DropReport:
    """What an input adapter dropped and why. Exact figures over secret records: for the ingesting
    operator's terminal (or a 0600 file) only; never into dataset metadata, the API, logs or errors."""

    rows: int
    dropped: dict[str, int]

    @property
    def total_dropped(self) -> int:
        return sum(self.dropped.values())

    def lines(self) -> list[str]:
        out = [f"read {self.rows} rows; kept {self.rows - self.total_dropped}"]
        for reason, n in self.dropped.items():
            if n:
                out.append(f"dropped {n} ({100 * n / max(self.rows, 1):.2f}%): {reason}")
        return out


def read_citibike(paths: Iterable[str | Path],
                  stations_csv: str | Path) -> tuple[pl.DataFrame, pl.DataFrame, DropReport]:
    """Citi Bike trip files as published (several days at once) → (trips, cells, what was dropped and why).

    Dropped: trips whose start time does not parse, trips at a station missing from stations.csv
    (a cell without coordinates cannot be zoned), and exact duplicate rows (the same trip listed
    twice). Stations are cells; there is no rider id, so each trip is its own privacy unit.
    """
    files = [Path(p) for p in paths]
    for p in files:
        if not p.is_file():
            raise InvalidData(f"{p.name}: {'is a directory; give the files in it' if p.is_dir() else 'file not found'}"
                              "; name each trips-*.csv.gz file (several at once)", field="path")
    cells = citibike_cells(stations_csv)
    frames = []
    for p in files:
        try:
            frames.append(pl.read_csv(p, columns=["start_ts", "start_station", "end_station"], schema_overrides={
                "start_ts": pl.String, "start_station": pl.String, "end_station": pl.String}))
        except (pl.exceptions.PolarsError, OSError) as exc:
            raise InvalidData(f"{p.name}: not a readable Citi Bike trips CSV with columns start_ts, start_station, "
                              "end_station (truncated or corrupt?); download it again", field="path") from exc
        if frames[-1].height == 0:
            raise InvalidData(f"{p.name}: no trips; remove it from the files given (a day without trips is "
                              "declared missing with --days)", field="path")
    raw = pl.concat(frames)
    rows = raw.height
    parsed = raw.select(
        pl.col("start_ts").str.strip_chars().str.to_datetime("%Y-%m-%d %H:%M:%S", strict=False, time_unit="us")
        .alias("timestamp"), pl.col("start_station").alias("origin"), pl.col("end_station").alias("dest"))
    bad_time = parsed.filter(pl.col("timestamp").is_null()).height
    parsed = parsed.filter(pl.col("timestamp").is_not_null())
    known = cells["cell_id"]
    at_known = parsed.filter(pl.col("origin").is_in(known) & pl.col("dest").is_in(known))
    unknown = parsed.height - at_known.height
    trips = at_known.unique(maintain_order=True)
    duplicates = at_known.height - trips.height
    return trips, cells, DropReport(rows, {"unparseable start_ts": bad_time,
                                           "station missing from stations.csv": unknown,
                                           "duplicate rows": duplicates})
