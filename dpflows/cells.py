"""Public geography: the cell catalog and zonings.

Both are public: the catalog lists the operator's antenna sites, a zoning maps every cell to
one zone. A zoning's zones are the public key domain of zone-level answers, so an answer's
shape never depends on the secret data (design §1, rule 5).
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dpflows.errors import InvalidData, InvalidInput

#: The identity zoning: every cell is its own zone. Always available, never coarse.
CELL_ZONING = "cell"
#: Zonings and datasets are named by admins and appear in URLs and file names. Matched whole
#: (re.fullmatch): with re.match, `$` also matched before a trailing newline ("demo\n").
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


def check_name(value: str, *, field: str) -> str:
    """Names become file names: keep them to a safe alphabet."""
    import re

    if not isinstance(value, str) or not re.fullmatch(NAME_PATTERN, value):
        raise InvalidInput(
            f"{field}={value!r} is not a valid name; use 1-64 letters, digits, '_', '-' or '.', "
            "starting with a letter or digit",
            field=field,
        )
    return value


def label_problem(value: str) -> str | None:
    """What is wrong with a free-text label (a zone id, a client name) that logs, CSV files and
    pages show, or None: control and format characters (newlines, escapes, bidi overrides) and
    surrounding whitespace are refused."""
    import unicodedata

    for i, ch in enumerate(value):
        if unicodedata.category(ch)[0] == "C" or unicodedata.category(ch) in ("Zl", "Zp"):
            return f"contains the control character U+{ord(ch):04X} at position {i}; remove it"
    if value != value.strip():
        return "starts or ends with whitespace; remove it"
    return None


@dataclass(frozen=True)
class CellCatalog:
    """The cells of one dataset, in a fixed order (sorted by id) that indexes every array."""

    cell_ids: tuple[str, ...]
    lat: np.ndarray
    lon: np.ndarray
    index: dict[str, int] = field(repr=False, compare=False)

    @classmethod
    def from_columns(cls, cell_ids: list[str], lat: list[float], lon: list[float]) -> CellCatalog:
        order = sorted(range(len(cell_ids)), key=lambda i: cell_ids[i])
        ids = tuple(cell_ids[i] for i in order)
        if len(set(ids)) != len(ids):
            raise InvalidData("cell catalog has duplicate cell_id values; each cell must appear once")
        return cls(
            cell_ids=ids,
            lat=np.asarray([lat[i] for i in order], dtype=np.float64),
            lon=np.asarray([lon[i] for i in order], dtype=np.float64),
            index={c: i for i, c in enumerate(ids)},
        )

    def __len__(self) -> int:
        return len(self.cell_ids)


@dataclass(frozen=True)
class Zoning:
    """A public mapping cell -> zone, with zones in a fixed (sorted) order."""

    name: str
    zone_ids: tuple[str, ...]
    #: cell index (catalog order) -> zone index (zone_ids order)
    zone_of_cell: np.ndarray
    coarse: bool = False
    min_cells_per_zone: int = 1
    geometry: dict[str, Any] | None = None

    @property
    def zone_count(self) -> int:
        return len(self.zone_ids)

    def cells_per_zone(self) -> np.ndarray:
        return np.bincount(self.zone_of_cell, minlength=self.zone_count)

    def zone_index(self, zone_id: str, *, field: str = "zone") -> int:
        try:
            return self.zone_ids.index(zone_id)
        except ValueError:
            raise InvalidInput(
                f"{field}={zone_id!r} is not a zone of zoning {self.name!r}; "
                f"use one of its {self.zone_count} zones (GET the zoning to list them)",
                field=field,
            ) from None

    def to_json(self, catalog: CellCatalog) -> dict[str, Any]:
        return {
            "name": self.name,
            "coarse": self.coarse,
            "min_cells_per_zone": self.min_cells_per_zone,
            "zones": {catalog.cell_ids[i]: self.zone_ids[z] for i, z in enumerate(self.zone_of_cell)},
            "geometry": self.geometry,
        }

    @classmethod
    def from_mapping(
        cls,
        name: str,
        mapping: dict[str, str],
        catalog: CellCatalog,
        *,
        coarse: bool = False,
        min_cells_per_zone: int = 1,
        geometry: dict[str, Any] | None = None,
        source: str = "zoning",
    ) -> Zoning:
        """Build and check a zoning: every catalog cell in exactly one zone, coarse zones big enough."""
        check_name(name, field="name")
        if name == CELL_ZONING:
            raise InvalidInput(
                f"name={name!r} is reserved for the built-in cell-level zoning; choose another name", field="name"
            )
        unknown = [c for c in mapping if c not in catalog.index]
        if unknown:
            raise InvalidData(
                f"{source}: {len(unknown)} cell_id values are not in the dataset's cell catalog "
                f"(first: {', '.join(map(repr, unknown[:3]))}); map only catalog cells",
                field="cell_id",
            )
        missing = [c for c in catalog.cell_ids if c not in mapping]
        if missing:
            raise InvalidData(
                f"{source}: {len(missing)} catalog cells have no zone "
                f"(first: {', '.join(map(repr, missing[:3]))}); every cell must map to one zone",
                field="cell_id",
            )
        zone_ids = tuple(sorted(set(mapping.values())))
        zpos = {z: i for i, z in enumerate(zone_ids)}
        zone_of_cell = np.asarray([zpos[mapping[c]] for c in catalog.cell_ids], dtype=np.int64)
        zoning = cls(name, zone_ids, zone_of_cell, coarse, int(min_cells_per_zone), geometry)
        if coarse:
            if min_cells_per_zone < 1:
                raise InvalidInput(
                    f"min_cells_per_zone={min_cells_per_zone} must be at least 1 for a coarse zoning",
                    field="min_cells_per_zone",
                )
            sizes = zoning.cells_per_zone()
            small = [zone_ids[i] for i in np.flatnonzero(sizes < min_cells_per_zone)]
            if small:
                raise InvalidData(
                    f"{source}: zoning marked coarse but {len(small)} zones hold fewer than "
                    f"{min_cells_per_zone} cells (first: {', '.join(map(repr, small[:3]))}); "
                    "merge them or do not mark the zoning coarse",
                    field="coarse",
                )
        return zoning

    @classmethod
    def identity(cls, catalog: CellCatalog) -> Zoning:
        return cls(CELL_ZONING, catalog.cell_ids, np.arange(len(catalog), dtype=np.int64))


def parse_zoning_csv(text: str, *, source: str = "zoning CSV") -> dict[str, str]:
    """Read `cell_id,zone_id` rows; errors name the row numbers, never more than a few."""
    reader = csv.DictReader(io.StringIO(text))
    if reader.fieldnames is None or not {"cell_id", "zone_id"} <= {f.strip() for f in reader.fieldnames}:
        raise InvalidData(
            f"{source}: header must contain cell_id and zone_id, got {reader.fieldnames!r}",
            field="csv",
        )
    mapping: dict[str, str] = {}
    bad_rows: list[int] = []
    dup_rows: list[int] = []
    control_rows: list[int] = []
    for row_number, row in enumerate(reader, start=2):
        cell = (row.get("cell_id") or "").strip()
        zone = (row.get("zone_id") or "").strip()
        if not cell or not zone:
            bad_rows.append(row_number)
        elif label_problem(cell) or label_problem(zone):
            control_rows.append(row_number)
        elif cell in mapping and mapping[cell] != zone:
            dup_rows.append(row_number)
        else:
            mapping[cell] = zone
    if bad_rows:
        raise InvalidData(f"{source}: empty cell_id or zone_id in rows {bad_rows[:5]}; fill both columns", field="csv")
    if control_rows:
        raise InvalidData(f"{source}: a cell_id or zone_id contains a control character in rows {control_rows[:5]}; "
                          "use printable names", field="csv")
    if dup_rows:
        raise InvalidData(
            f"{source}: a cell_id is mapped to two zones in rows {dup_rows[:5]}; map each cell once", field="csv"
        )
    if not mapping:
        raise InvalidData(f"{source}: no rows; send one cell_id,zone_id row per cell", field="csv")
    return mapping


def save_zoning(zoning: Zoning, catalog: CellCatalog, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(zoning.to_json(catalog)))
    tmp.replace(path)


def load_zoning(path: Path, catalog: CellCatalog) -> Zoning:
    doc = json.loads(path.read_text())
    return Zoning.from_mapping(
        doc["name"],
        doc["zones"],
        catalog,
        coarse=bool(doc.get("coarse", False)),
        min_cells_per_zone=int(doc.get("min_cells_per_zone", 1)),
        geometry=doc.get("geometry"),
        source=str(path.name),
    )
