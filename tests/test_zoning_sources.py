"""Zonings from GeoJSON polygons and square grids (dpflows.zoning_sources), on the real 'small'
dataset (40 cells: row r = i // 8 at latitude 40.0 + 0.01 r, column q = i % 8 at longitude
-74.0 + 0.01 q), stored through the real Service and SQLite ledger, then queried."""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import shapely
from shapely.geometry import Point, shape

from dpflows.aggregates import AggregateStore
from dpflows.budget import Epsilon
from dpflows.errors import InvalidData, InvalidInput
from dpflows.ledger.sqlite import SqliteLedger
from dpflows.queries import make_spec
from dpflows.service import Catalog, QueryRequest, Service
from dpflows.zoning_sources import LocalProjection, add_zoning, grid_zoning, read_geojson, zoning_from_geojson


@pytest.fixture
def service(data_root: Path, tmp_path: Path):
    root = tmp_path / "root"
    shutil.copytree(data_root, root)
    svc = Service(AggregateStore(root), SqliteLedger(tmp_path / "ledger.db"))
    yield svc
    svc.ledger.close()


def lon(q: float) -> float:
    return -74.0 + 0.01 * q


def lat(r: float) -> float:
    return 40.0 + 0.01 * r


def box(q0: float, r0: float, q1: float, r1: float) -> list[list[float]]:
    """A closed counter-clockwise ring from column q0..q1 and row r0..r1 (fractions allowed)."""
    return [[lon(q0), lat(r0)], [lon(q1), lat(r0)], [lon(q1), lat(r1)], [lon(q0), lat(r1)], [lon(q0), lat(r0)]]


def feature(zone: Any, geometry: dict[str, Any] | None, **props: Any) -> dict[str, Any]:
    return {"type": "Feature", "properties": {"WARD": zone, **props}, "geometry": geometry}


def polygon(*rings: list[list[float]]) -> dict[str, Any]:
    return {"type": "Polygon", "coordinates": list(rings)}


def collection(*features: dict[str, Any]) -> dict[str, Any]:
    return {"type": "FeatureCollection", "features": list(features)}


def cell(r: int, q: int) -> str:
    return f"c{r * 8 + q:03d}"


# west: columns 0-3, every row; east: columns 4-6 of rows 0-2, as a MultiPolygon of two parts (4-5, 6);
# far: a polygon 300 km away, holding no cell. Outside every polygon: column 7 (all rows) and
# columns 4-6 of rows 3-4.
WARDS = collection(
    feature("west", polygon(box(-0.5, -0.5, 3.5, 4.5)), NAME="West ward"),
    feature("east", {"type": "MultiPolygon", "coordinates": [[box(3.5, -0.5, 5.4, 2.5)], [box(5.6, -0.5, 6.5, 2.5)]]}),
    feature("far", polygon([[-70.5, 40.0], [-70.4, 40.0], [-70.4, 40.1], [-70.5, 40.0]])),
)


def test_polygons_assign_known_cells_and_report_the_rest(service: Service) -> None:
    catalog = service.dataset("small").catalog
    built = zoning_from_geojson(WARDS, catalog, id_field="WARD", source="wards.geojson")
    assert {built.mapping[cell(r, q)] for r in range(5) for q in range(4)} == {"west"}
    assert {built.mapping[cell(r, q)] for r in range(3) for q in range(4, 7)} == {"east"}
    outside = {c.cell_id: c for c in built.assigned_to_nearest}
    expected_outside = {cell(r, 7) for r in range(5)} | {cell(r, q) for r in (3, 4) for q in range(4, 7)}
    assert set(outside) == expected_outside
    # column 7 of rows 0-2 is half a column east of 'east' (0.005° of longitude at 40°N ≈ 0.426 km);
    # cell (4, 4) half a column from 'west' but a row and a half from 'east'; (3, 6) half a row
    # (0.556 km) north of 'east'
    assert outside[cell(0, 7)].zone_id == "east" and outside[cell(0, 7)].distance_km == pytest.approx(0.426, abs=0.002)
    assert outside[cell(4, 7)].zone_id == "east"  # 2 rows north of east, 3.5 columns east of west
    assert outside[cell(4, 4)].zone_id == "west" and outside[cell(4, 4)].distance_km == pytest.approx(0.426, abs=0.002)
    assert outside[cell(3, 6)].zone_id == "east" and outside[cell(3, 6)].distance_km == pytest.approx(0.556, abs=0.002)
    assert built.empty_polygons == ("far",)
    # stored geometry: the zones' polygons only, named by zone_id whatever the id field was called
    assert [f["properties"] for f in built.geometry["features"]] == [{"zone_id": "west"}, {"zone_id": "east"}]
    assert built.geometry["features"][1]["geometry"] == WARDS["features"][1]["geometry"]


