"""GeoJSON for GIS tools: released answers drawn on public geography.

Pure functions, no I/O and no privacy cost: they only re-shape values already released (and
their error bounds) onto the public zoning, which is post-processing. Coordinates follow
GeoJSON (RFC 7946): ``[longitude, latitude]`` in WGS 84.

The zoning is the document of ``GET /v1/datasets/<dataset>/zonings/<zoning>`` (built by
``dpflows.service.Catalog.zoning``): ``zones`` as ``[{zone_id, cells, centroid: [lat, lon]}]``,
``cells`` as ``[{cell_id, lat, lon, zone_id}]`` and ``geometry`` (GeoJSON polygons or null).
Where a zone is drawn, in order of preference:

1. the centroid the service publishes for the zone (``zones[].centroid``, note ``[lat, lon]``),
2. the area-weighted centroid of the zone's polygon(s) in the zoning's GeoJSON geometry,
3. the mean position of the zone's cells (the cell catalog is public, design §1).

Flows become LineStrings from the origin's centroid to the destination's (a flow inside one
zone becomes a Point); presence becomes the zone's polygon when the zoning has geometry, else
a Point at its centroid. Every feature carries ``count``, ``error_bound_95``, ``lower`` and
``upper`` so a map never shows a noisy number without its uncertainty.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # only for type hints: geo.py itself needs nothing but dicts
    from dpflows.service import Answer

LonLat = tuple[float, float]
#: Feature properties that may name the zone of a polygon in a zoning's geometry, in order.
ZONE_PROPERTIES = ("zone_id", "zone", "id", "name")


def interval(count: float, error_bound: float) -> tuple[float, float]:
    """The ± error-bound interval of one released count; true counts are never negative."""
    return max(count - error_bound, 0.0), count + error_bound


def feature_zone_id(feature: Mapping[str, Any]) -> str | None:
    """The zone a GeoJSON feature stands for: a known property, else the feature's id."""
    props = feature.get("properties") or {}
    for key in ZONE_PROPERTIES:
        if props.get(key) is not None:
            return str(props[key])
    return None if feature.get("id") is None else str(feature["id"])


def _ring_centroid(ring: Sequence[Sequence[float]]) -> tuple[float, float, float]:
    """Signed area and area-weighted centroid of one linear ring (shoelace formula)."""
    area = cx = cy = 0.0
    for (x0, y0, *_), (x1, y1, *_) in itertools.pairwise(ring):
        cross = x0 * y1 - x1 * y0
        area += cross
        cx += (x0 + x1) * cross
        cy += (y0 + y1) * cross
    area /= 2.0
    if area == 0.0:
        n = max(len(ring), 1)
        return 0.0, sum(p[0] for p in ring) / n, sum(p[1] for p in ring) / n
    return area, cx / (6.0 * area), cy / (6.0 * area)


def geometry_centroid(geometry: Mapping[str, Any]) -> LonLat | None:
    """Area-weighted centroid of a Polygon or MultiPolygon (holes subtract); a Point is itself."""
    kind = geometry.get("type")
    coords = geometry.get("coordinates")
    if kind == "Point" and coords:
        return float(coords[0]), float(coords[1])
    if kind == "Polygon":
        polygons = [coords]
    elif kind == "MultiPolygon":
        polygons = list(coords or [])
    else:
        return None
    total = sx = sy = 0.0
    fallback: list[tuple[float, float]] = []
    for polygon in polygons:
        for i, ring in enumerate(polygon or []):
            area, x, y = _ring_centroid(ring)
            area = abs(area) if i == 0 else -abs(area)  # outer ring adds, holes subtract
            total += area
            sx += x * area
            sy += y * area
            fallback.append((x, y))
    if total:
        return sx / total, sy / total
    if fallback:
        return sum(p[0] for p in fallback) / len(fallback), sum(p[1] for p in fallback) / len(fallback)
    return None


def centroids_from_geometry(geometry: Mapping[str, Any]) -> dict[str, LonLat]:
    """Zone centroids from a zoning's FeatureCollection of zone polygons."""
    out: dict[str, LonLat] = {}
    for feature in geometry.get("features") or []:
        zone = feature_zone_id(feature)
        centre = geometry_centroid(feature.get("geometry") or {})
        if zone is not None and centre is not None:
            out[zone] = centre
    return out


