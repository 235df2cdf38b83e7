"""Issue 20: window files mapped read-only, read by the slots a query asks for, versions switched atomically.

The counts a query gets from the mapped windows equal a direct count over the interchange
Parquet (written beside them, read here with Polars), in the mapped layout and in the format-1
layouts still served; a query maps only the windows it touches; a query running while new
versions are switched in sees one version whole; `dpflows admin upgrade-dataset` converts a
format-1 dataset without changing an answer or a report's charge.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from dpflows.aggregates import (
    MAPPED,
    PARQUET_IN_MEMORY,
    AggregateStore,
    Dataset,
    DatasetMetadata,
    PlaceRule,
    load_dataset,
    read_interchange,
    write_aggregates,
)
from dpflows.counting import warm_flow_keys
from dpflows.errors import InvalidInput
from dpflows.legacy_aggregates import upgrade_dataset
from dpflows.queries import QuerySpec, make_spec, prepare
from tests.legacy_layout import write_format1

MON = dt.date(2024, 3, 4)
END = dt.date(2024, 3, 18)


def _specs() -> list[QuerySpec]:
    def s(kind: str, start: dt.date = MON, end: dt.date = END, **kw: object) -> QuerySpec:
        return make_spec(kind, dataset="city", zoning="districts", start=start, end=end, **kw)  # type: ignore[arg-type]

    day = dt.date(2024, 3, 12)
    return [
        s("flows"), s("flows", day, day + dt.timedelta(days=1)), s("flows", hours=[22, 2], weekdays=[0, 5]),
        s("flows", dt.date(2024, 3, 9), dt.date(2024, 3, 13), hours=[7, 10]),
        s("inflows", hours=[16, 19]), s("outflows", weekdays=[6]),
        s("presence", hours=[7, 10]), s("presence", day, day + dt.timedelta(days=2), hours=[23, 24]),
        s("patterns"), s("patterns", measure="presence", zone="D0102"), s("patterns", zone="D0000", weekdays=[1, 2]),
        s("residents", place="home"), s("residents", place="work", end=dt.date(2024, 3, 11)), s("commuting"),
    ]


def _direct(spec: QuerySpec, dataset_dir: Path, data: Dataset) -> np.ndarray:
    """The true vector counted straight from the interchange Parquet: a whole-span filter, as before windows."""
    zoning = data.zoning(spec.zoning)
    zone = {c: int(zoning.zone_of_cell[i]) for i, c in enumerate(data.catalog.cell_ids)}
    n, frame = zoning.zone_count, read_interchange(dataset_dir, spec.counted_measure).collect()
    to_zone = {col: pl.col(col).replace_strict(zone, return_dtype=pl.Int64)
               for col in ("origin", "dest", "cell", "home", "work")}
    if spec.kind in ("residents", "commuting"):
        windows = sorted({data.metadata.window_of(spec.start + dt.timedelta(days=d))
                          for d in range((spec.end - spec.start).days)})
        pos = {w: i for i, w in enumerate(windows)}
        frame = frame.filter(pl.col("window").is_in(windows))
        if spec.kind == "residents":
            frame = frame.filter(pl.col("place") == spec.place)
            key = to_zone["cell"] * len(windows) + pl.col("window").replace_strict(pos)
            size = n * len(windows)
        else:
            key = (to_zone["home"] * n + to_zone["work"]) * len(windows) + pl.col("window").replace_strict(pos)
            size = n * n * len(windows)
    else:
        frame = frame.filter((pl.col("day") >= spec.start) & (pl.col("day") < spec.end)
                             & pl.col("hour").is_in(list(spec.hours))
                             & (pl.col("day").dt.weekday() - 1).is_in(list(spec.weekdays)))
        hour = pl.col("hour").cast(pl.Int64).replace_strict({h: i for i, h in enumerate(spec.hours)})
        cell = "origin" if spec.counted_measure == "trips" else "cell"
        if spec.kind == "flows":
            key, size = to_zone["origin"] * n + to_zone["dest"], n * n
        elif spec.kind in ("inflows", "outflows"):
            key, size = to_zone["dest" if spec.kind == "inflows" else "origin"], n
        elif spec.kind == "presence":
            key, size = to_zone["cell"] * len(spec.hours) + hour, n * len(spec.hours)
        else:
            if spec.zone is not None:
                frame = frame.filter(to_zone[cell] == zoning.zone_index(spec.zone))
            weekday = (pl.col("day").dt.weekday() - 1).replace_strict({d: i for i, d in enumerate(spec.weekdays)})
            key, size = weekday * len(spec.hours) + hour, len(spec.weekdays) * len(spec.hours)
    sums = frame.select(key.alias("key"), "count").group_by("key").agg(pl.col("count").sum())
    out = np.zeros(size, dtype=np.int64)
    out[sums["key"].to_numpy()] = sums["count"].to_numpy()
    return out


@pytest.fixture(scope="module")
def layouts(report_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The demo city (2 windows, places) in the mapped layout and in both format-1 layouts."""
    tmp = tmp_path_factory.mktemp("layouts")
    source = report_root / "datasets" / "city"
    return {"mapped": source,
            "format1": write_format1(source, tmp / "v" / "datasets" / "city"),
            "format1-before-versions": write_format1(source, tmp / "u" / "datasets" / "city", versioned=False)}