def test_a_polygon_zoning_is_stored_served_and_queryable(service: Service) -> None:
    added = add_zoning(service, "small", "wards", geojson=WARDS, id_field="WARD", source="wards.geojson")
    assert (added.name, added.zones, added.coarse, added.method) == ("wards", 2, False, "geojson")
    assert {c["cell_id"] for c in added.assigned_to_nearest} >= {cell(0, 7)} and added.empty_polygons == ["far"]
    stored = json.loads((service.dataset("small").path / "zonings" / "wards.json").read_text())
    assert stored["zones"][cell(2, 5)] == "east" and len(stored["geometry"]["features"]) == 2
    doc = Catalog(service.store).zoning("small", "wards")
    assert [(z["zone_id"], z["cells"]) for z in doc["zones"]] == [("east", 9 + 8), ("west", 20 + 3)]
    assert doc["geometry"]["features"][0]["properties"] == {"zone_id": "west"}
    # a fresh process loads it from disk like any zoning, and answers over exactly its zones
    fresh = Service(AggregateStore(service.store.root), service.ledger)
    planner, _ = fresh.create_client("p", "planner")
    fresh.set_cap("small", Epsilon.parse("1"), client_id=planner.id, window=None)
    fresh.set_cap("small", Epsilon.parse("1"), client_id=None, window=None)
    spec = make_spec("flows", dataset="small", zoning="wards", start=dt.date(2024, 3, 4), end=dt.date(2024, 3, 11))
    answer = fresh.answer(QueryRequest(spec, epsilon=Epsilon.parse("0.5")), planner)
    assert {(v["origin"], v["destination"]) for v in answer.values} == {
        (a, b) for a in ("east", "west") for b in ("east", "west")}


def test_holes_shared_edges_and_coarse(service: Service) -> None:
    catalog = service.dataset("small").catalog
    i = catalog.index[cell(2, 2)]
    edge = float(catalog.lon[catalog.index[cell(0, 4)]])  # the exact longitude of column 4's cells
    west_of_edge = [[lon(-0.5), lat(-0.5)], [edge, lat(-0.5)], [edge, lat(4.5)], [lon(-0.5), lat(4.5)],
                    [lon(-0.5), lat(-0.5)]]
    doc = collection(
        # columns 0-4 with a hole around cell (2, 2), where an island sits (later in the file)
        feature("ring", polygon(west_of_edge, box(1.5, 1.5, 2.5, 2.5)[::-1])),
        feature("rest", polygon([[edge, lat(-0.5)], [lon(7.5), lat(-0.5)], [lon(7.5), lat(4.5)], [edge, lat(4.5)],
                                 [edge, lat(-0.5)]])),
        feature("island", polygon(box(1.5, 1.5, 2.5, 2.5))),
    )
    built = zoning_from_geojson(doc, catalog, id_field="WARD")
    assert built.mapping[catalog.cell_ids[i]] == "island"  # in the hole: not the ring's
    # column 4 lies exactly on the edge shared by 'ring' and 'rest': the first feature in file order
    assert {built.mapping[cell(r, 4)] for r in range(5)} == {"ring"}
    assert {built.mapping[cell(r, 5)] for r in range(5)} == {"rest"} and not built.assigned_to_nearest
    with pytest.raises(InvalidData, match="marked coarse but 1 zones hold fewer than 10 cells") as exc:
        add_zoning(service, "small", "holes", geojson=doc, id_field="WARD", coarse=True, min_cells_per_zone=10)
    assert exc.value.field == "coarse"
    with pytest.raises(InvalidInput, match="below the server's minimum of 10 cells per zone") as exc:
        add_zoning(service, "small", "holes", geojson=doc, id_field="WARD", coarse=True, min_cells_per_zone=1)
    added = add_zoning(service, "small", "holes", geojson=doc, id_field="WARD")
    assert not added.coarse and added.zones == 3


def test_grid_zones_hold_their_cells_and_only_nonempty_squares(service: Service) -> None:
    catalog = service.dataset("small").catalog
    built = grid_zoning(catalog, 1.0)
    # 8 columns 0.01° apart (0.853 km at 40°N) and 5 rows 0.01° apart (1.112 km): 6 × 5 squares
    # hold cells; zone ids are G{row}_{col} counted from the catalog's south-west corner
    zones = set(built.mapping.values())
    assert len(zones) == 30 and built.mapping[cell(0, 0)] == "G0000_0000"
    assert built.mapping[cell(4, 7)] == "G0004_0005" and built.mapping[cell(2, 3)] == "G0002_0002"
    squares = {f["properties"]["zone_id"]: shape(f["geometry"]) for f in built.geometry["features"]}
    assert set(squares) == zones  # only squares holding a cell are zones, and each has its square
    for i, c in enumerate(catalog.cell_ids):
        assert squares[built.mapping[c]].buffer(1e-7).covers(Point(catalog.lon[i], catalog.lat[i]))
    proj = LocalProjection.of_catalog(catalog)
    x, y = proj.forward(*np.asarray(squares["G0001_0001"].exterior.coords).T)
    assert np.ptp(x) == pytest.approx(1.0, abs=1e-4) and np.ptp(y) == pytest.approx(1.0, abs=1e-4)
    assert shapely.is_ccw(squares["G0001_0001"].exterior)  # RFC 7946: exterior rings counter-clockwise
    assert set(grid_zoning(catalog, 50).mapping.values()) == {"G0000_0000"}
    added = add_zoning(service, "small", "grid2", grid_km=2.0)
    assert added.method == "grid" and not added.coarse and added.zones == 9  # 3 × 3 squares of 2 km
    # 5 km: columns 0-5 and 6-7 of the one row of squares, 30 and 10 cells: coarse at the server's minimum (10)
    added = add_zoning(service, "small", "grid5", grid_km=5.0, coarse=True)
    assert added.coarse and added.zones == 2
    for bad in (0, -1.0, float("nan"), float("inf")):
        with pytest.raises(InvalidInput, match="must be a positive number of kilometres") as exc:
            grid_zoning(catalog, bad)
        assert exc.value.field == "grid_km"