def centroids_from_cells(cells: Iterable[Mapping[str, Any]]) -> dict[str, LonLat]:
    """Zone centroids as the mean position of each zone's cells (rows with zone_id, lat, lon)."""
    sums: dict[str, list[float]] = {}
    for cell in cells:
        zone = cell["zone_id"] if "zone_id" in cell else cell["zone"]
        acc = sums.setdefault(str(zone), [0.0, 0.0, 0.0])
        acc[0] += float(cell["lon"])
        acc[1] += float(cell["lat"])
        acc[2] += 1.0
    return {zone: (lon / n, lat / n) for zone, (lon, lat, n) in sums.items()}


def zone_centroids(zoning: Mapping[str, Any]) -> dict[str, LonLat]:
    """Zone id -> (lon, lat): published centroids, else polygon centroids, else cell means."""
    out: dict[str, LonLat] = {}
    if zoning.get("cells"):
        out.update(centroids_from_cells(zoning["cells"]))
    if zoning.get("geometry"):
        out.update(centroids_from_geometry(zoning["geometry"]))
    for zone in zoning.get("zones") or []:
        if isinstance(zone, Mapping) and zone.get("centroid"):
            lat, lon = zone["centroid"][:2]
            out[str(zone["zone_id"])] = (float(lon), float(lat))
    return out