@pytest.mark.parametrize("layout", ["mapped", "format1", "format1-before-versions"])
def test_every_kind_counts_what_a_direct_count_over_the_parquet_says(layouts: dict[str, Path], layout: str) -> None:
    data = load_dataset(layouts[layout])
    assert data.layout == (MAPPED if layout == "mapped" else PARQUET_IN_MEMORY)
    for spec in _specs():
        got = prepare(spec, data).true_counts
        assert got.sum() > 0, spec
        assert np.array_equal(got, _direct(spec, layouts[layout], data)), spec


def test_flows_count_the_same_from_warmed_flow_keys_and_no_query_adds_any(layouts: dict[str, Path]) -> None:
    """Issue 16: the flow keys made after start (newest window first, within the byte bound) give the very
    counts a direct count gives; windows past the bound are counted as before, and queries store no keys."""
    store = AggregateStore(layouts["mapped"].parent.parent)
    first = store.get("city")
    rows = {w: len(first.window(w).trips.columns["count"]) for w in first.window_refs}
    newest = max(rows)
    one_window = rows[newest] * 8 * len(first.zonings)  # every zoning of the newest window, nothing more
    store.warm_in_background(lambda datasets: warm_flow_keys(datasets, one_window)).join(60)
    data = store.get("city")
    assert sorted(data.flow_keys) == [(newest, name) for name in sorted(data.zonings)]
    flows = [spec for spec in _specs() if spec.kind == "flows"]
    for spec in flows:
        assert np.array_equal(prepare(spec, data).true_counts, _direct(spec, layouts["mapped"], data)), spec
    assert sorted(data.flow_keys) == [(newest, name) for name in sorted(data.zonings)]  # queries added none
    assert warm_flow_keys([load_dataset(layouts["mapped"])], 0) == 0


def test_a_query_maps_only_the_windows_it_touches_as_read_only_shared_pages(layouts: dict[str, Path]) -> None:
    data = AggregateStore(layouts["mapped"].parents[1]).get("city")
    assert data.mapped_windows() == {}  # loading read metadata, cells and zonings only
    day = dt.date(2024, 3, 12)
    prepare(make_spec("flows", dataset="city", zoning="districts", start=day, end=day + dt.timedelta(days=1)), data)
    assert list(data.mapped_windows()) == [1]
    window = data.window(1)
    assert window.mapped_bytes > 0 and not window.trips.columns["count"].flags.writeable
    maps = Path("/proc/self/maps").read_text()
    assert str(data.window_refs[1].path / "trips.arrow") in maps  # a file mapping: the page cache's pages
    assert str(data.window_refs[0].path / "trips.arrow") not in maps


