"""The aggregate store fails at load, with a clear DataUnavailable, on missing or corrupt files."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import polars as pl
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


@pytest.fixture
def city_copy(report_root: Path, tmp_path: Path) -> Path:
    """An ingested demo city (with residents and commuting), copied so it may be damaged."""
    target = tmp_path / "datasets" / "city"
    shutil.copytree(report_root / "datasets" / "city", target)
    return target


def test_places_load_as_arrays_and_datasets_written_before_have_none(data_root: Path, city_copy: Path) -> None:
    old = load_dataset(data_root / "datasets" / "small")  # written without places or a presence rule
    assert old.residents is None and old.commuting is None and old.metadata.places is None
    assert old.metadata.presence_rule == "cells_per_person_hour" and old.metadata.bound("residents") == 1
    data = load_dataset(city_copy)
    assert data.metadata.one_place_per_hour and data.metadata.places is not None
    assert data.residents is not None and data.commuting is not None
    residents = pl.read_parquet(version_dir(city_copy) / "residents.parquet")
    assert residents.schema == {"window": pl.Int32, "place": pl.String, "cell": pl.String, "count": pl.Int64}
    assert int(data.residents.count.sum()) == residents["count"].sum() > 0
    assert set(data.residents.place.tolist()) == {0, 1} and set(data.residents.window.tolist()) == {0, 1}
    homes = residents.filter(pl.col("place") == "home")
    assert int(data.residents.count[data.residents.place == 0].sum()) == homes["count"].sum()
    cell = data.catalog.cell_ids[int(data.residents.cell[0])]
    assert cell in residents["cell"].to_list()
    commuting = pl.read_parquet(version_dir(city_copy) / "commuting.parquet")
    assert commuting.schema == {"window": pl.Int32, "home": pl.String, "work": pl.String, "count": pl.Int64}
    assert int(data.commuting.count.sum()) == commuting["count"].sum() > 0
    assert (data.commuting.home != data.commuting.work).all()
    assert data.metadata.bound("residents") == data.metadata.bound("commuting") == 1


@pytest.mark.parametrize("name", ["residents.parquet", "commuting.parquet"])
def test_missing_or_foreign_place_files_fail_at_load(city_copy: Path, name: str) -> None:
    path = version_dir(city_copy) / name
    raw = path.read_bytes()
    path.unlink()
    with pytest.raises(DataUnavailable, match=re.escape(f"{name} is missing")):
        load_dataset(city_copy)
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataUnavailable, match=r"does not belong to its metadata\.json"):
        load_dataset(city_copy)


def test_place_files_must_be_listed_with_their_hashes(city_copy: Path) -> None:
    meta_path = version_dir(city_copy) / "metadata.json"
    doc = json.loads(meta_path.read_text())
    del doc["files"]["commuting.parquet"]
    meta_path.write_text(json.dumps(doc))
    with pytest.raises(DataUnavailable, match="lacks its file hashes"):
        load_dataset(city_copy)


def test_place_counts_outside_the_span_fail_at_load(city_copy: Path) -> None:
    """A residents file naming a window the metadata does not hold is refused (written here with a matching hash)."""
    import hashlib

    vdir = version_dir(city_copy)
    frame = pl.read_parquet(vdir / "residents.parquet").with_columns(pl.lit(7, dtype=pl.Int32).alias("window"))
    frame.write_parquet(vdir / "residents.parquet")
    doc = json.loads((vdir / "metadata.json").read_text())
    doc["files"]["residents.parquet"] = hashlib.sha256((vdir / "residents.parquet").read_bytes()).hexdigest()
    (vdir / "metadata.json").write_text(json.dumps(doc))
    with pytest.raises(DataUnavailable, match=r"residents\.parquet of dataset 'city' has windows outside"):
        load_dataset(city_copy)