def zone_polygons(zoning: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Zone id -> Polygon/MultiPolygon geometry, from the zoning's geometry when it has one."""
    out: dict[str, dict[str, Any]] = {}
    for feature in (zoning.get("geometry") or {}).get("features") or []:
        zone = feature_zone_id(feature)
        geom = feature.get("geometry") or {}
        if zone is not None and geom.get("type") in ("Polygon", "MultiPolygon"):
            out[zone] = dict(geom)
    return out


def _number_props(count: float, error_bound: float) -> dict[str, Any]:
    lower, upper = interval(count, error_bound)
    return {"count": count, "error_bound_95": error_bound, "lower": lower, "upper": upper}


def _collection(features: list[dict[str, Any]], metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    doc: dict[str, Any] = {"type": "FeatureCollection", "features": features}
    if metadata:
        doc["dpflows"] = dict(metadata)  # foreign member (RFC 7946 §6.1): what was released, at what cost
    return doc


def flows_geojson(
    values: Iterable[Mapping[str, Any]],
    centroids: Mapping[str, LonLat],
    error_bound_95: float,
    *,
    min_count: float | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Flows as LineStrings origin → destination centroid (a Point inside one zone).

    ``min_count`` drops rows whose released count is below it (e.g. ``error_bound_95`` to keep
    flows distinguishable from noise); filtering released values costs nothing.
    Zones without a known centroid raise ``KeyError`` naming the zone.
    """
    keys, counts = _columns(values)
    return _collection(flow_features(keys.get("origin", []), keys.get("destination", []), counts, centroids,
                                     error_bound_95, min_count=min_count), metadata)


def flow_features(origins: Sequence[Any], destinations: Sequence[Any], counts: Sequence[float],
                  centroids: Mapping[str, LonLat], error_bound_95: float, *,
                  min_count: float | None = None) -> list[dict[str, Any]]:
    """The features of `flows_geojson`, from an answer's columns (origin, destination, count)."""
    features = []
    for origin_key, dest_key, count in zip(origins, destinations, counts, strict=True):
        if min_count is not None and count < min_count:
            continue
        origin, dest = str(origin_key), str(dest_key)
        for zone in (origin, dest):
            if zone not in centroids:
                raise KeyError(f"zone {zone!r} has no centroid; pass the zoning's geometry, cells or centroids")
        a, b = centroids[origin], centroids[dest]
        if origin == dest:
            geometry: dict[str, Any] = {"type": "Point", "coordinates": [a[0], a[1]]}
        else:
            geometry = {"type": "LineString", "coordinates": [[a[0], a[1]], [b[0], b[1]]]}
        props = {"origin": origin, "destination": dest, "intrazonal": origin == dest,
                 **_number_props(count, error_bound_95)}
        features.append({"type": "Feature", "geometry": geometry, "properties": props})
    return features


def presence_geojson(
    values: Iterable[Mapping[str, Any]],
    zoning: Mapping[str, Any],
    error_bound_95: float,
    *,
    hour: int | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Presence rows (zone, hour, count) as zone polygons, else Points at zone centroids.

    One feature per released row; ``hour`` keeps only that hour of day. Rows are not summed
    here because a sum of noisy values has a different error bound than each value.
    """
    keys, counts = _columns(values)
    return _collection(zone_features(keys, counts, zoning, error_bound_95, hour=hour), metadata)


def zone_features(keys: Mapping[str, Sequence[Any]], counts: Sequence[float], zoning: Mapping[str, Any],
                  error_bound_95: float, *, hour: int | None = None) -> list[dict[str, Any]]:
    """The features of `presence_geojson`, from an answer's columns: ``zone`` and any other key
    columns (hour, window: kept as properties), and the counts."""
    polygons = zone_polygons(zoning)
    centroids = zone_centroids(zoning)
    others = [name for name in keys if name not in ("zone", "count")]
    hours = keys.get("hour")
    features = []
    for i, (zone_key, count) in enumerate(zip(keys.get("zone", []), counts, strict=True)):
        if hour is not None and (hours is None or hours[i] != hour):
            continue
        zone = str(zone_key)
        if zone in polygons:
            geometry = polygons[zone]
        elif zone in centroids:
            lon, lat = centroids[zone]
            geometry = {"type": "Point", "coordinates": [lon, lat]}
        else:
            raise KeyError(f"zone {zone!r} has no geometry or centroid; pass the zoning's geometry, cells or centroids")
        props = {"zone": zone, **{name: keys[name][i] for name in others}, **_number_props(count, error_bound_95)}
        features.append({"type": "Feature", "geometry": geometry, "properties": props})
    return features


def _columns(values: Iterable[Mapping[str, Any]]) -> tuple[dict[str, list[Any]], list[Any]]:
    """Rows ({key fields..., count}) as key columns and counts."""
    rows = list(values)
    names = [name for name in (rows[0] if rows else {}) if name != "count"]
    return {name: [row.get(name) for row in rows] for name in names}, [row["count"] for row in rows]


def answer_geojson(
    kind: str,
    values: Iterable[Mapping[str, Any]],
    zoning: Mapping[str, Any],
    error_bound_95: float,
    *,
    metadata: Mapping[str, Any] | None = None,
    **options: Any,
) -> dict[str, Any]:
    """GeoJSON for a flows answer (lines), or one keyed by zone (presence, in/outflows, residents: zones);
    patterns (weekday × hour) and commuting per window have no single geography per value here."""
    keys, counts = _columns(values)
    return columns_geojson(kind, keys, counts, zoning, error_bound_95, metadata=metadata, **options)


def columns_geojson(
    kind: str,
    keys: Mapping[str, Sequence[Any]],
    counts: Sequence[float],
    zoning: Mapping[str, Any],
    error_bound_95: float,
    *,
    metadata: Mapping[str, Any] | None = None,
    **options: Any,
) -> dict[str, Any]:
    """`answer_geojson` from an answer's columns (key columns by field, counts in key order)."""
    if kind == "flows":
        return _collection(flow_features(keys.get("origin", []), keys.get("destination", []), counts,
                                         zone_centroids(zoning), error_bound_95, **options), metadata)
    if kind in ZONE_KINDS:
        return _collection(zone_features(keys, counts, zoning, error_bound_95, **options), metadata)
    raise ValueError(f"kind={kind!r} has no map: only flows and answers keyed by zone ({', '.join(ZONE_KINDS)}) do")


#: answers with one zone per value, drawn as zone polygons (or centroid points)
ZONE_KINDS = ("presence", "inflows", "outflows", "residents")


def service_answer_geojson(answer: Answer, zoning: Mapping[str, Any], **options: Any) -> dict[str, Any]:
    """GeoJSON for a ``Service.answer`` result and its zoning document, for ``?format=geojson``.

    Only released values, their error bound and public geography go in; the metadata says what
    the release cost, so a map file never loses its caveats.
    """
    content = answer.content
    return columns_geojson(answer.spec.kind, content.keys, content.counts, zoning, content.error_bound_95,
                           metadata=answer_geojson_metadata(answer), **options)


def answer_geojson_metadata(answer: Answer) -> dict[str, Any]:
    """The ``dpflows`` member of an answer's GeoJSON: what was released, at what cost, how accurate."""
    return {
        "answer_id": answer.answer_id,
        "query": answer.spec.canonical(),
        f"{answer.charged.unit}_charged": answer.charged.to_json(),
        "budget_remaining": answer.budget_remaining.to_json(),
        "accounting": answer.accounting,
        "privacy_unit": answer.content.privacy_unit,
        "error_bound_95": answer.content.error_bound_95,
        "confidence": answer.confidence,
        "reused": answer.reused,
        "postprocessing": list(answer.content.postprocessing),
    }
