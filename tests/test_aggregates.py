"""The aggregate store fails at load, with a clear DataUnavailable, on missing or corrupt files."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from dpflows.aggregates import AggregateStore, load_dataset, version_dir
from dpflows.errors import DataUnavailable, NotFound


@pytest.fixture
def dataset_copy(data_root: Path, tmp_path: Path) -> Path:
    target = tmp_path / "datasets" / "small"
    shutil.copytree(data_root / "datasets" / "small", target)
    return target


def test_loads_once_and_shares(data_root: Path) -> None:
    store = AggregateStore(data_root)
    assert store.get("small") is store.get("small")
    assert store.names() == ["small"]
    meta = store.get("small").metadata
    assert meta.window_count == 4 and meta.privacy_unit == "person-window (7 days)"
    assert sorted(store.get("small").zonings) == ["cell", "districts", "sectors"]


@pytest.mark.parametrize("name", ["trips.parquet", "presence.parquet", "cells.parquet"])
def test_missing_file(dataset_copy: Path, name: str) -> None:
    (version_dir(dataset_copy) / name).unlink()
    with pytest.raises(DataUnavailable, match=re.escape(f"{name} is missing")):
        load_dataset(dataset_copy)


@pytest.mark.parametrize("name", ["trips.parquet", "presence.parquet"])
def test_corrupt_parquet(dataset_copy: Path, name: str) -> None:
    data = (version_dir(dataset_copy) / name).read_bytes()
    (version_dir(dataset_copy) / name).write_bytes(data[: len(data) // 2])
    with pytest.raises(DataUnavailable, match=r"does not belong to its metadata\.json"):
        load_dataset(dataset_copy)


@pytest.mark.parametrize("name", ["trips.parquet", "presence.parquet"])
def test_corrupt_parquet_in_the_layout_before_versions(dataset_copy: Path, name: str) -> None:
    """Datasets written before versions (files beside metadata.json, no hashes) still load and fail clearly."""
    current = version_dir(dataset_copy)
    for f in current.iterdir():
        shutil.move(f, dataset_copy / f.name)
    (dataset_copy / "CURRENT").unlink()
    meta = json.loads((dataset_copy / "metadata.json").read_text())
    del meta["files"]
    (dataset_copy / "metadata.json").write_text(json.dumps(meta))
    assert load_dataset(dataset_copy).metadata.name == "small"
    data = (dataset_copy / name).read_bytes()
    (dataset_copy / name).write_bytes(data[: len(data) // 2])
    with pytest.raises(DataUnavailable, match="cannot be read"):
        load_dataset(dataset_copy)


def test_corrupt_metadata_and_zoning(dataset_copy: Path) -> None:
    zoning = dataset_copy / "zonings" / "districts.json"
    zoning.write_text("{not json")
    with pytest.raises(DataUnavailable, match=r"districts\.json"):
        load_dataset(dataset_copy)
    (version_dir(dataset_copy) / "metadata.json").write_text(json.dumps({"format_version": 99}))
    with pytest.raises(DataUnavailable, match=r"metadata\.json"):
        load_dataset(dataset_copy)


def test_unknown_dataset_and_bad_names(tmp_path: Path) -> None:
    store = AggregateStore(tmp_path)
    with pytest.raises(NotFound, match="dataset='nowhere'"):
        store.get("nowhere")
    with pytest.raises(Exception, match="not a valid name"):
        store.get("../etc")
