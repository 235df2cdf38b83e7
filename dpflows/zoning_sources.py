"""Zonings made from what planners hold: GeoJSON polygons, or a regular square grid.

Everything here is public geography (design §1): the cell catalog, the polygons and the grid.
Nothing reads secret data, so the cell ids in a report (cells outside every polygon) may be
shown to the admin, printed and returned over HTTP.

Three sources of a zoning, one use case (:func:`add_zoning`), called by the CLI
(``dpflows admin add-zoning``) and the admin endpoint alike:

- ``csv``: ``cell_id,zone_id`` rows, as before (a GeoJSON may come along for maps only);
- ``geojson`` + ``id_field``: a FeatureCollection of Polygon/MultiPolygon zones. Each cell goes
  to the polygon that covers it (boundary included; where polygons overlap or share the edge a
  cell lies on, the first such feature in file order wins); a cell outside every polygon goes to
  the nearest polygon, and is reported with the distance. Polygons that end up with no cell are
  not zones (a zone's count would always be zero) and are reported too. The stored GeoJSON keeps
  the zones' polygons only, each with one property, ``zone_id``, so that maps (``dpflows.geo``,
  the planner page) find them whatever the id field was called;
- ``grid_km``: a square grid of side ``grid_km`` kilometres over the catalog's extent, anchored
  at its south-west corner; zone ``G{row}_{col}`` (row counted northwards, column eastwards,
  zero-padded to 4 digits). Only squares holding at least one cell are zones: the domain is
  derived from the cell catalog, which is public, so it reveals nothing about persons.

Distances use an equirectangular projection about the catalog's mid-latitude (error well under
1% across a city); containment is unchanged by it (the projection is affine).
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dpflows.cells import CellCatalog
from dpflows.errors import InvalidData, InvalidInput

if TYPE_CHECKING:
    from dpflows.ledger.base import Client
    from dpflows.service import Service

#: Mean Earth radius (IUGG), km.
EARTH_RADIUS_KM = 6371.0088
#: At most this many problem features are named in one error message.
_NAMED = 5


@dataclass(frozen=True)
class LocalProjection:
    """Equirectangular projection to kilometres east/north of (lon0, lat0), scaled at lat_ref."""

    lon0: float
    lat0: float
    lat_ref: float

    @classmethod
    def of_catalog(cls, catalog: CellCatalog) -> LocalProjection:
        """Anchored at the catalog's south-west corner, true to scale at its mid-latitude."""
        return cls(float(catalog.lon.min()), float(catalog.lat.min()),
                   float((catalog.lat.min() + catalog.lat.max()) / 2))

    @property
    def _kx(self) -> float:
        return math.radians(1.0) * EARTH_RADIUS_KM * math.cos(math.radians(self.lat_ref))

    @property
    def _ky(self) -> float:
        return math.radians(1.0) * EARTH_RADIUS_KM

    def forward(self, lon: np.ndarray, lat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return (np.asarray(lon) - self.lon0) * self._kx, (np.asarray(lat) - self.lat0) * self._ky

    def inverse(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.lon0 + np.asarray(x) / self._kx, self.lat0 + np.asarray(y) / self._ky


@dataclass(frozen=True)
class NearestCell:
    """A cell outside every polygon, assigned to the nearest one (cells are public)."""

    cell_id: str
    zone_id: str
    distance_km: float

    def to_json(self) -> dict[str, Any]:
        return {"cell_id": self.cell_id, "zone_id": self.zone_id, "distance_km": round(self.distance_km, 3)}


@dataclass(frozen=True)
class BuiltZoning:
    """A cell -> zone mapping made from a public source, with what an admin should know about it."""

    method: str
    mapping: dict[str, str]
    geometry: dict[str, Any] | None
    assigned_to_nearest: tuple[NearestCell, ...] = ()
    empty_polygons: tuple[str, ...] = ()

    def csv_text(self) -> str:
        """The mapping as the ``cell_id,zone_id`` CSV that ``Service.add_zoning`` loads and checks."""
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["cell_id", "zone_id"])
        writer.writerows(self.mapping.items())
        return buf.getvalue()


@dataclass(frozen=True)
class ZoningAdded:
    """What ``add_zoning`` made: the summary of the zoning, and the report of how cells were assigned."""

    name: str
    zones: int
    coarse: bool
    method: str
    assigned_to_nearest: list[dict[str, Any]] = field(default_factory=list)
    empty_polygons: list[str] = field(default_factory=list)


def read_geojson(path: str | Path) -> dict[str, Any]:
    """Read a GeoJSON file; errors name the file and, for bad JSON, the line and column."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InvalidData(f"{p.name}: file not found; give the path of a GeoJSON FeatureCollection",
                          field="geojson") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidData(f"{p.name}: cannot be read as UTF-8 text ({type(exc).__name__}); "
                          "export the zones as GeoJSON (UTF-8)", field="geojson") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidData(f"{p.name}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); "
                          "export the zones as GeoJSON", field="geojson") from None
    if not isinstance(doc, dict):
        raise InvalidData(f"{p.name}: expected a GeoJSON FeatureCollection object, got a JSON "
                          f"{type(doc).__name__}", field="geojson")
    return doc


def _label(i: int, zone: str | None = None) -> str:
    return f"feature {i}" if zone is None else f"feature {i} ({zone!r})"


def _names(items: list[str]) -> str:
    more = f" and {len(items) - _NAMED} more" if len(items) > _NAMED else ""
    return ", ".join(items[:_NAMED]) + more


def _zone_id(feature: dict[str, Any], id_field: str) -> str | None:
    props = feature.get("properties")
    value = props.get(id_field) if isinstance(props, dict) else None
    if value is None and id_field == "id":
        value = feature.get("id")  # a GeoJSON feature's own id member
    if value is None or isinstance(value, dict | list):
        return None
    text = str(value).strip()
    return text or None


def _polygon_features(doc: Any, id_field: str, source: str) -> tuple[list[str], list[dict[str, Any]]]:
    """Zone ids and Polygon/MultiPolygon geometries, in file order; every bad input named."""
    if not isinstance(doc, dict) or doc.get("type") != "FeatureCollection" or not isinstance(
            doc.get("features"), list):
        got = doc.get("type") if isinstance(doc, dict) else type(doc).__name__
        raise InvalidData(f"{source}: expected a GeoJSON FeatureCollection with a 'features' list, got type "
                          f"{got!r}; export the zones as a FeatureCollection (RFC 7946)", field="geojson")
    features = doc["features"]
    if not features:
        raise InvalidData(f"{source}: the FeatureCollection has no features; give one polygon per zone",
                          field="geojson")
    not_features = [_label(i) for i, f in enumerate(features) if not isinstance(f, dict) or f.get("type") != "Feature"]
    if not_features:
        raise InvalidData(f"{source}: {len(not_features)} entries of 'features' are not GeoJSON Features "
                          f"({_names(not_features)}); each must be {{\"type\": \"Feature\", ...}}", field="geojson")
    if not isinstance(id_field, str) or not id_field.strip():
        raise InvalidInput("id_field is empty; name the feature property that holds each zone's id",
                           field="id_field")
    ids = [_zone_id(f, id_field) for f in features]
    missing = [i for i, z in enumerate(ids) if z is None]
    if missing:
        props = sorted({str(k) for f in features if isinstance(f.get("properties"), dict) for k in f["properties"]})
        raise InvalidData(
            f"{source}: {len(missing)} of {len(features)} features have no value for id field {id_field!r} "
            f"({_names([_label(i) for i in missing])}); properties in the file: {props[:20]}; "
            "choose an id field every feature has, or fill it in", field="id_field")
    zone_ids = [z for z in ids if z is not None]
    first: dict[str, int] = {}
    dups: list[str] = []
    for i, z in enumerate(zone_ids):
        if z in first:
            dups.append(f"{z!r} (features {first[z]} and {i})")
        else:
            first[z] = i
    if dups:
        raise InvalidData(f"{source}: id field {id_field!r} is not unique: {_names(dups)}; choose a unique id "
                          "field, or merge each zone's parts into one MultiPolygon feature", field="id_field")
    geoms = [f.get("geometry") for f in features]
    wrong = [f"{_label(i, z)}: {g.get('type') if isinstance(g, dict) else None!r}"
             for i, (z, g) in enumerate(zip(zone_ids, geoms, strict=True))
             if not isinstance(g, dict) or g.get("type") not in ("Polygon", "MultiPolygon")]
    if wrong:
        raise InvalidData(f"{source}: {len(wrong)} features are not Polygon or MultiPolygon ({_names(wrong)}); "
                          "a zone must be an area that can hold cells: drop those features or give their "
                          "polygons", field="geojson")
    return zone_ids, [g for g in geoms if isinstance(g, dict)]


def _shapes(zone_ids: list[str], geoms: list[dict[str, Any]], source: str) -> Any:
    """Shapely polygons, checked: parseable, longitude/latitude degrees, valid."""
    import shapely
    from shapely.geometry import shape

    out = []
    bad: list[str] = []
    for i, (z, g) in enumerate(zip(zone_ids, geoms, strict=True)):
        try:
            geom = shape(g)
            if geom.is_empty:
                raise ValueError("empty")
            out.append(geom)
        except (ValueError, TypeError, IndexError, KeyError, AttributeError, shapely.errors.GEOSException) as exc:
            bad.append(f"{_label(i, z)}: {str(exc)[:80] or type(exc).__name__}")
    if bad:
        raise InvalidData(f"{source}: {len(bad)} features have malformed coordinates ({_names(bad)}); each "
                          "ring must be a closed list of at least 4 [longitude, latitude] positions", field="geojson")
    polys = np.asarray(out, dtype=object)
    bounds = shapely.bounds(polys)
    off = [f"{_label(i, z)} reaches ({bounds[i, 0]:.6g}, {bounds[i, 1]:.6g})"
           for i, z in enumerate(zone_ids)
           if not (-180 <= bounds[i, 0] <= bounds[i, 2] <= 180 and -90 <= bounds[i, 1] <= bounds[i, 3] <= 90)]
    if off:
        raise InvalidData(f"{source}: coordinates are not longitude/latitude degrees ({_names(off)}); "
                          "reproject the file to WGS 84 (EPSG:4326), e.g. ogr2ogr -t_srs EPSG:4326",
                          field="geojson")
    invalid = [f"{_label(i, z)}: {shapely.is_valid_reason(polys[i])}"
               for i, z in enumerate(zone_ids) if not shapely.is_valid(polys[i])]
    if invalid:
        raise InvalidData(f"{source}: {len(invalid)} polygons are not valid ({_names(invalid)}); fix them, e.g. "
                          "QGIS 'Fix geometries' or shapely.make_valid, and load the file again", field="geojson")
    return polys


def zoning_from_geojson(doc: Any, catalog: CellCatalog, *, id_field: str, source: str = "geojson") -> BuiltZoning:
    """Assign every catalog cell to the polygon covering it, else to the nearest polygon."""
    import shapely

    zone_ids, geoms = _polygon_features(doc, id_field, source)
    polys = _shapes(zone_ids, geoms, source)
    proj = LocalProjection.of_catalog(catalog)
    projected = shapely.transform(polys, lambda xy: np.column_stack(proj.forward(xy[:, 0], xy[:, 1])))
    points = shapely.points(*proj.forward(catalog.lon, catalog.lat))
    tree = shapely.STRtree(projected)
    n = len(catalog)
    none = len(zone_ids)
    owner = np.full(n, none, dtype=np.int64)
    cell_idx, poly_idx = tree.query(points, predicate="covered_by")
    np.minimum.at(owner, cell_idx, poly_idx)  # first feature in file order wins on shared edges and overlaps
    outside = np.flatnonzero(owner == none)
    if outside.size == n:
        raise InvalidData(
            f"{source}: none of the dataset's {n} cells lies inside any polygon; check that the polygons cover the "
            "dataset's area and that positions are [longitude, latitude] in WGS 84", field="geojson")
    nearest: list[NearestCell] = []
    if outside.size:
        (q_idx, p_idx), dist = tree.query_nearest(points[outside], return_distance=True, all_matches=True)
        best = np.full(outside.size, none, dtype=np.int64)
        np.minimum.at(best, q_idx, p_idx)  # equidistant: first in file order
        owner[outside] = best
        best_dist = np.zeros(outside.size)
        chosen = p_idx == best[q_idx]
        best_dist[q_idx[chosen]] = dist[chosen]
        nearest = [NearestCell(catalog.cell_ids[c], zone_ids[best[k]], float(best_dist[k]))
                   for k, c in enumerate(outside)]
    used = np.zeros(none, dtype=bool)
    used[owner] = True
    mapping = {c: zone_ids[owner[i]] for i, c in enumerate(catalog.cell_ids)}
    features = [{"type": "Feature", "properties": {"zone_id": z}, "geometry": geoms[i]}
                for i, z in enumerate(zone_ids) if used[i]]
    return BuiltZoning("geojson", mapping, {"type": "FeatureCollection", "features": features},
                       tuple(nearest), tuple(z for i, z in enumerate(zone_ids) if not used[i]))


def grid_zoning(catalog: CellCatalog, km: float) -> BuiltZoning:
    """Squares of side ``km`` over the catalog's extent; only squares holding a cell are zones."""
    if isinstance(km, bool) or not isinstance(km, int | float) or not math.isfinite(km) or km <= 0:
        raise InvalidInput(f"grid_km={km!r} must be a positive number of kilometres, e.g. 1.5", field="grid_km")
    proj = LocalProjection.of_catalog(catalog)
    x, y = proj.forward(catalog.lon, catalog.lat)
    col = np.floor(x / km).astype(np.int64)
    row = np.floor(y / km).astype(np.int64)
    width = max(4, len(str(int(max(row.max(), col.max())))))
    names = [f"G{r:0{width}d}_{c:0{width}d}" for r, c in zip(row.tolist(), col.tolist(), strict=True)]
    mapping = dict(zip(catalog.cell_ids, names, strict=True))
    squares = sorted(set(zip(row.tolist(), col.tolist(), names, strict=True)))
    features = []
    for r, c, name in squares:
        xs = np.asarray([c, c + 1, c + 1, c, c], dtype=np.float64) * km
        ys = np.asarray([r, r, r + 1, r + 1, r], dtype=np.float64) * km
        lon, lat = proj.inverse(xs, ys)  # counter-clockwise, as RFC 7946 asks of exterior rings
        ring = [[round(float(a), 7), round(float(b), 7)] for a, b in zip(lon, lat, strict=True)]
        features.append({"type": "Feature", "properties": {"zone_id": name},
                         "geometry": {"type": "Polygon", "coordinates": [ring]}})
    return BuiltZoning("grid", mapping, {"type": "FeatureCollection", "features": features})


def add_zoning(service: Service, dataset: str, name: str, *, csv: str | None = None,
               geojson: dict[str, Any] | None = None, id_field: str | None = None, grid_km: float | None = None,
               coarse: bool = False, min_cells_per_zone: int | None = None, source: str | None = None,
               by: Client | None = None) -> ZoningAdded:
    """Load a zoning from CSV, from polygons (``geojson`` + ``id_field``) or as a grid (``grid_km``).

    With ``csv``, ``geojson`` is optional and only drawn on maps (as before). The zoning is then
    checked and stored by ``Service.add_zoning`` (every cell in one zone, coarse zones big enough:
    ``min_cells_per_zone``, by default and at least the server's minimum; names never reused);
    ``source`` names the file in error messages.
    """
    if (csv is not None and grid_km is not None) or (csv is None and grid_km is None and geojson is None):
        raise InvalidInput("send exactly one of csv (cell_id,zone_id rows), geojson with id_field (polygons), "
                           "or grid_km (a square grid)", field="csv")
    if csv is not None:
        if id_field is not None:
            raise InvalidInput("id_field goes with polygons sent without csv; with csv, geojson is only drawn on "
                               "maps: drop id_field, or drop csv to assign cells from the polygons",
                               field="id_field")
        z = service.add_zoning(dataset, name, csv, coarse=coarse, min_cells_per_zone=min_cells_per_zone,
                               geometry=geojson, by=by)
        return ZoningAdded(z.name, z.zone_count, z.coarse, "csv")
    catalog = service.dataset(dataset).catalog
    if grid_km is not None:
        if geojson is not None or id_field is not None:
            raise InvalidInput("grid_km makes its own squares: drop geojson and id_field", field="grid_km")
        built = grid_zoning(catalog, grid_km)
    else:
        if id_field is None:
            raise InvalidInput("id_field is required with polygons: name the feature property holding each "
                               "zone's id (e.g. 'GEOID')", field="id_field")
        built = zoning_from_geojson(geojson, catalog, id_field=id_field, source=source or "geojson")
    z = service.add_zoning(dataset, name, built.csv_text(), coarse=coarse, min_cells_per_zone=min_cells_per_zone,
                           geometry=built.geometry, by=by)
    return ZoningAdded(z.name, z.zone_count, z.coarse, built.method,
                       [c.to_json() for c in built.assigned_to_nearest], list(built.empty_polygons))