def _versioned_city(root: Path, k: int) -> Path:
    """A 4-window dataset whose every count is k: one version per k."""
    rng = np.random.default_rng(7)  # synthetic rows, not noise
    cells = pl.DataFrame({"cell_id": [f"c{i}" for i in range(6)], "lat": [0.0] * 6, "lon": [0.01 * i for i in range(6)]})
    days = [MON + dt.timedelta(days=int(d)) for d in rng.integers(0, 28, 300)]
    trips = pl.DataFrame({"day": days, "hour": rng.integers(0, 24, 300).astype(np.int8),
                          "origin": [f"c{i}" for i in rng.integers(0, 6, 300)],
                          "dest": [f"c{i}" for i in rng.integers(0, 6, 300)]}).unique().with_columns(count=pl.lit(k))
    presence = trips.select("day", "hour", pl.col("origin").alias("cell")).unique().with_columns(count=pl.lit(k))
    residents = pl.DataFrame({"window": [w for w in range(4) for _ in range(6)], "place": ["home"] * 24,
                              "cell": [f"c{i}" for _ in range(4) for i in range(6)]}).with_columns(count=pl.lit(k))
    commuting = pl.DataFrame({"window": list(range(4)), "home": ["c0"] * 4, "work": ["c1"] * 4, "count": [k] * 4})
    meta = DatasetMetadata("city", MON, MON + dt.timedelta(days=28), 7, 5, 5, places=PlaceRule())
    return write_aggregates(root / "datasets" / "city", meta, cells, trips, presence, residents=residents,
                            commuting=commuting)


