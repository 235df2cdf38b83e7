"""A real-scale demo city: thousands of cells with a dense core, sub-centres and a sparse periphery.

Hundreds of thousands of persons with the same routines as the grid city (dpflows.demo), written
in chunks so memory stays bounded; a k-means zoning of ~1,000 zones with Voronoi polygons, and
coarse sectors. Synthetic data only: numpy's generator makes the city, never any noise.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dpflows.demo import (
    CENTRE,
    CHUNK_PERSONS,
    _day_events,
)

#: Share of cells in the dense core, around the sub-centres, and spread over the whole area.
_CORE, _SUB, _SPREAD = 0.55, 0.30, 0.15

_CORE_SCALE_KM = 2.5      # core density ∝ exp(-r / 2.5 km)
_SUB_SD_KM = 1.2          # each sub-centre: a Gaussian blob
_RADIUS_KM = 20.0         # the area served: a disc of 20 km
_KM_PER_DEG_LAT = 111.195


@dataclass(frozen=True)
class CityLayout:
    """Cell positions of a real-scale city, in km east/north of the centre, and its sub-centres."""

    x: np.ndarray
    y: np.ndarray
    subcentres: np.ndarray  # (k, 2) km

    def lat_lon(self) -> tuple[np.ndarray, np.ndarray]:
        lat = CENTRE[0] + self.y / _KM_PER_DEG_LAT
        lon = CENTRE[1] + self.x / (_KM_PER_DEG_LAT * np.cos(np.radians(CENTRE[0])))
        return lat, lon


def city_layout(cells: int, seed: int = 1, *, subcentres: int = 4) -> CityLayout:
    """Antenna sites as operators place them: dense in the core, clusters at a few sub-centres
    (8–13 km out), sparse over the rest of a 20 km disc; sorted from the centre outwards."""
    if cells < 10:
        raise ValueError("a real-scale city needs at least 10 cells")
    rng = np.random.default_rng([seed, 15])
    angle = rng.uniform(0, 2 * np.pi, subcentres) + np.arange(subcentres) * 2 * np.pi / subcentres
    dist = rng.uniform(8.0, 13.0, subcentres)
    subs = np.column_stack([dist * np.cos(angle), dist * np.sin(angle)])
    n_core = round(cells * _CORE)
    n_sub = round(cells * _SUB)
    n_spread = cells - n_core - n_sub
    # core: area density ∝ exp(-r/s), so the radius is Gamma(2, s)
    r = np.minimum(rng.gamma(2.0, _CORE_SCALE_KM, n_core), _RADIUS_KM)
    a = rng.uniform(0, 2 * np.pi, n_core)
    core = np.column_stack([r * np.cos(a), r * np.sin(a)])
    which = rng.integers(0, subcentres, n_sub)
    sub = subs[which] + rng.normal(0.0, _SUB_SD_KM, (n_sub, 2))
    r = _RADIUS_KM * np.sqrt(rng.random(n_spread))  # uniform over the disc
    a = rng.uniform(0, 2 * np.pi, n_spread)
    spread = np.column_stack([r * np.cos(a), r * np.sin(a)])
    xy = np.vstack([core, sub, spread])
    xy = xy[np.argsort(np.hypot(xy[:, 0], xy[:, 1]), kind="stable")]
    return CityLayout(xy[:, 0].copy(), xy[:, 1].copy(), subs)


class _PointGeography:
    """Cells at arbitrary positions: `near` draws among the (2r+1)² nearest cells, as on the grid."""

    def __init__(self, x: np.ndarray, y: np.ndarray, max_radius: int = 5) -> None:
        self.n_cells = x.size
        self.k_max = min((2 * max_radius + 1) ** 2, self.n_cells)
        self.neighbours = _nearest_cells(x, y, self.k_max)

    def near(self, cell: np.ndarray, rng: np.random.Generator, radius: int = 3) -> np.ndarray:
        k = min((2 * radius + 1) ** 2, self.k_max)
        return self.neighbours[cell, rng.integers(0, k, cell.size)]


def _nearest_cells(x: np.ndarray, y: np.ndarray, k: int, block: int = 512) -> np.ndarray:
    """(n, k) indices of each cell's k nearest cells (itself first), by blocks of rows: memory n × block."""
    n = x.size
    out = np.empty((n, k), dtype=np.int32)
    for lo in range(0, n, block):
        hi = min(lo + block, n)
        d = np.hypot(x[lo:hi, None] - x[None, :], y[lo:hi, None] - y[None, :])
        d[np.arange(hi - lo), np.arange(lo, hi)] = -1.0  # itself first
        part = np.argpartition(d, k - 1, axis=1)[:, :k] if k < n else np.tile(np.arange(n), (hi - lo, 1))
        order = np.argsort(np.take_along_axis(d, part, axis=1), axis=1, kind="stable")
        out[lo:hi] = np.take_along_axis(part, order, axis=1)
    return out


