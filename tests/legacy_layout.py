"""Datasets as dpflows wrote them before window files (format 1), for the tests that they keep being served.

`write_format1` rewrites a dataset (any layout) as format 1: whole-dataset Parquet files in a
version directory with sha256 hashes in metadata.json (`versioned=True`, the layout of the
releases before the mapped store), or beside metadata.json without hashes (the first layout).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from dpflows.aggregates import DatasetMetadata, read_interchange, version_dir


def write_format1(source: Path, target: Path, *, versioned: bool = True) -> Path:
    doc = json.loads((version_dir(source) / "metadata.json").read_text())
    meta = DatasetMetadata.from_json(doc)
    vdir = target / "versions" / "v-format1" if versioned else target
    vdir.mkdir(parents=True)
    shutil.copy(version_dir(source) / "cells.parquet", vdir / "cells.parquet")
    for name in meta.files:
        if name != "cells.parquet":
            read_interchange(source, name.removesuffix(".parquet")).collect().write_parquet(vdir / name)
    doc.pop("windows", None)
    doc["format_version"] = 1
    if versioned:
        doc["files"] = {name: hashlib.sha256((vdir / name).read_bytes()).hexdigest() for name in meta.files}
        (target / "CURRENT").write_text(vdir.name + "\n")
    else:
        doc.pop("files", None)
    (vdir / "metadata.json").write_text(json.dumps(doc, indent=2))
    if (source / "zonings").is_dir():
        shutil.copytree(source / "zonings", target / "zonings")
    return target
