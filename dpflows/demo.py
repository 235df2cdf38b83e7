"""Synthetic demo cities: cells, public zonings, and network events of N persons.

Randomness here is numpy's seeded Generator because this is *synthetic data generation*, not
noise: nothing here is released, and the same seed must give the same city. All noise that
protects people comes from OpenDP in `dpflows.mechanisms`.

The city: a 20 × 20 jittered grid of cells (~1 km apart); "districts" are 2 × 4 blocks (50
zones of 8 cells), "sectors" are 10 × 10 quadrants (4 zones of 100 cells, marked coarse).
Persons get a home cell (denser near the centre) and a work cell drawn by a gravity model
(attractiveness of a few business hotspots over squared distance). Weekdays: home → work in
the morning peak, work → home in the evening peak, with handover events in a cell along the
way (dropped by the stay rule), and evening leisure trips for some; weekends: leisure trips
around home. About 0.5% are heavy users (taxis, couriers) with 40–100 events a day.

A real-scale city (`generate_scaled_city`, `dpflows demo-city --cells N`): N antenna sites placed
as operators place them — 55% in a dense core (area density ∝ e^(−r / 2.5 km)), 30% in Gaussian
clusters (sd 1.2 km) at four sub-centres 8–13 km out, 15% spread over a 20 km disc — with the
same daily routines. Homes follow the cells; work places follow a gravity model over jobs
concentrated in the core and sub-centres, drawn one home cell at a time (never an N × N matrix);
"near home" is among the (2r+1)² nearest cells, the handover on the way the cell nearest the
midpoint. Its zonings: `zones{K}` (k-means on positions, K = 1000 by default: small zones in the
core, large outside, like census tracts; with the union of its cells' Voronoi regions as
polygons) and `sectors` (four quadrants, coarse). Persons are generated and written in chunks,
so memory does not grow with N persons (docs/scale.md has the figures).
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

GRID = 20
CENTRE = (52.52, 13.40)
STEP = (0.009, 0.015)  # ~1 km in latitude and longitude at 52°N
CHUNK_PERSONS = 100_000


@dataclass(frozen=True)
class CityFiles:
    events: Path
    cells: Path
    districts: Path
    sectors: Path
    first_day: dt.date
    days: int
    #: with ground_truth=True: each person's true home and work cell (never ingested; for measuring
    #: how well ingestion's derived places recover them)
    truth: Path | None = None

    @property
    def end_day(self) -> dt.date:
        """The day after the last generated day: with first_day, the span an ingestion declares."""
        return self.first_day + dt.timedelta(days=self.days)

    @property
    def span(self) -> dict[str, dt.date]:
        """Keyword arguments declaring the generated days to an ingestion."""
        return {"first_day": self.first_day, "end_day": self.end_day}


def _cells(rng: np.random.Generator) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rows, cols = np.divmod(np.arange(GRID * GRID), GRID)
    lat = CENTRE[0] + (rows - GRID / 2 + rng.uniform(-0.3, 0.3, rows.size)) * STEP[0]
    lon = CENTRE[1] + (cols - GRID / 2 + rng.uniform(-0.3, 0.3, cols.size)) * STEP[1]
    ids = [f"C{r:02d}{c:02d}" for r, c in zip(rows, cols, strict=True)]
    return ids, rows, cols, lat, lon


def _gravity_cdf(rows: np.ndarray, cols: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Home weights (denser near the centre) and, per home cell, the CDF of the work cell."""
    centre_dist = np.hypot(rows - GRID / 2, cols - GRID / 2)
    home_w = np.exp(-centre_dist / 7.0)
    hotspots = rng.choice(rows.size, size=5, replace=False)
    attract = 0.2 + np.zeros(rows.size)
    for h in hotspots:
        attract += 6.0 * np.exp(-np.hypot(rows - rows[h], cols - cols[h]) / 1.5)
    dist = np.hypot(rows[:, None] - rows[None, :], cols[:, None] - cols[None, :])
    weights = attract[None, :] / (dist + 2.0) ** 2
    cdf = np.cumsum(weights / weights.sum(axis=1, keepdims=True), axis=1)
    return home_w / home_w.sum(), cdf


