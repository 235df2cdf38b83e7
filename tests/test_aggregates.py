"""The aggregate store fails at load, with a clear DataUnavailable, on missing or corrupt files."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import polars as pl
import pytest

from dpflows.aggregates import AggregateStore, load_dataset, read_interchange, version_dir
from dpflows.errors import DataUnavailable, NotFound
from tests.legacy_layout import write_format1


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


def _window_dir(dataset: Path, window: int = 0) -> Path:
    doc = json.loads((version_dir(dataset) / "metadata.json").read_text())
    return dataset / "windows" / str(window) / doc["windows"][str(window)]["version"]


def test_missing_cells(dataset_copy: Path) -> None:
    (version_dir(dataset_copy) / "cells.parquet").unlink()
    with pytest.raises(DataUnavailable, match=re.escape("cells.parquet is missing")):
        load_dataset(dataset_copy)


@pytest.mark.parametrize("name", ["trips.arrow", "presence.arrow", "window.json"])
def test_missing_window_file_fails_when_the_window_is_first_used(dataset_copy: Path, name: str) -> None:
    (_window_dir(dataset_copy, 1) / name).unlink()
    data = load_dataset(dataset_copy)  # windows are mapped on first use, not at load
    assert data.window(0).trips.rows > 0
    with pytest.raises(DataUnavailable, match=r"window 1 of dataset 'small' (lacks|is missing)|" + re.escape(name)):
        data.window(1)


@pytest.mark.parametrize("name", ["trips.arrow", "presence.arrow"])
def test_corrupt_window_file(dataset_copy: Path, name: str) -> None:
    path = _window_dir(dataset_copy) / name
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataUnavailable, match=r"does not belong to its metadata\.json"):
        load_dataset(dataset_copy).window(0)


def test_a_window_of_another_version_is_refused(dataset_copy: Path) -> None:
    """A window directory swapped for another (a bad sync): its window.json's hash differs from the metadata's."""
    other = _window_dir(dataset_copy, 1)
    target = _window_dir(dataset_copy, 0)
    shutil.rmtree(target)
    shutil.copytree(other, target)
    with pytest.raises(DataUnavailable, match=r"window\.json of window 0 .* does not belong"):
        load_dataset(dataset_copy).window(0)


@pytest.mark.parametrize("versioned", [True, False], ids=["versioned", "before-versions"])
@pytest.mark.parametrize("name", ["trips.parquet", "presence.parquet"])
def test_corrupt_parquet_in_the_format1_layouts(dataset_copy: Path, tmp_path: Path, name: str, versioned: bool) -> None:
    """Datasets written before window files (versioned, or files beside metadata.json without hashes) still
    load and fail clearly."""
    old = write_format1(dataset_copy, tmp_path / "old" / "small", versioned=versioned)
    assert load_dataset(old).metadata.name == "small"
    path = version_dir(old) / name
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataUnavailable, match="does not belong to its metadata" if versioned else "cannot be read"):
        load_dataset(old)
    path.unlink()
    with pytest.raises(DataUnavailable, match=re.escape(f"{name} is missing")):
        load_dataset(old)


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
    assert old.metadata.places is None
    assert old.metadata.presence_rule == "cells_per_person_hour" and old.metadata.bound("residents") == 1
    data = load_dataset(city_copy)
    assert data.metadata.one_place_per_hour and data.metadata.places is not None
    assert data.metadata.places is not None
    residents = read_interchange(city_copy, "residents").collect()
    assert residents.schema == {"window": pl.Int32, "place": pl.String, "cell": pl.String, "count": pl.Int64}
    assert int(data.frame("residents")["count"].sum()) == residents["count"].sum() > 0
    mapped = data.frame("residents")
    assert set(mapped["place"].to_list()) == {0, 1} and set(mapped["window"].to_list()) == {0, 1}
    homes = residents.filter(pl.col("place") == "home")
    assert int(mapped.filter(pl.col("place") == 0)["count"].sum()) == homes["count"].sum()
    cell = data.catalog.cell_ids[int(mapped["cell"][0])]
    assert cell in residents["cell"].to_list()
    commuting = read_interchange(city_copy, "commuting").collect()
    assert commuting.schema == {"window": pl.Int32, "home": pl.String, "work": pl.String, "count": pl.Int64}
    assert int(data.frame("commuting")["count"].sum()) == commuting["count"].sum() > 0
    assert (data.frame("commuting")["home"] != data.frame("commuting")["work"]).all()
    assert data.metadata.bound("residents") == data.metadata.bound("commuting") == 1


@pytest.mark.parametrize("name", ["residents.arrow", "commuting.arrow"])
def test_missing_or_foreign_place_files_fail_at_first_use(city_copy: Path, name: str) -> None:
    path = _window_dir(city_copy) / name
    raw = path.read_bytes()
    path.unlink()
    with pytest.raises(DataUnavailable, match=re.escape(f"{name} is missing")):
        load_dataset(city_copy).window(0)
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataUnavailable, match=r"does not belong to its metadata\.json"):
        load_dataset(city_copy).window(0)


def test_place_files_must_be_listed_with_their_hashes(city_copy: Path) -> None:
    """A window.json edited to drop a file (its hash then rewritten in metadata.json) is refused at first use."""
    import hashlib

    wdir = _window_dir(city_copy)
    doc = json.loads((wdir / "window.json").read_text())
    del doc["files"]["commuting.arrow"]
    raw = json.dumps(doc).encode()
    (wdir / "window.json").write_bytes(raw)
    meta_path = version_dir(city_copy) / "metadata.json"
    meta = json.loads(meta_path.read_text())
    meta["windows"]["0"]["sha256"] = hashlib.sha256(raw).hexdigest()
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(DataUnavailable, match=r"lacks commuting\.arrow"):
        load_dataset(city_copy).window(0)
    del meta["files"]["cells.parquet"]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(DataUnavailable, match="lacks its file hashes"):
        load_dataset(city_copy)


def test_place_counts_outside_the_span_fail_at_load(city_copy: Path, tmp_path: Path) -> None:
    """A format-1 residents file naming a window the metadata does not hold is refused (written here with a
    matching hash)."""
    import hashlib

    old = write_format1(city_copy, tmp_path / "old" / "city")
    vdir = version_dir(old)
    frame = pl.read_parquet(vdir / "residents.parquet").with_columns(pl.lit(7, dtype=pl.Int32).alias("window"))
    frame.write_parquet(vdir / "residents.parquet")
    doc = json.loads((vdir / "metadata.json").read_text())
    doc["files"]["residents.parquet"] = hashlib.sha256((vdir / "residents.parquet").read_bytes()).hexdigest()
    (vdir / "metadata.json").write_text(json.dumps(doc))
    with pytest.raises(DataUnavailable, match=r"residents\.parquet of dataset 'city' has windows outside"):
        load_dataset(old)
