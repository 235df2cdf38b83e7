"""The real-scale demo city (issue 15 item 6) at a small size: 300 cells, 2,000 persons, 60 zones.

Checks what makes it realistic (cells and homes dense in the core, clusters at sub-centres,
sparse periphery), the k-means zoning's properties (every cell in one zone, every zone non-empty,
zones small in the core and large outside, polygons that give back the same zoning), and that it
ingests. The default demo city is unchanged, byte for byte.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest
import shapely
from shapely.geometry import shape

from dpflows.aggregates import load_dataset
from dpflows.cells import CellCatalog
from dpflows.demo import CENTRE, generate_city
from dpflows.demo_scaled import city_layout, generate_scaled_city
from dpflows.ingest.pipeline import IngestOptions, Progress, ZoningSpec, ingest_events
from dpflows.zoning_sources import zoning_from_geojson

CELLS, PERSONS, ZONES = 300, 2000, 60


@pytest.fixture(scope="module")
def city(tmp_path_factory: pytest.TempPathFactory):
    return generate_scaled_city(tmp_path_factory.mktemp("scaled"), cells=CELLS, persons=PERSONS, zones=ZONES, days=7)


def km_from_centre(lat: np.ndarray, lon: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ky = 111.195
    return (lon - CENTRE[1]) * ky * np.cos(np.radians(CENTRE[0])), (lat - CENTRE[0]) * ky


def density(x: np.ndarray, y: np.ndarray, cx: float, cy: float, r0: float, r1: float,
            weights: np.ndarray | None = None) -> float:
    """Points (or weights) per km² in the ring r0 <= r < r1 around (cx, cy)."""
    r = np.hypot(x - cx, y - cy)
    inside = (r >= r0) & (r < r1)
    total = inside.sum() if weights is None else weights[inside].sum()
    return float(total) / (np.pi * (r1 ** 2 - r0 ** 2))


def test_cells_and_homes_are_dense_in_the_core_and_sparse_outside(city) -> None:
    cells = pl.read_csv(city.cells)
    assert cells.height == CELLS and cells["cell_id"].n_unique() == CELLS
    x, y = km_from_centre(cells["lat"].to_numpy(), cells["lon"].to_numpy())
    core, periphery = density(x, y, 0, 0, 0, 3), density(x, y, 0, 0, 14, 20)
    assert core > 10 * periphery > 0, (core, periphery)
    assert np.hypot(x, y).max() <= 20.0 + 4 * 1.2 + 0.01  # the disc, and sub-centre blobs at its edge
    # each sub-centre is a cluster: denser within 2 km than the periphery
    layout = city_layout(CELLS)
    assert np.allclose(layout.x, x, atol=1e-3) and np.allclose(layout.y, y, atol=1e-3)
    for sx, sy in layout.subcentres:
        assert 8 <= np.hypot(sx, sy) <= 13 and density(x, y, sx, sy, 0, 2) > 5 * periphery

    # homes: where each person is at 6-8 a.m. on the first Monday; people follow the cells
    events = pl.read_parquet(city.events)
    first = (events.filter(pl.col("timestamp").dt.day() == 4, pl.col("timestamp").dt.hour() < 8)
             .group_by("person").agg(pl.col("cell_id").first()))
    assert first.height > 0.7 * PERSONS
    per_cell = first.group_by("cell_id").len().join(cells, on="cell_id")
    hx, hy = km_from_centre(per_cell["lat"].to_numpy(), per_cell["lon"].to_numpy())
    homes = per_cell["len"].to_numpy().astype(float)
    assert density(hx, hy, 0, 0, 0, 3, homes) > 10 * density(hx, hy, 0, 0, 14, 20, homes)
    # every cell is used, trips cross the city: some persons' events span more than 5 km
    assert events["cell_id"].n_unique() == CELLS


def test_the_kmeans_zoning_and_its_polygons(city) -> None:
    name = f"zones{ZONES}"
    zoning = pl.read_csv(city.zonings[name])
    cells = pl.read_csv(city.cells)
    assert zoning.height == CELLS and set(zoning["cell_id"]) == set(cells["cell_id"])
    sizes = zoning.group_by("zone_id").len()
    assert sizes.height == ZONES and sizes["len"].min() >= 1
    assert sorted(sizes["zone_id"]) == [f"Z{z:04d}" for z in range(ZONES)]
    # zones follow the density: zones numbered from the centre are small, outer ones large
    joined = zoning.join(cells, on="cell_id")
    x, y = km_from_centre(joined["lat"].to_numpy(), joined["lon"].to_numpy())
    joined = joined.with_columns(x=x, y=y)
    spread = (joined.group_by("zone_id").agg(pl.col("x").mean().alias("cx"), pl.col("y").mean().alias("cy"),
                                              ((pl.col("x") - pl.col("x").mean()) ** 2
                                               + (pl.col("y") - pl.col("y").mean()) ** 2).mean().sqrt().alias("rms"))
              .sort("zone_id"))
    rms = spread["rms"].to_numpy()
    assert np.median(rms[:ZONES // 4]) < np.median(rms[-ZONES // 4:])
    # k-means: (almost) every cell is nearest to its own zone's centre
    centres = spread.select("cx", "cy").to_numpy()
    own = spread["zone_id"].to_list()
    nearest = np.argmin(np.hypot(x[:, None] - centres[None, :, 0], y[:, None] - centres[None, :, 1]), axis=1)
    assert np.mean([own[k] == z for k, z in zip(nearest, joined["zone_id"], strict=True)]) > 0.95

    # the polygons give back exactly this zoning, with no cell outside and no empty polygon
    doc = json.loads(city.polygons[name].read_text())
    catalog = CellCatalog.from_columns(cells["cell_id"].to_list(), cells["lat"].to_list(), cells["lon"].to_list())
    built = zoning_from_geojson(doc, catalog, id_field="zone_id", source=city.polygons[name].name)
    assert built.mapping == dict(zoning.iter_rows()) and not built.assigned_to_nearest and not built.empty_polygons
    polys = [shape(f["geometry"]) for f in doc["features"]]
    assert all(p.is_valid for p in polys)
    union = shapely.union_all(polys)
    assert sum(p.area for p in polys) == pytest.approx(union.area, rel=1e-4)  # a partition: no overlaps

    sectors = pl.read_csv(city.zonings["sectors"])
    assert set(sectors["zone_id"]) == {"NE", "NW", "SE", "SW"}
    assert sectors.group_by("zone_id").len()["len"].min() == city.coarse["sectors"]


def test_it_ingests_with_its_zonings(city, tmp_path: Path) -> None:
    name = f"zones{ZONES}"
    out = ingest_events(city.events, city.cells, tmp_path / "datasets" / "scaled",
                        IngestOptions(name="scaled", report_epsilon="0", **city.span,
                                      zonings=[ZoningSpec(name, city.zonings[name]),
                                               ZoningSpec("sectors", city.zonings["sectors"], coarse=True,
                                                          min_cells_per_zone=city.coarse["sectors"])]),
                        progress=Progress(False))
    data = load_dataset(out)
    assert len(data.catalog) == CELLS and data.zoning(name).zone_count == ZONES and data.zoning("sectors").coarse
    assert data.metadata.window_count == 1


def test_layout_is_deterministic_and_sized() -> None:
    a, b = city_layout(1000, seed=3), city_layout(1000, seed=3)
    assert np.array_equal(a.x, b.x) and np.array_equal(a.y, b.y) and a.x.size == 1000
    assert not np.array_equal(a.x, city_layout(1000, seed=4).x)
    r = np.hypot(a.x, a.y)
    assert np.all(np.diff(r) >= 0)  # cell ids count from the centre outwards


def test_the_default_demo_city_is_unchanged(tmp_path: Path) -> None:
    """The grid city of scripts/demo.sh, byte for byte as before the real-scale city was added
    (digest of 300 persons × 3 days: persons, timestamps, cells, and the cell and zoning files)."""
    files = generate_city(tmp_path, persons=300, seed=1, days=3)
    table = pq.read_table(files.events)
    h = hashlib.sha256()
    h.update(table["person"].to_numpy().tobytes())
    h.update(table["timestamp"].to_numpy().astype("int64").tobytes())
    h.update("\n".join(table["cell_id"].to_pylist()).encode())
    for path in (files.cells, files.districts, files.sectors):
        h.update(Path(path).read_bytes())
    assert (table.num_rows, h.hexdigest()) == (
        7514, "a564ac02fee9a8a1deb1e1575f9c5d2c438dcab71b9a054955567957a9394da1")
