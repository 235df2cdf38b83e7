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
    events_path.chmod(0o600)  # events are per person: readable by the operator's user alone (synthetic or not)
    truth_path = None
    if ground_truth:
        truth_path = out / "truth.parquet"
        pq.write_table(pa.concat_tables(truth), truth_path)
        truth_path.chmod(0o600)
    return CityFiles(events_path, out / "cells.csv", out / "zonings" / "districts.csv",
                     out / "zonings" / "sectors.csv", start, days, truth_path)


# -- a real-scale city: thousands of cells, hundreds of thousands of persons ------------------------
