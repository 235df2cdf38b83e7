"""Issue 19 items 5-7: appended windows leave served ones as they were; partial windows are held or closed.

Weeks 1-2 of a small demo city are ingested, answered and charged; week 3 is appended from
files that hold all three weeks. The served windows' answers are then reused at zero cost and
their budgets are unchanged; week 3 is queryable in the same running service; its bounding
report is charged to window 2 only; the late rows are reported as a share.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

from dpflows.aggregates import AggregateStore, load_dataset, version_dir
from dpflows.budget import Epsilon
from dpflows.errors import Conflict, InvalidData, InvalidInput
from dpflows.ingest.appending import WindowHeld
from dpflows.ingest.pipeline import IngestOptions, ZoningSpec, ingest_events
from dpflows.ledger.sqlite import SqliteLedger
from dpflows.queries import make_spec, prepare
from dpflows.service import QueryRequest, Service

MON = dt.date(2024, 3, 4)
WEEK = dt.timedelta(days=7)
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def city(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from dpflows.demo import generate_city

    return generate_city(tmp_path_factory.mktemp("city3"), persons=500, seed=5, days=28)


def _events_before(city: Any, end: dt.date, where: Path) -> Path:
    pl.read_parquet(city.events).filter(pl.col("timestamp").dt.date() < end).write_parquet(where)
    return where


def _options(**kw: Any) -> IngestOptions:
    return IngestOptions(**{"name": "city", "first_day": MON, "seed": 3, "report_epsilon": "0.1", **kw})


@pytest.fixture
def two_weeks(city: Any, tmp_path: Path) -> Path:
    """Weeks 1-2 ingested (with the districts zoning) under tmp_path/data."""
    out = tmp_path / "data" / "datasets" / "city"
    ingest_events(_events_before(city, MON + 2 * WEEK, tmp_path / "weeks12.parquet"), city.cells, out,
                  _options(end_day=MON + 2 * WEEK, zonings=[ZoningSpec("districts", city.districts)]))
    return out


def _ask(service: Service, client: Any, kind: str, start: dt.date, end: dt.date, eps: str, **kw: Any) -> Any:
    spec = make_spec(kind, dataset="city", zoning="districts", start=start, end=end, **kw)
    return service.answer(QueryRequest(spec, epsilon=Epsilon.parse(eps)), client)


def test_appending_week_3_leaves_weeks_1_2_answers_and_budgets_and_serves_week_3(
        city: Any, two_weeks: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = two_weeks.parents[1]
    service = Service(AggregateStore(root), SqliteLedger(tmp_path / "ledger.db"))
    planner, _ = service.create_client("planner", "planner")
    service.set_cap("city", Epsilon.parse("2"), client_id=planner.id, window=None)
    service.set_cap("city", Epsilon.parse("3"), client_id=None, window=None)
    asked = [("flows", MON, MON + WEEK, "0.5", {}), ("residents", MON, MON + 2 * WEEK, "0.25", {"place": "home"}),
             ("presence", MON + WEEK, MON + WEEK + dt.timedelta(days=1), "0.5", {"hours": [7, 10]})]
    first = [_ask(service, planner, k, a, b, e, **kw) for k, a, b, e, kw in asked]
    spent = [service.ledger.total_charged("city", w) for w in (0, 1)]
    before = load_dataset(two_weeks)

    capsys.readouterr()
    to_28 = _events_before(city, MON + 3 * WEEK + dt.timedelta(days=3), tmp_path / "to-28.parquet")
    ingest_events(to_28, city.cells, two_weeks, _options(end_day=MON + 3 * WEEK + dt.timedelta(days=3), append=True))
    err = capsys.readouterr().err
    assert "late: " in err and "% of rows fall before 2024-03-18" in err  # weeks 1-2 in the files: not added
    assert "held: " in err and "2024-03-25..2024-03-28" in err  # 3 days of week 4: held
    after = load_dataset(two_weeks)
    assert after.metadata.end_day == MON + 3 * WEEK and after.metadata.window_count == 3
    assert [after.window_refs[w] for w in (0, 1)] == [before.window_refs[w] for w in (0, 1)]  # same files
    assert after.data_version([0, 1]) == before.data_version([0, 1]) != after.data_version([2])

    again = [_ask(service, planner, k, a, b, e, **kw) for k, a, b, e, kw in asked]  # the same running service
    for old, new in zip(first, again, strict=True):
        assert new.reused and new.values == old.values and new.charged.nanos == 0
    assert [service.ledger.total_charged("city", w) for w in (0, 1)] == spent  # the new report: window 2 only
    week3 = _ask(service, planner, "flows", MON + 2 * WEEK, MON + 3 * WEEK, "0.5")
    assert not week3.reused and [w.window for w in week3.windows] == [2]
    assert service.ledger.total_charged("city", 2) == Epsilon.parse("0.6")  # 0.5 + the report's 0.1
    assert service.ledger.total_charged("city", 1) == spent[1]
    data = AggregateStore(root).get("city")
    assert prepare(make_spec("flows", dataset="city", zoning="districts", start=MON + 2 * WEEK,
                             end=MON + 3 * WEEK), data).true_counts.sum() > 0
    charges = {c.first_window: c.windows for c in data.report_charges}
    assert charges == {0: 2, 2: 1}


def test_an_incomplete_window_is_held_or_closed(city: Any, two_weeks: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    served = version_dir(two_weeks)
    three_days = MON + 2 * WEEK + dt.timedelta(days=3)
    with pytest.raises(WindowHeld, match=r"window 2 \(2024-03-18..2024-03-24\) is not complete: --end-day "
                                         r"2024-03-21 gives 3 of its 7 days"):
        ingest_events(city.events, city.cells, two_weeks, _options(end_day=three_days, append=True))
    assert version_dir(two_weeks) == served
    events = _events_before(city, three_days, tmp_path / "to-21.parquet")
    code = _cli("ingest", str(events), "--cells", str(city.cells), "--out", str(two_weeks), "--first-day",
                str(MON), "--end-day", str(three_days), "--append")
    assert code.returncode == 0 and "nothing appended" in code.stderr and version_dir(two_weeks) == served
    # closed: window 2 published with its three days, the other four declared missing
    ingest_events(events, city.cells, two_weeks, _options(end_day=three_days, append=True, close_window=True))
    meta = load_dataset(two_weeks).metadata
    assert meta.end_day == MON + 3 * WEEK and meta.missing_days == tuple(three_days + dt.timedelta(days=d)
                                                                         for d in range(4))
    data = AggregateStore(two_weeks.parents[1]).get("city")
    with pytest.raises(InvalidInput, match="holds none of the days asked"):
        prepare(make_spec("flows", dataset="city", zoning="districts", start=three_days,
                          end=MON + 3 * WEEK), data)
    # the next append starts at window 3
    ingest_events(city.events, city.cells, two_weeks, _options(end_day=MON + 4 * WEEK, append=True))
    meta = load_dataset(two_weeks).metadata
    assert meta.window_count == 4 and meta.end_day == MON + 4 * WEEK and len(meta.missing_days) == 4


def test_an_append_keeps_the_dataset_settings_and_catalog(city: Any, two_weeks: Path, tmp_path: Path) -> None:
    end = MON + 3 * WEEK
    events = _events_before(city, end, tmp_path / "to-25.parquet")
    with pytest.raises(InvalidData, match=r"trips bound 20 and this append asks for 5; .* drop --bound-trips"):
        ingest_events(events, city.cells, two_weeks, _options(end_day=end, append=True, bound_trips=5))
    with pytest.raises(InvalidData, match=r"starts 2024-03-04; drop --first-day or give --first-day 2024-03-04"):
        ingest_events(events, city.cells, two_weeks, _options(end_day=end, append=True,
                                                                   first_day=MON + WEEK))
    cells = tmp_path / "cells.csv"
    pl.read_csv(city.cells).with_columns(pl.col("lat") + 0.001).write_csv(cells)
    with pytest.raises(InvalidData, match=r"the cell catalog \(--cells\) differs"):
        ingest_events(events, cells, two_weeks, _options(end_day=end, append=True))
    with pytest.raises(InvalidData, match="holds no dataset to append to"):
        ingest_events(events, city.cells, tmp_path / "none", _options(end_day=end, append=True))
    from tests.legacy_layout import write_format1

    old = write_format1(two_weeks, tmp_path / "old" / "city")
    with pytest.raises(InvalidData, match="dpflows admin upgrade-dataset --dataset city"):
        ingest_events(events, city.cells, old, _options(end_day=end, append=True))
    assert load_dataset(two_weeks).metadata.window_count == 2  # nothing was written by any of them


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dpflows.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=600, check=False)


def test_a_killed_append_leaves_the_dataset_as_it_was(city: Any, two_weeks: Path, tmp_path: Path) -> None:
    """SIGKILL while the append writes its window: CURRENT, the served files and every answer are unchanged."""
    root = two_weeks.parents[1]
    spec = make_spec("flows", dataset="city", zoning="districts", start=MON, end=MON + 2 * WEEK)
    served = version_dir(two_weeks)
    truth = prepare(spec, load_dataset(two_weeks)).true_counts
    files = {p: p.stat().st_mtime_ns for p in two_weeks.rglob("*") if p.is_file()}
    proc = subprocess.Popen([sys.executable, "-m", "dpflows.cli", "ingest", str(city.events), "--cells",
                             str(city.cells), "--out", str(two_weeks), "--first-day", str(MON), "--end-day",
                             str(MON + 4 * WEEK), "--append"], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    try:
        while not any((two_weeks / "versions").glob(".tmp-*")):  # the new version is being written
            assert proc.poll() is None, "the append finished before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.002)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert version_dir(two_weeks) == served
    assert all(p.stat().st_mtime_ns == m for p, m in files.items() if p.name != ".writer.lock")
    assert np.array_equal(prepare(spec, AggregateStore(root).get("city")).true_counts, truth)
    # the next append writes the same windows and clears what the killed one left
    ingest_events(city.events, city.cells, two_weeks, _options(end_day=MON + 4 * WEEK, append=True))
    assert load_dataset(two_weeks).metadata.window_count == 4
    assert not list((two_weeks / "versions").glob(".tmp-*"))
    assert sorted(p.name for p in (two_weeks / "windows").iterdir()) == ["0", "1", "2", "3"]
    assert all(len([d for d in (two_weeks / "windows" / w).iterdir()]) == 1 for w in ("2", "3"))


def test_a_changed_dataset_is_not_appended_to(city: Any, two_weeks: Path, tmp_path: Path) -> None:
    from dpflows.aggregates import write_aggregates
    from dpflows.ingest.appending import plan_append

    options = _options(end_day=MON + 3 * WEEK, append=True)
    plan = plan_append(two_weeks, options)
    events = _events_before(city, MON + 3 * WEEK, tmp_path / "to-25.parquet")
    ingest_events(events, city.cells, two_weeks, _options(end_day=MON + 3 * WEEK, append=True))
    frame = pl.DataFrame(schema={"day": pl.Date, "hour": pl.Int8, "origin": pl.String, "dest": pl.String,
                                 "count": pl.Int64})
    residents = pl.DataFrame(schema={"window": pl.Int32, "place": pl.String, "cell": pl.String, "count": pl.Int64})
    commuting = pl.DataFrame(schema={"window": pl.Int32, "home": pl.String, "work": pl.String, "count": pl.Int64})
    with pytest.raises(Conflict, match="changed while this append was read"):
        write_aggregates(two_weeks, plan.metadata, pl.read_parquet(version_dir(two_weeks) / "cells.parquet"), frame,
                         frame.rename({"origin": "cell"}).drop("dest"), residents=residents, commuting=commuting,
                         append_from=2, served_version=plan.served_version)


def test_local_hours_in_the_declared_time_zone(tmp_path: Path) -> None:
    """Instants become local wall times: the spring-forward day has no 02:00 hour; on the autumn day both
    02:00 hours (CEST, then CET) are local hour 2, so a person has one presence record there."""
    cells = tmp_path / "cells.csv"
    cells.write_text("cell_id,lat,lon\nA,48.85,2.35\nB,48.86,2.36\n")
    utc = [dt.datetime(2024, 3, 31, 0, 30), dt.datetime(2024, 3, 31, 1, 30),  # 01:30, 03:30 in Paris
           dt.datetime(2024, 10, 27, 0, 10), dt.datetime(2024, 10, 27, 1, 10)]  # 02:10 CEST, 02:10 CET
    events = pl.DataFrame({"person": ["p", "p", "q", "q"], "timestamp": utc, "cell_id": ["A", "B", "A", "B"]})
    events.with_columns(pl.col("timestamp").dt.replace_time_zone("UTC")).write_parquet(tmp_path / "e.parquet")
    out = ingest_events(tmp_path / "e.parquet", cells, tmp_path / "paris",
                        IngestOptions(name="paris", first_day=dt.date(2024, 3, 25), end_day=dt.date(2024, 11, 4),
                                      time_zone="Europe/Paris", report_epsilon=0, bound_presence=10))
    data = load_dataset(out)
    assert data.metadata.time_zone == "Europe/Paris"
    presence = data.frame("presence")
    hours = sorted(zip(presence["day"].to_list(), presence["hour"].to_list(), presence["count"].to_list(), strict=True))
    assert hours == [(6, 1, 1), (6, 3, 1), (216, 2, 1)]  # 2024-03-31 01h and 03h; 2024-10-27 hour 2 once
    with pytest.raises(InvalidData, match="is not an IANA time zone"):
        IngestOptions(name="x", first_day=MON, end_day=MON + WEEK, time_zone="Paris/Nowhere")
    shutil.rmtree(out)


def test_a_failed_ingestion_writes_nothing(city: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Item 7: a bad input fails before anything is counted, naming the file; a failure while writing removes
    all it wrote (no dataset directory, no zoning) and an append's failure leaves the served version alone."""
    out = tmp_path / "data" / "datasets" / "new"
    bad = tmp_path / "bad-zoning.csv"
    bad.write_text("cell_id,zone_id\nNOPE,z1\n")
    with pytest.raises(InvalidData, match=r"bad-zoning\.csv"):
        ingest_events(city.events, city.cells, out, _options(name="new", end_day=MON + 4 * WEEK,
                                                             zonings=[ZoningSpec("bad", bad)]))
    assert not out.exists()
    import dpflows.aggregate_versions as versions

    def disk_full(*args: Any, **kwargs: Any) -> str:
        raise OSError("no space left on device")

    monkeypatch.setattr(versions, "write_window", disk_full)
    with pytest.raises(OSError, match="no space left"):
        ingest_events(city.events, city.cells, out, _options(name="new", end_day=MON + 4 * WEEK,
                                                             zonings=[ZoningSpec("districts", city.districts)]))
    assert not out.exists() and list(out.parent.iterdir()) == []  # nor the ingestion's temporary files