@pytest.mark.parametrize(("doc", "field", "words"), [
    ({"type": "Feature", "geometry": None}, "geojson", ["expected a GeoJSON FeatureCollection", "'Feature'"]),
    (collection(), "geojson", ["no features"]),
    (collection(feature("a", polygon(box(0, 0, 1, 1))), {"type": "Polygon"}), "geojson",
     ["not GeoJSON Features", "feature 1"]),
    (collection(feature("a", polygon(box(0, 0, 1, 1))), feature(None, polygon(box(1, 1, 2, 2)), NAME="b")), "id_field",
     ["no value for id field 'WARD'", "feature 1", "['NAME', 'WARD']", "choose an id field"]),
    (collection(feature("a", polygon(box(0, 0, 1, 1))), feature("a", polygon(box(1, 1, 2, 2)))), "id_field",
     ["not unique", "'a' (features 0 and 1)", "MultiPolygon"]),
    (collection(feature("a", polygon(box(0, 0, 1, 1))), feature("b", {"type": "Point", "coordinates": [-74, 40]})),
     "geojson", ["not Polygon or MultiPolygon", "feature 1 ('b'): 'Point'"]),
    (collection(feature("a", None)), "geojson", ["feature 0 ('a'): None"]),
    (collection(feature("a", polygon([[-74.0, 40.0], [-73.9, 40.0]]))), "geojson",
     ["malformed coordinates", "feature 0 ('a')", "at least 4"]),
    (collection(feature("a", polygon([[583000, 4428000], [584000, 4428000], [584000, 4429000], [583000, 4428000]]))),
     "geojson", ["not longitude/latitude", "EPSG:4326"]),
    (collection(feature("bowtie", polygon([[lon(0), lat(0)], [lon(2), lat(2)], [lon(2), lat(0)], [lon(0), lat(2)],
                                           [lon(0), lat(0)]]))), "geojson",
     ["not valid", "feature 0 ('bowtie'): Self-intersection", "Fix geometries"]),
    (collection(feature("a", polygon([[lat(0), lon(0)], [lat(2), lon(0)], [lat(2), lon(2)], [lat(0), lon(0)]]))),
     "geojson", ["none of the dataset's 40 cells lies inside any polygon", "[longitude, latitude]"]),
])
def test_bad_polygons_are_refused_naming_the_file_the_field_and_the_fix(
        service: Service, doc: dict[str, Any], field: str, words: list[str]) -> None:
    with pytest.raises(InvalidInput) as exc:
        add_zoning(service, "small", "bad", geojson=doc, id_field="WARD", source="wards.geojson")
    assert exc.value.message.startswith("wards.geojson: ") and exc.value.field == field
    for word in words:
        assert word in exc.value.message, exc.value.message
    assert not (service.dataset("small").path / "zonings" / "bad.json").exists()


def test_forms_and_files(service: Service, tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="id_field is required with polygons") as exc:
        add_zoning(service, "small", "x", geojson=WARDS)
    assert exc.value.field == "id_field"
    with pytest.raises(InvalidInput, match="exactly one of csv"):
        add_zoning(service, "small", "x", csv="cell_id,zone_id\n", grid_km=1.0)
    with pytest.raises(InvalidInput, match="drop geojson and id_field"):
        add_zoning(service, "small", "x", geojson=WARDS, grid_km=1.0)
    with pytest.raises(InvalidInput, match="drop id_field"):
        add_zoning(service, "small", "x", csv="cell_id,zone_id\n", id_field="WARD")
    broken = tmp_path / "wards.geojson"
    broken.write_text('{"type": "FeatureCollection",\n "features": [}')
    with pytest.raises(InvalidData, match=r"wards.geojson: not valid JSON \(line 2, column 15"):
        read_geojson(broken)
    with pytest.raises(InvalidData, match=r"nothere\.geojson: file not found"):
        read_geojson(tmp_path / "nothere.geojson")
    broken.write_text("[1, 2]")
    with pytest.raises(InvalidData, match="got a JSON list"):
        read_geojson(broken)