def _nearest_to(x: np.ndarray, y: np.ndarray, px: np.ndarray, py: np.ndarray) -> np.ndarray:
    """Index of the cell nearest to each point (a handover cell on the way)."""
    import shapely

    tree = shapely.STRtree(shapely.points(x, y))
    idx = tree.nearest(shapely.points(px, py))
    return np.asarray(idx, dtype=np.int64)


def _attractiveness(layout: CityLayout) -> np.ndarray:
    """Jobs per cell: highest in the core, high at the sub-centres, some everywhere."""
    r = np.hypot(layout.x, layout.y)
    attract = 0.3 + 4.0 * np.exp(-r / 3.0)
    for sx, sy in layout.subcentres:
        attract += 1.5 * np.exp(-np.hypot(layout.x - sx, layout.y - sy) / 1.5)
    return attract


def _draw_work(home: np.ndarray, layout: CityLayout, attract: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Gravity model: P(work j | home i) ∝ attract_j / (d_ij + 2 km)², one home cell at a time
    (memory: one row of n cells, not the n × n matrix)."""
    work = np.empty_like(home)
    order = np.argsort(home, kind="stable")
    sorted_home = home[order]
    starts = np.flatnonzero(np.r_[True, sorted_home[1:] != sorted_home[:-1]])
    ends = np.r_[starts[1:], sorted_home.size]
    last = layout.x.size - 1
    for lo, hi in zip(starts.tolist(), ends.tolist(), strict=True):
        h = sorted_home[lo]
        d = np.hypot(layout.x - layout.x[h], layout.y - layout.y[h])
        cdf = np.cumsum(attract / (d + 2.0) ** 2)
        idx = order[lo:hi]
        work[idx] = np.minimum(np.searchsorted(cdf / cdf[-1], u[idx], side="right"), last)
    return work


def kmeans_zones(x: np.ndarray, y: np.ndarray, zones: int, seed: int = 1, iterations: int = 25) -> np.ndarray:
    """Zone index (0..zones-1) per cell: k-means on positions, every zone holding at least one cell.

    Zones follow the density of cells (many small zones in the core, few large ones outside),
    like census tracts; numbered from the centre outwards.
    """
    n = x.size
    if not 1 <= zones <= n:
        raise ValueError(f"zones={zones} must be between 1 and the number of cells ({n})")
    rng = np.random.default_rng([seed, 16])
    pts = np.column_stack([x, y])
    centres = pts[rng.choice(n, zones, replace=False)]
    label = np.zeros(n, dtype=np.int64)
    for _ in range(iterations):
        label = _closest_centre(pts, centres)
        counts = np.bincount(label, minlength=zones)
        for k in np.flatnonzero(counts == 0):  # an empty zone takes the cell farthest from its centre
            far = int(np.argmax(np.hypot(*(pts - centres[label]).T) * (counts[label] > 1)))
            counts[label[far]] -= 1
            label[far] = k
            counts[k] = 1
            centres[k] = pts[far]
        for dim in (0, 1):
            centres[:, dim] = np.bincount(label, weights=pts[:, dim], minlength=zones) / counts
    label = _closest_centre(pts, centres)
    counts = np.bincount(label, minlength=zones)
    for k in np.flatnonzero(counts == 0):
        far = int(np.argmax(np.hypot(*(pts - centres[label]).T) * (counts[label] > 1)))
        counts[label[far]] -= 1
        label[far] = k
        counts[k] = 1
    # number zones from the centre outwards
    cx = np.bincount(label, weights=x, minlength=zones) / counts
    cy = np.bincount(label, weights=y, minlength=zones) / counts
    rank = np.empty(zones, dtype=np.int64)
    rank[np.argsort(np.hypot(cx, cy), kind="stable")] = np.arange(zones)
    return rank[label]


def _closest_centre(pts: np.ndarray, centres: np.ndarray, block: int = 4096) -> np.ndarray:
    """argmin_k |p - c_k|² = argmin_k (|c_k|² - 2 p·c_k), by blocks of points (memory block × k)."""
    out = np.empty(len(pts), dtype=np.int64)
    c2 = (centres ** 2).sum(axis=1)
    for lo in range(0, len(pts), block):
        out[lo:lo + block] = (c2[None, :] - 2.0 * pts[lo:lo + block] @ centres.T).argmin(axis=1)
    return out


def _zone_polygons(layout: CityLayout, zone_of_cell: np.ndarray, names: list[str]) -> dict[str, object]:
    """Each zone as the union of its cells' Voronoi regions, clipped to the city (the hull plus 1 km)."""
    import shapely

    points = shapely.multipoints(np.column_stack([layout.x, layout.y]))
    area = shapely.buffer(shapely.convex_hull(points), 1.0)
    regions = shapely.get_parts(shapely.voronoi_polygons(points, extend_to=area))
    # voronoi_polygons returns regions in no promised order: match each to the cell inside it
    cells = shapely.points(layout.x, layout.y)
    tree = shapely.STRtree(regions)
    cell_idx, region_idx = tree.query(cells, predicate="within")
    region_of_cell = np.full(layout.x.size, -1, dtype=np.int64)
    region_of_cell[cell_idx] = region_idx
    lat_c = np.cos(np.radians(CENTRE[0]))

    def to_lon_lat(xy: np.ndarray) -> np.ndarray:
        return np.column_stack([CENTRE[1] + xy[:, 0] / (_KM_PER_DEG_LAT * lat_c),
                                CENTRE[0] + xy[:, 1] / _KM_PER_DEG_LAT])

    features = []
    for z, name in enumerate(names):
        members = regions[region_of_cell[zone_of_cell == z]]
        shape = shapely.intersection(shapely.union_all(members), area)
        shape = shapely.set_precision(shapely.transform(shape, to_lon_lat), 1e-6)
        features.append({"type": "Feature", "properties": {"zone_id": name},
                         "geometry": json.loads(shapely.to_geojson(shapely.orient_polygons(shape)))})
    return {"type": "FeatureCollection", "features": features}


@dataclass(frozen=True)
class ScaledCityFiles:
    """The files of a real-scale city; `zonings` name -> CSV, `polygons` name -> GeoJSON, `coarse`
    name -> the fewest cells in a zone of a zoning meant to be loaded coarse."""

    events: Path
    cells: Path
    zonings: dict[str, Path]
    polygons: dict[str, Path]
    coarse: dict[str, int]
    first_day: dt.date
    days: int

    @property
    def end_day(self) -> dt.date:
        """The day after the last generated day: with first_day, the span an ingestion declares."""
        return self.first_day + dt.timedelta(days=self.days)

    @property
    def span(self) -> dict[str, dt.date]:
        """Keyword arguments declaring the generated days to an ingestion."""
        return {"first_day": self.first_day, "end_day": self.end_day}


def generate_scaled_city(out_dir: str | Path, *, cells: int = 5000, persons: int = 500_000, zones: int = 1000,
                         seed: int = 1, days: int = 28, start: dt.date = dt.date(2024, 3, 4),
                         chunk_persons: int = CHUNK_PERSONS) -> ScaledCityFiles:
    """A city of `cells` antenna sites (dense core, sub-centres, sparse periphery) and `persons`
    persons, written chunk by chunk (memory bounded by `chunk_persons`, not by `persons`).

    Writes events.parquet, cells.csv, zonings/zones{N}.csv with its polygons zonings/zones{N}.geojson
    (k-means zones; N = `zones`, at most one per cell) and zonings/sectors.csv (four quadrants
    around the centre, meant to be loaded coarse). Persons live and work with the same daily
    routines as the demo grid city; homes follow the cells (cells are where people are), work
    places a gravity model over jobs concentrated in the core and the sub-centres.
    """
    if persons < 1 or days < 1:
        raise ValueError("persons and days must be at least 1")
    out = Path(out_dir)
    (out / "zonings").mkdir(parents=True, exist_ok=True)
    layout = city_layout(cells, seed)
    width = max(5, len(str(cells - 1)))
    ids = [f"C{i:0{width}d}" for i in range(cells)]
    lat, lon = layout.lat_lon()
    (out / "cells.csv").write_text("cell_id,lat,lon\n" + "".join(
        f"{c},{a:.6f},{o:.6f}\n" for c, a, o in zip(ids, lat, lon, strict=True)))
    zones = min(zones, cells)
    zone_of_cell = kmeans_zones(layout.x, layout.y, zones, seed)
    zwidth = max(4, len(str(zones - 1)))
    names = [f"Z{z:0{zwidth}d}" for z in range(zones)]
    zname = f"zones{zones}"
    zonings = {zname: out / "zonings" / f"{zname}.csv", "sectors": out / "zonings" / "sectors.csv"}
    zonings[zname].write_text("cell_id,zone_id\n" + "".join(
        f"{c},{names[z]}\n" for c, z in zip(ids, zone_of_cell.tolist(), strict=True)))
    zonings["sectors"].write_text("cell_id,zone_id\n" + "".join(
        f"{c},{'N' if y >= 0 else 'S'}{'E' if x >= 0 else 'W'}\n"
        for c, x, y in zip(ids, layout.x.tolist(), layout.y.tolist(), strict=True)))
    polygons = {zname: out / "zonings" / f"{zname}.geojson"}
    polygons[zname].write_text(json.dumps(_zone_polygons(layout, zone_of_cell, names)))

    geo = _PointGeography(layout.x, layout.y)
    home_w = np.random.default_rng([seed, 17]).uniform(0.5, 1.5, cells)  # residents per site vary
    home_w /= home_w.sum()
    attract = _attractiveness(layout)
    cell_ids = pa.array(ids, pa.string())
    schema = pa.schema([("person", pa.int64()), ("timestamp", pa.timestamp("us")), ("cell_id", pa.string())])
    epoch = np.datetime64(start, "us")
    events_path = out / "events.parquet"
    with pq.ParquetWriter(events_path, schema, compression="zstd") as writer:
        for first in range(0, persons, chunk_persons):
            ids_chunk = np.arange(first, min(first + chunk_persons, persons), dtype=np.int64)
            chunk_rng = np.random.default_rng([seed, first, 18])
            home = chunk_rng.choice(cells, size=ids_chunk.size, p=home_w)
            work = _draw_work(home, layout, attract, chunk_rng.random(ids_chunk.size))
            heavy = chunk_rng.random(ids_chunk.size) < 0.005
            via = _nearest_to(layout.x, layout.y, (layout.x[home] + layout.x[work]) / 2,
                              (layout.y[home] + layout.y[work]) / 2)
            pseudonyms = ids_chunk * 7919 + 100_003
            for d in range(days):
                day = start + dt.timedelta(days=d)
                person, seconds, cell = _day_events(pseudonyms, home, work, via, heavy, day.weekday() < 5,
                                                    chunk_rng, geo)
                ts = epoch + np.timedelta64(d, "D") + seconds.astype("timedelta64[s]")
                writer.write_table(pa.table({
                    "person": pa.array(person), "timestamp": pa.array(ts.astype("datetime64[us]")),
                    "cell_id": cell_ids.take(pa.array(cell)),
                }, schema=schema))
    quadrant = (layout.y >= 0).astype(np.int64) * 2 + (layout.x >= 0)
    coarse = {"sectors": int(np.bincount(quadrant, minlength=4).min())}
    events_path.chmod(0o600)  # per-person events: readable by the operator's user alone
    return ScaledCityFiles(events_path, out / "cells.csv", zonings, polygons, coarse, start, days)