def test_queries_while_versions_are_switched_see_one_version_whole(tmp_path: Path) -> None:
    """A writer switches in versions 2..9 while readers ask for all four windows: every answer is k × version 1's,
    the same k in every window, never windows of two versions."""
    _versioned_city(tmp_path, 1)
    (tmp_path / "datasets" / "city" / "zonings").mkdir(exist_ok=True)
    store = AggregateStore(tmp_path)
    specs = [make_spec("residents", dataset="city", zoning="cell", start=MON, end=MON + dt.timedelta(days=28),
                       place="home"),
             make_spec("presence", dataset="city", zoning="cell", start=MON, end=MON + dt.timedelta(days=28))]
    base = [prepare(s, store.get("city")).true_counts for s in specs]
    per_window = base[0].reshape(6, 4)  # residents: (zone, window)
    assert (per_window > 0).all()
    seen: set[int] = set()
    errors: list[str] = []
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            data = store.get("city")
            res, pres = (prepare(s, data).true_counts for s in specs)
            ks = {int(k) for k in np.unique(res.reshape(6, 4) // per_window)}
            if len(ks) != 1 or not np.array_equal(res, base[0] * min(ks)) or not np.array_equal(pres, base[1] * min(ks)):
                errors.append(f"mixed versions: multipliers {sorted(ks)}")
            seen.update(ks)

    readers = [threading.Thread(target=read) for _ in range(3)]
    for t in readers:
        t.start()
    try:
        for k in range(2, 10):
            _versioned_city(tmp_path, k)
    finally:
        done.set()
        for t in readers:
            t.join()
    assert not errors, errors[:3]
    assert len(seen) > 1  # the readers did run across switches
    assert np.array_equal(prepare(specs[0], store.get("city")).true_counts, base[0] * 9)  # no restart needed


def test_upgrade_dataset_keeps_every_count_and_report_charge(layouts: dict[str, Path], tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    from dpflows.cli import main

    root = tmp_path / "data"
    shutil.copytree(layouts["format1"].parents[1], root)
    store = AggregateStore(root)
    before = store.get("city")
    assert before.layout == PARQUET_IN_MEMORY and before.bounding_report is not None
    answers = [prepare(s, before).true_counts for s in _specs()]
    assert main(["admin", "upgrade-dataset", "--data-dir", str(root), "--dataset", "city"]) == 0
    assert "now stored as window files (2 windows)" in capsys.readouterr().out
    after = store.get("city")  # the same store: a running worker switches at its next request
    assert after.layout == MAPPED and after.version != before.version
    assert [c.query_key for c in after.report_charges] == [c.query_key for c in before.report_charges]
    assert all(np.array_equal(prepare(s, after).true_counts, a) for s, a in zip(_specs(), answers, strict=True))
    with pytest.raises(InvalidInput, match="already stored as window files"):
        upgrade_dataset(root / "datasets" / "city")


def test_answers_stored_on_a_format1_dataset_are_reused_after_its_upgrade(layouts: dict[str, Path],
                                                                          tmp_path: Path) -> None:
    """The reuse key of a format-1 dataset is the one it always was (its metadata digest); upgrade-dataset
    stores each window under that digest, so answers released before are found after (issue 19 item 5)."""
    from dpflows.budget import Epsilon
    from dpflows.ledger.sqlite import SqliteLedger
    from dpflows.service import QueryRequest, Service

    root = tmp_path / "data"
    shutil.copytree(layouts["format1"].parents[1], root)
    service = Service(AggregateStore(root), SqliteLedger(tmp_path / "ledger.db"))
    planner, _ = service.create_client("planner", "planner")
    service.set_cap("city", Epsilon.parse("1"), client_id=planner.id, window=None)
    service.set_cap("city", Epsilon.parse("2"), client_id=None, window=None)
    spec = make_spec("flows", dataset="city", zoning="districts", start=MON, end=END)
    before = service.answer(QueryRequest(spec, epsilon=Epsilon.parse("0.5")), planner)
    data = service.store.get("city")
    assert data.data_version([0, 1]) == data.version  # as before windows: one digest for the whole dataset
    upgrade_dataset(root / "datasets" / "city")
    after = service.answer(QueryRequest(spec, epsilon=Epsilon.parse("0.5")), planner)
    assert after.reused and after.values == before.values and after.charged.nanos == 0
    assert service.ledger.total_charged("city", 0) == Epsilon.parse("0.6")  # 0.5 and the report's 0.1, once


def test_queries_during_appends_see_the_served_windows_unchanged_and_new_ones_whole(tmp_path: Path) -> None:
    """Readers ask about weeks 1-2 and weeks 1-4 while weeks 3 and 4 are appended: weeks 1-2 never change, and
    weeks 1-4 are either refused (not yet served: outside the span) or counted whole from the new version."""
    _versioned_city(tmp_path, 1)
    path = tmp_path / "datasets" / "city"
    store = AggregateStore(tmp_path)
    two = make_spec("presence", dataset="city", zoning="cell", start=MON, end=MON + dt.timedelta(days=14))
    four = make_spec("presence", dataset="city", zoning="cell", start=MON, end=MON + dt.timedelta(days=28))
    full = prepare(four, store.get("city")).true_counts
    first_two = prepare(two, store.get("city")).true_counts
    # served: weeks 1-2 only (the same rows), then weeks 3-4 appended with every count doubled
    frames = {name: read_interchange(path, name).collect() for name in ("trips", "presence", "residents", "commuting")}
    cells = pl.read_parquet(next((path / "versions").iterdir()) / "cells.parquet")
    shutil.rmtree(path)
    cut = MON + dt.timedelta(days=14)
    meta = DatasetMetadata("city", MON, cut, 7, 5, 5, places=PlaceRule())
    write_aggregates(path, meta, cells, frames["trips"].filter(pl.col("day") < cut),
                     frames["presence"].filter(pl.col("day") < cut),
                     residents=frames["residents"].filter(pl.col("window") < 2),
                     commuting=frames["commuting"].filter(pl.col("window") < 2))
    outcomes: set[str] = set()
    errors: list[str] = []
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            data = store.get("city")
            if not np.array_equal(prepare(two, data).true_counts, first_two):
                errors.append("weeks 1-2 changed")
            try:
                got = prepare(four, data).true_counts
            except InvalidInput:
                outcomes.add("not yet")
                continue
            outcomes.add("appended")
            if not np.array_equal(got - first_two, 2 * (full - first_two)):
                errors.append("weeks 3-4 seen partly")

    readers = [threading.Thread(target=read) for _ in range(2)]
    for t in readers:
        t.start()
    try:
        time.sleep(0.05)
        later = {name: f.filter((pl.col("day") >= cut) if "day" in f.columns else (pl.col("window") >= 2))
                 .with_columns(pl.col("count") * 2) for name, f in frames.items()}
        write_aggregates(path, dataclasses.replace(meta, end_day=MON + dt.timedelta(days=28)), cells,
                         later["trips"], later["presence"], residents=later["residents"],
                         commuting=later["commuting"], append_from=2)
        time.sleep(0.2)
    finally:
        done.set()
        for t in readers:
            t.join()
    assert not errors, errors[:3]
    assert outcomes == {"not yet", "appended"}