def test_retired_windows_lose_counts_and_answers_and_keep_their_charges(city: Any, two_weeks: Path,
                                                                        tmp_path: Path) -> None:
    root = two_weeks.parents[1]
    ingest_events(_events_before(city, MON + 3 * WEEK, tmp_path / "to-25.parquet"), city.cells, two_weeks,
                  _options(end_day=MON + 3 * WEEK, append=True))
    service = Service(AggregateStore(root), SqliteLedger(tmp_path / "ledger.db"))
    planner, _ = service.create_client("planner", "planner")
    service.set_cap("city", Epsilon.parse("2"), client_id=planner.id, window=None)
    service.set_cap("city", Epsilon.parse("3"), client_id=None, window=None)
    week1 = _ask(service, planner, "flows", MON, MON + WEEK, "0.5")
    week2 = _ask(service, planner, "flows", MON + WEEK, MON + 2 * WEEK, "0.5")
    all3 = _ask(service, planner, "presence", MON, MON + 3 * WEEK, "0.25")
    spent = [service.ledger.total_charged("city", w) for w in range(3)]
    with pytest.raises(InvalidInput, match="no window of dataset 'city' ends before it"):
        service.retire_windows("city", MON + dt.timedelta(days=6))
    assert service.retire_windows("city", MON + WEEK + dt.timedelta(days=3)) == 1
    assert not (two_weeks / "windows" / "0").exists() and (two_weeks / "windows" / "1").exists()
    assert service.ledger.get_answer(week1.answer_id) is None and service.ledger.get_answer(all3.answer_id) is None
    assert service.ledger.get_answer(week2.answer_id) is not None
    assert [service.ledger.total_charged("city", w) for w in range(3)] == spent  # charges stay
    with pytest.raises(InvalidInput, match=r"retired window\(s\) \[0\] .* ask about days from 2024-03-11"):
        _ask(service, planner, "flows", MON, MON + WEEK, "0.5")
    again = _ask(service, planner, "flows", MON + WEEK, MON + 2 * WEEK, "0.5")
    assert again.reused and again.values == week2.values
    assert [e.action for e in service.ledger.read_audit(limit=1000)].count("admin.retire_windows") == 1
    data = AggregateStore(root).get("city")
    assert data.retired == frozenset({0}) and sorted(data.window_refs) == [1, 2]
    AggregateStore(root).warm()  # maps what is left, skips what is gone
