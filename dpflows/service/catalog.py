"""Use case: public facts about datasets and zonings, for any authenticated client (no budget involved)."""

from __future__ import annotations

from typing import Any

import numpy as np

from dpflows.aggregates import AggregateStore, Dataset
from dpflows.cells import Zoning
from dpflows.ledger.base import DEFAULT_POPULATION
from dpflows.service.reports import zoning_names


class Catalog:
    """Public facts about datasets and zonings, for any authenticated client."""

    def __init__(self, store: AggregateStore) -> None:
        self.store = store

    def datasets(self) -> list[dict[str, Any]]:
        out = []
        for name in self.store.names():
            data = self.store.get(name)
            meta = data.metadata
            zonings = [data.zoning(z) for z in sorted(zoning_names(data))]
            out.append({
                "name": name, "first_day": meta.first_day, "end_day": meta.end_day,
                "window_days": meta.window_days, "windows": meta.window_count,
                "bounds": {"trips": meta.bound_trips, "presence": meta.bound_presence},
                "accounting": meta.accounting_json(),
                "dense_limit": meta.dense_limit,
                "privacy_unit": meta.privacy_unit,
                "missing_days": [d.isoformat() for d in meta.missing_days],
                "time_zone": meta.time_zone, "retired_windows": sorted(data.retired),
                # datasets of one population share its global caps and allocations (issue 17)
                "population": meta.population or DEFAULT_POPULATION,
                "zonings": [{"name": z.name, "zones": z.zone_count, "coarse": z.coarse} for z in zonings],
            })
        return out

    def zoning(self, dataset: str, name: str) -> dict[str, Any]:
        data = self.store.get(dataset)
        zoning = data.zoning(name)
        sizes = zoning.cells_per_zone()
        centroids = _zone_centroids(data, zoning)
        return {
            "name": zoning.name, "coarse": zoning.coarse, "min_cells_per_zone": zoning.min_cells_per_zone,
            "zones": [{"zone_id": z, "cells": int(sizes[i]), "centroid": list(centroids[i])}
                      for i, z in enumerate(zoning.zone_ids)],
            "cells": [{"cell_id": c, "lat": float(data.catalog.lat[i]), "lon": float(data.catalog.lon[i]),
                       "zone_id": zoning.zone_ids[zoning.zone_of_cell[i]]}
                      for i, c in enumerate(data.catalog.cell_ids)],
            "geometry": zoning.geometry,
        }


def _zone_centroids(data: Dataset, zoning: Zoning) -> list[tuple[float, float]]:
    counts = np.bincount(zoning.zone_of_cell, minlength=zoning.zone_count)
    lat = np.bincount(zoning.zone_of_cell, weights=data.catalog.lat, minlength=zoning.zone_count)
    lon = np.bincount(zoning.zone_of_cell, weights=data.catalog.lon, minlength=zoning.zone_count)
    return [(float(a / n), float(o / n)) if n else (0.0, 0.0) for a, o, n in zip(lat, lon, counts, strict=True)]
