"""GeoJSON output: centroids from polygons or cells, flows as lines, presence as polygons or points."""

from __future__ import annotations

import json

import pytest

from dpflows import geo


def square(x0: float, y0: float, size: float = 1.0) -> list[list[float]]:
    return [[x0, y0], [x0 + size, y0], [x0 + size, y0 + size], [x0, y0 + size], [x0, y0]]


def polygon(points: list[list[float]]) -> dict:
    return {"type": "Polygon", "coordinates": [points]}


ZONING = {
    "name": "two",
    "geometry": {"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"zone_id": "a"}, "geometry": polygon(square(0, 0))},
        {"type": "Feature", "id": "b", "properties": {}, "geometry": polygon(square(2, 0, 2))},
    ]},
}


def test_polygon_centroid_is_area_weighted_and_holes_subtract() -> None:
    assert geo.geometry_centroid({"type": "Polygon", "coordinates": [square(0, 0, 2)]}) == pytest.approx((1.0, 1.0))
    # an L-shape as a square with a hole in one quadrant: centroid moves away from the hole
    holed = {"type": "Polygon", "coordinates": [square(0, 0, 2), square(1, 1)[::-1]]}
    cx, cy = geo.geometry_centroid(holed)
    assert cx == pytest.approx(5 / 6) and cy == pytest.approx(5 / 6)
    multi = {"type": "MultiPolygon", "coordinates": [[square(0, 0)], [square(3, 0)]]}
    assert geo.geometry_centroid(multi) == pytest.approx((2.0, 0.5))
    assert geo.geometry_centroid({"type": "LineString", "coordinates": [[0, 0], [1, 1]]}) is None


def test_centroid_sources_in_order_of_preference() -> None:
    cells = [{"zone_id": "a", "lon": 0.0, "lat": 0.0}, {"zone_id": "a", "lon": 0.2, "lat": 0.4},
             {"zone": "c", "lon": 9.0, "lat": 9.0}]
    assert geo.centroids_from_cells(cells) == {"a": pytest.approx((0.1, 0.2)), "c": (9.0, 9.0)}
    both = geo.zone_centroids({**ZONING, "cells": cells})
    assert both["a"] == pytest.approx((0.5, 0.5)) and both["b"] == pytest.approx((3.0, 1.0))
    assert both["c"] == (9.0, 9.0)  # no polygon for c: its cells' mean
    published = {**ZONING, "zones": [{"zone_id": "a", "cells": 2, "centroid": [8.0, 7.0]}]}  # [lat, lon]
    assert geo.zone_centroids(published)["a"] == (7.0, 8.0)


def test_flows_are_lines_between_centroids_with_their_interval() -> None:
    values = [
        {"origin": "a", "destination": "b", "count": 30},
        {"origin": "b", "destination": "a", "count": -4},
        {"origin": "a", "destination": "a", "count": 12},
    ]
    doc = geo.answer_geojson("flows", values, ZONING, 10.5, metadata={"answer_id": "x"})
    assert doc["type"] == "FeatureCollection" and doc["dpflows"] == {"answer_id": "x"}
    line, back, inside = doc["features"]
    assert line["geometry"] == {"type": "LineString", "coordinates": [[0.5, 0.5], [3.0, 1.0]]}
    assert line["properties"] == {"origin": "a", "destination": "b", "intrazonal": False, "count": 30,
                                  "error_bound_95": 10.5, "lower": 19.5, "upper": 40.5}
    assert back["properties"]["lower"] == 0.0 and back["properties"]["upper"] == 6.5  # true counts are >= 0
    assert inside["geometry"]["type"] == "Point" and inside["properties"]["intrazonal"]
    kept = geo.flows_geojson(values, geo.zone_centroids(ZONING), 10.5, min_count=10.5)
    assert [f["properties"]["count"] for f in kept["features"]] == [30, 12]
    json.dumps(doc)  # plain JSON, ready for a file


def test_presence_uses_polygons_else_points_and_filters_hours() -> None:
    zoning = {**ZONING, "cells": [{"zone_id": "c", "lon": 5.0, "lat": 6.0}]}
    values = [{"zone": z, "hour": h, "count": 10 * h} for z in ("a", "b", "c") for h in (7, 8)]
    doc = geo.presence_geojson(values, zoning, 3.0, hour=8)
    kinds = {f["properties"]["zone"]: f["geometry"]["type"] for f in doc["features"]}
    assert kinds == {"a": "Polygon", "b": "Polygon", "c": "Point"}
    assert all(f["properties"]["hour"] == 8 for f in doc["features"])
    with pytest.raises(KeyError, match="'zz'"):
        geo.presence_geojson([{"zone": "zz", "hour": 1, "count": 1}], zoning, 3.0)
    with pytest.raises(ValueError, match="patterns"):
        geo.answer_geojson("patterns", [], zoning, 1.0)


def test_service_answer_on_the_api_zoning_document(service, planner) -> None:
    import datetime as dt

    from dpflows.budget import Epsilon
    from dpflows.queries import make_spec
    from dpflows.service import Catalog, QueryRequest

    zoning = Catalog(service.store).zoning("small", "districts")
    # d0 holds cells c000..c004: lat 40.0, lon -74.00..-73.96
    assert geo.zone_centroids(zoning)["d0"] == pytest.approx((-73.98, 40.0))
    d0 = dt.date(2024, 3, 4)
    spec = make_spec("presence", dataset="small", zoning="districts", start=d0, end=d0 + dt.timedelta(days=7),
                     hours=[8, 10])
    answer = service.answer(QueryRequest(spec, epsilon=Epsilon.parse("0.5")), planner)
    doc = geo.service_answer_geojson(answer, zoning, hour=9)
    assert len(doc["features"]) == 8 and {f["properties"]["hour"] for f in doc["features"]} == {9}
    assert doc["features"][0]["geometry"]["type"] == "Point"  # 'districts' has no polygons: centroids
    assert doc["dpflows"]["epsilon_charged"] == 0.5 and doc["dpflows"]["reused"] is False
    by_zone = {f["properties"]["zone"]: f["properties"]["count"] for f in doc["features"]}
    assert by_zone == {v["zone"]: v["count"] for v in answer.values if v["hour"] == 9}
    flows = [{"origin": "d0", "destination": "d7", "count": 5}]
    assert geo.answer_geojson("flows", flows, zoning, 1.0)["features"][0]["geometry"]["type"] == "LineString"