def _draw(cdf_rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    u = np.asarray(rng.random(cdf_rows.shape[0]))[:, None]
    return np.minimum((cdf_rows < u).sum(axis=1), cdf_rows.shape[1] - 1)


def _near(cell: np.ndarray, rng: np.random.Generator, radius: int = 3) -> np.ndarray:
    r, c = np.divmod(cell, GRID)
    r = np.clip(r + rng.integers(-radius, radius + 1, r.size), 0, GRID - 1)
    c = np.clip(c + rng.integers(-radius, radius + 1, c.size), 0, GRID - 1)
    return r * GRID + c


def _midpoint(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    (ra, ca), (rb, cb) = np.divmod(a, GRID), np.divmod(b, GRID)
    return ((ra + rb) // 2) * GRID + (ca + cb) // 2


class _Events:
    """Accumulates (person, second-of-day, cell) arrays for one day of one chunk."""

    def __init__(self) -> None:
        self.parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def add(self, person: np.ndarray, seconds: np.ndarray, cell: np.ndarray) -> None:
        self.parts.append((person, np.clip(seconds, 0, 86_399).astype(np.int64), cell))

    def repeat(self, person: np.ndarray, cell: np.ndarray, start: np.ndarray, stop: np.ndarray, k: np.ndarray,
               rng: np.random.Generator) -> None:
        """k[i] events for person i at `cell[i]`, uniform in [start[i], stop[i])."""
        p = np.repeat(person, k)
        lo, hi = np.repeat(start, k), np.repeat(stop, k)
        self.add(p, lo + rng.random(p.size) * np.maximum(hi - lo, 1), np.repeat(cell, k))

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return tuple(np.concatenate(x) for x in zip(*self.parts, strict=True))  # type: ignore[return-value]


class _Geography(Protocol):
    """Where the day generator finds cells: how many, and cells near a given one."""

    n_cells: int

    def near(self, cell: np.ndarray, rng: np.random.Generator, radius: int = 3) -> np.ndarray: ...


class _GridGeography:
    """The 20 × 20 demo grid: a cell within `radius` rows and columns."""

    n_cells = GRID * GRID

    def near(self, cell: np.ndarray, rng: np.random.Generator, radius: int = 3) -> np.ndarray:
        return _near(cell, rng, radius)


def _day_events(persons: np.ndarray, home: np.ndarray, work: np.ndarray, via: np.ndarray, heavy: np.ndarray,
                weekday: bool, rng: np.random.Generator,
                geo: _Geography) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One day of events; `via` is each person's cell between home and work (a handover, not a stay)."""
    ev = _Events()
    n = persons.size
    hour = 3600.0
    normal = ~heavy
    p, h, w, v = persons[normal], home[normal], work[normal], via[normal]
    m = p.size
    if weekday:
        commuter = rng.random(m) < 0.8
        pc, hc, wc = p[commuter], h[commuter], w[commuter]
        dep = rng.normal(8.0, 0.7, pc.size).clip(6.0, 10.5) * hour
        back = rng.normal(17.5, 1.0, pc.size).clip(15.0, 21.0) * hour
        ev.repeat(pc, hc, np.full(pc.size, 6.0 * hour), dep - 300, rng.integers(1, 3, pc.size), rng)
        mid = v[commuter]
        ev.add(pc, dep + rng.uniform(300, 900, pc.size), mid)  # a handover on the way: not a stay
        ev.repeat(pc, wc, dep + 1500, back - 300, rng.integers(2, 6, pc.size), rng)
        ev.add(pc, back + rng.uniform(300, 900, pc.size), mid)
        ev.repeat(pc, hc, back + 1500, np.full(pc.size, 23.5 * hour), rng.integers(1, 4, pc.size), rng)
        leisure = rng.random(pc.size) < 0.2
        pl_, hl = pc[leisure], hc[leisure]
        start = np.maximum(back[leisure] + 2 * hour, 19 * hour)
        ev.repeat(pl_, geo.near(hl, rng), start, start + 1.5 * hour, np.full(pl_.size, 2), rng)
        ev.add(pl_, start + 2 * hour + rng.uniform(0, 1800, pl_.size), hl)
        stay_home = ~commuter
        ev.repeat(p[stay_home], h[stay_home], np.full(stay_home.sum(), 8 * hour), np.full(stay_home.sum(), 22 * hour),
                  rng.integers(1, 5, stay_home.sum()), rng)
    else:
        ev.repeat(p, h, np.full(m, 8.0 * hour), np.full(m, 11.0 * hour), rng.integers(1, 3, m), rng)
        out = rng.random(m) < 0.5
        po, ho = p[out], h[out]
        start = rng.uniform(11.5, 16.0, po.size) * hour
        ev.repeat(po, geo.near(ho, rng, 5), start, start + 2 * hour, rng.integers(2, 4, po.size), rng)
        ev.repeat(po, ho, start + 2.5 * hour, np.full(po.size, 23 * hour), rng.integers(1, 3, po.size), rng)
        rest = ~out
        ev.repeat(p[rest], h[rest], np.full(rest.sum(), 12 * hour), np.full(rest.sum(), 22 * hour),
                  rng.integers(1, 3, rest.sum()), rng)
    ph = persons[heavy]
    if ph.size:
        k = rng.integers(40, 101, ph.size)
        pp = np.repeat(ph, k)
        ev.add(pp, rng.uniform(7 * hour, 22 * hour, pp.size), rng.integers(0, geo.n_cells, pp.size))
    del n
    return ev.arrays()


def generate_city(out_dir: str | Path, *, persons: int = 2000, seed: int = 1, days: int = 28,
                  start: dt.date = dt.date(2024, 3, 4), ground_truth: bool = False) -> CityFiles:
    """Write events.parquet, cells.csv and zonings/{districts,sectors}.csv; deterministic from `seed`.

    With `ground_truth`, also truth.parquet: person, home, work (cell ids), heavy (bool), the
    routines the events were drawn from; the events are the same either way.
    """
    if persons < 1 or days < 1:
        raise ValueError("persons and days must be at least 1")
    out = Path(out_dir)
    (out / "zonings").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    ids, rows, cols, lat, lon = _cells(rng)
    (out / "cells.csv").write_text("cell_id,lat,lon\n" + "".join(
        f"{c},{a:.6f},{o:.6f}\n" for c, a, o in zip(ids, lat, lon, strict=True)))
    (out / "zonings" / "districts.csv").write_text("cell_id,zone_id\n" + "".join(
        f"{c},D{r // 2:02d}{q // 4:02d}\n" for c, r, q in zip(ids, rows, cols, strict=True)))
    (out / "zonings" / "sectors.csv").write_text("cell_id,zone_id\n" + "".join(
        f"{c},{'N' if r < GRID // 2 else 'S'}{'W' if q < GRID // 2 else 'E'}\n"
        for c, r, q in zip(ids, rows, cols, strict=True)))
    home_w, cdf = _gravity_cdf(rows, cols, rng)
    cell_ids = pa.array(ids, pa.string())
    schema = pa.schema([("person", pa.int64()), ("timestamp", pa.timestamp("us")), ("cell_id", pa.string())])
    epoch = np.datetime64(start, "us")
    events_path = out / "events.parquet"
    truth: list[pa.Table] = []
    with pq.ParquetWriter(events_path, schema, compression="zstd") as writer:
        for first in range(0, persons, CHUNK_PERSONS):
            ids_chunk = np.arange(first, min(first + CHUNK_PERSONS, persons), dtype=np.int64)
            chunk_rng = np.random.default_rng([seed, first])
            home = chunk_rng.choice(rows.size, size=ids_chunk.size, p=home_w)
            work = _draw(cdf[home], chunk_rng)
            heavy = chunk_rng.random(ids_chunk.size) < 0.005
            via = _midpoint(home, work)
            pseudonyms = ids_chunk * 7919 + 100_003  # operator pseudonyms, not row numbers
            if ground_truth:
                truth.append(pa.table({"person": pa.array(pseudonyms), "home": cell_ids.take(pa.array(home)),
                                       "work": cell_ids.take(pa.array(work)), "heavy": pa.array(heavy)}))
            for d in range(days):
                day = start + dt.timedelta(days=d)
                person, seconds, cell = _day_events(pseudonyms, home, work, via, heavy, day.weekday() < 5, chunk_rng,
                                                    _GridGeography())
                ts = epoch + np.timedelta64(d, "D") + seconds.astype("timedelta64[s]")
                writer.write_table(pa.table({
                    "person": pa.array(person), "timestamp": pa.array(ts.astype("datetime64[us]")),
                    "cell_id": cell_ids.take(pa.array(cell)),
                }, schema=schema))
    truth_path = None
    if ground_truth:
        truth_path = out / "truth.parquet"
        pq.write_table(pa.concat_tables(truth), truth_path)
    return CityFiles(events_path, out / "cells.csv", out / "zonings" / "districts.csv",
                     out / "zonings" / "sectors.csv", start, days, truth_path)


# -- a real-scale city: thousands of cells, hundreds of thousands of persons ------------------------

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
    return ScaledCityFiles(events_path, out / "cells.csv", zonings, polygons, coarse, start, days)
