"""Issue 12: re-ingestion must never reset, shift or misread spent budget.

Each test reproduces one finding of the privacy review of the dataset lifecycle (each let a
person-window be released beyond its cap before the fix) and shows it is now refused. Where the
ledger is involved the test runs on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from dpflows.aggregates import AggregateStore, load_dataset, version_dir, write_aggregates
from dpflows.budget import Epsilon, Rho
from dpflows.errors import BudgetExceeded, Conflict, DataUnavailable, InvalidData, InvalidInput
from dpflows.ingest.pipeline import IngestOptions, ZoningSpec, ingest_events, ingest_trips_table
from dpflows.ledger import Ledger
from dpflows.ledger.sqlite import SqliteLedger
from dpflows.queries import make_spec
from dpflows.service import QueryRequest, Service

MON = dt.date(2024, 3, 4)
WEEK2 = dt.date(2024, 3, 11)
END = dt.date(2024, 3, 18)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def ledger_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], Ledger]]:
    """New handles on one durable ledger (a restarted worker, another host)."""
    opened: list[Ledger] = []

    def make() -> Ledger:
        if request.param == "sqlite":
            ledger: Ledger = SqliteLedger(tmp_path / "ledger.db")
        else:
            from dpflows.ledger.postgres import PostgresLedger

            ledger = PostgresLedger(url)
        opened.append(ledger)
        return ledger

    url = request.getfixturevalue("postgres_url") if request.param == "postgres" else ""
    yield make
    for ledger in opened:
        ledger.close()


@pytest.fixture(scope="module")
def raw(report_root: Path) -> Path:
    """The report_root city's raw files: 600 persons, 2024-03-04 .. 2024-03-17 (two weeks)."""
    return report_root / "raw"


def ingest(raw: Path, root: Path, name: str = "city", **kw: Any) -> Path:
    args: dict[str, Any] = {"first_day": MON, "end_day": END, "seed": 8, "report_epsilon": 0,
                            "zonings": [ZoningSpec("districts", raw / "zonings" / "districts.csv")], **kw}
    return ingest_events(raw / "events.parquet", raw / "cells.csv", root / "datasets" / name,
                         IngestOptions(name=name, **args))


def flows(start: dt.date, end: dt.date, epsilon: str = "1", dataset: str = "city") -> QueryRequest:
    spec = make_spec("flows", dataset=dataset, zoning="districts", start=start, end=end)
    return QueryRequest(spec, epsilon=Epsilon.parse(epsilon))


def seeded(root: Path, ledger: Ledger, cap: str = "1") -> tuple[Service, Any]:
    service = Service(AggregateStore(root), ledger)
    planner, _ = service.create_client("planner", "planner")
    service.set_cap("city", Epsilon.parse(cap), client_id=planner.id, window=None)
    service.set_cap("city", Epsilon.parse(cap), client_id=None, window=None)
    return service, planner


# 1. window indices must keep their meaning ---------------------------------------------------

def test_a_spent_week_cannot_be_spent_again_under_a_shifted_grid(raw: Path, tmp_path: Path,
                                                                ledger_factory: Callable[[], Ledger]) -> None:
    """Review: week 03-11 spent to the global cap as window 1, re-ingested from 03-11 (window 0), spent again."""
    root = tmp_path / "data"
    ingest(raw, root)
    service, planner = seeded(root, ledger_factory())
    service.answer(flows(WEEK2, END), planner)  # ε = 1 = the global cap of window 1
    with pytest.raises(BudgetExceeded):
        service.answer(flows(WEEK2, END, "0.5"), planner)

    # Into the same directory: refused at ingestion, before anything is written.
    with pytest.raises(InvalidData, match=r"first day 2024-03-04 .* use --first-day 2024-03-04"):
        _ingest_week2(raw, tmp_path, root)
    assert load_dataset(root / "datasets" / "city").metadata.first_day == MON

    # Deleted and re-ingested afresh under the same name: the ledger refuses the other grid.
    shutil.rmtree(root / "datasets" / "city")
    _ingest_week2(raw, tmp_path, root)
    fresh = Service(AggregateStore(root), ledger_factory())  # a restarted worker or another host
    with pytest.raises(Conflict, match=r"recorded for windows of 7 days from 2024-03-04"):
        fresh.answer(flows(WEEK2, END, "0.5"), planner)
    with pytest.raises(Conflict, match="new dataset name"):
        fresh.set_cap("city", Epsilon.parse("1"), client_id=None, window=None)
    with pytest.raises(Conflict):
        fresh.budget_status(planner, "city")
    ledger = ledger_factory()
    assert ledger.total_charged("city", 0) == Epsilon.zero()  # nothing was charged after the refusals
    assert ledger.total_charged("city", 1) == Epsilon.parse("1")


def _ingest_week2(raw: Path, tmp_path: Path, root: Path) -> None:
    events = tmp_path / "week2.parquet"
    pl.read_parquet(raw / "events.parquet").filter(pl.col("timestamp").dt.date() >= WEEK2).write_parquet(events)
    ingest_events(events, raw / "cells.csv", root / "datasets" / "city",
                  IngestOptions(name="city", first_day=WEEK2, end_day=END, seed=8, report_epsilon=0,
                                zonings=[ZoningSpec("districts", raw / "zonings" / "districts.csv")]))


def test_another_window_length_is_refused(raw: Path, tmp_path: Path, ledger_factory: Callable[[], Ledger]) -> None:
    root = tmp_path / "data"
    ingest(raw, root)
    service, planner = seeded(root, ledger_factory())
    service.answer(flows(MON, WEEK2), planner)
    with pytest.raises(InvalidData, match="window length in days 7 and this ingestion asks for 14"):
        ingest(raw, root, window_days=14)
    shutil.rmtree(root / "datasets" / "city")
    ingest(raw, root, window_days=14)
    with pytest.raises(Conflict, match="windows of 7 days"):
        Service(AggregateStore(root), ledger_factory()).answer(flows(MON, WEEK2), planner)


# 2. caps and spending carry their unit ------------------------------------------------------

def test_a_pure_dp_cap_never_becomes_a_rho_cap(raw: Path, tmp_path: Path,
                                              ledger_factory: Callable[[], Ledger]) -> None:
    """Review: re-ingested with --accounting zcdp, the ε = 1 cap was read as ρ = 1 (ε 8.98 at δ 1e-8)."""
    root = tmp_path / "data"
    ingest(raw, root)
    service, planner = seeded(root, ledger_factory())
    service.answer(flows(MON, WEEK2, "0.5"), planner)
    with pytest.raises(InvalidData, match="accounting pure_dp and this ingestion asks for zcdp"):
        ingest(raw, root, accounting="zcdp")
    shutil.rmtree(root / "datasets" / "city")
    ingest(raw, root, accounting="zcdp")
    fresh = Service(AggregateStore(root), ledger_factory())
    spec = make_spec("flows", dataset="city", zoning="districts", start=MON, end=WEEK2)
    with pytest.raises(Conflict, match=r"budgets in epsilon, but its data now has .* budgets in rho"):
        fresh.answer(QueryRequest(spec, epsilon=Rho.parse("0.5")), planner)
    with pytest.raises(Conflict):
        fresh.set_cap("city", Rho.parse("1"), client_id=None, window=None)


def test_a_dataset_keeps_its_population_for_life(raw: Path, tmp_path: Path,
                                                ledger_factory: Callable[[], Ledger]) -> None:
    """Issue 17: a dataset moved to another population would spend a person-week again on fresh caps."""
    root = tmp_path / "data"
    ingest(raw, root)  # no --population: the data root's default
    assert load_dataset(root / "datasets" / "city").metadata.population is None
    service, planner = seeded(root, ledger_factory())
    service.answer(flows(MON, WEEK2), planner)  # window 0 spent to the population's global cap
    with pytest.raises(InvalidData, match=r"keeps its population for life.*use no --population"):
        ingest(raw, root, population="elsewhere")
    shutil.rmtree(root / "datasets" / "city")
    ingest(raw, root, population="elsewhere")
    assert load_dataset(root / "datasets" / "city").metadata.population == "elsewhere"
    fresh = Service(AggregateStore(root), ledger_factory())
    with pytest.raises(Conflict, match=r"recorded in population 'default'.*--population default"):
        fresh.answer(flows(MON, WEEK2, "0.5"), planner)
    # a second dataset of the same people, ingested without --population, shares the spent week
    ingest(raw, root, name="city2")
    fresh.set_cap("city2", Epsilon.parse("1"), client_id=planner.id, window=None)
    with pytest.raises(BudgetExceeded, match="global budget"):
        fresh.answer(flows(MON, WEEK2, "0.5", dataset="city2"), planner)
    assert fresh.ledger.total_charged("city2", 0) == Epsilon.zero()


def test_the_ledger_refuses_a_cap_in_another_measure(ledger_factory: Callable[[], Ledger]) -> None:
    from dpflows.ledger import DatasetGrid

    ledger = ledger_factory()
    grid = DatasetGrid("d", "2024-03-04", 7, "epsilon")
    ledger.set_cap("d", Epsilon.parse("1"), client_id=None, window=None, grid=grid)
    with pytest.raises(InvalidInput, match="budgets are in epsilon; send the cap as epsilon"):
        ledger.set_cap("d", Rho.parse("1"), client_id=None, window=None)
    with pytest.raises(Conflict):
        ledger.register_dataset(DatasetGrid("d", "2024-03-04", 7, "rho"))
    assert ledger.dataset_grid("d") == grid


# 3. re-ingestion is atomic ------------------------------------------------------------------

def test_a_loader_never_pairs_old_bounds_with_new_counts(raw: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Review: a worker loading between the Parquet overwrite and metadata.json answered at ~15× the ε charged."""
    root = tmp_path / "data"
    ingest(raw, root, bound_trips=2)
    store = AggregateStore(root)
    assert store.get("city").metadata.bound_trips == 2

    # An ingestion that dies just before its switch leaves the served version whole and alone.
    real_replace = Path.replace

    def crash_on_switch(self: Path, target: Any) -> Path:
        if Path(target).name == "CURRENT":
            raise OSError("killed before the switch")
        return real_replace(self, target)

    monkeypatch.setattr(Path, "replace", crash_on_switch)
    with pytest.raises(OSError, match="killed"):
        ingest(raw, root, bound_trips=30)
    monkeypatch.undo()
    store.forget("city")
    data = store.get("city")
    assert data.metadata.bound_trips == 2 and int(data.frame("trips")["count"].sum()) > 0
    assert all(load_dataset(root / "datasets" / "city").metadata.bound_trips == 2 for _ in range(2))

    # The switch is one rename: running workers pick up the new version whole, without a restart.
    ingest(raw, root, bound_trips=30)
    new = store.get("city")
    assert new.metadata.bound_trips == 30 and new.version != data.version

    # Counts of one version under another's metadata (a torn copy, a bad sync) are refused.
    for window, ref in data.window_refs.items():
        for f in ("trips.arrow", "presence.arrow"):
            shutil.copy(ref.path / f, new.window_refs[window].path / f)
    store.forget("city")
    with pytest.raises(DataUnavailable, match=r"does not belong to its metadata\.json"):
        store.get("city").window(0)
    service, planner = seeded(root, SqliteLedger(tmp_path / "damaged.db"))  # a worker started after the damage
    with pytest.raises(DataUnavailable, match=r"does not belong to its metadata\.json"):
        service.answer(flows(MON, WEEK2), planner)
    assert service.ledger.total_charged("city", 0) == Epsilon.zero()


def test_old_versions_are_pruned_and_failed_writes_leave_nothing(raw: Path, tmp_path: Path) -> None:
    root = tmp_path / "data"
    for bound in (2, 3, 4):
        ingest(raw, root, bound_trips=bound)
    versions = sorted(p.name for p in (root / "datasets" / "city" / "versions").iterdir())
    assert len(versions) == 2 and not any(v.startswith(".tmp") for v in versions)  # the current and the previous


# 4. the span is declared, never measured ----------------------------------------------------

def test_one_person_alone_on_a_day_changes_nothing_published(raw: Path, tmp_path: Path) -> None:
    """Review: one person alone on 03-18 changed the published end day and window count."""
    events = pl.read_parquet(raw / "events.parquet")
    lone = events.head(3).with_columns(pl.lit(10**9).cast(events.schema["person"]).alias("person"),
                                      (pl.col("timestamp").dt.truncate("1d") + pl.duration(days=14, hours=9)
                                       + pl.duration(minutes=pl.int_range(pl.len()) * 40)).alias("timestamp"))
    with_her = tmp_path / "with.parquet"
    pl.concat([events, lone.select(events.columns)]).write_parquet(with_her)
    metas = []
    for name, path in (("without", raw / "events.parquet"), ("with", with_her)):
        out = ingest_events(path, raw / "cells.csv", tmp_path / name,
                            IngestOptions(name=name, first_day=MON, end_day=END + dt.timedelta(days=1), seed=1,
                                          report_epsilon=0))
        metas.append(load_dataset(out).metadata)
    assert [(m.first_day, m.end_day, m.window_count) for m in metas] == [(MON, dt.date(2024, 3, 19), 3)] * 2
    with pytest.raises(InvalidData, match=r"fall on or after --end-day 2024-03-18"):
        ingest_events(with_her, raw / "cells.csv", tmp_path / "x",
                      IngestOptions(name="x", first_day=MON, end_day=END, seed=1))
    with pytest.raises(InvalidData, match=r"--first-day and --end-day .* are required"):
        ingest_events(raw / "events.parquet", raw / "cells.csv", tmp_path / "y", IngestOptions(name="y", seed=1))


def test_the_ingest_command_requires_the_declared_days(raw: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    from dpflows.cli import main

    args = ["ingest", str(raw / "events.parquet"), "--cells", str(raw / "cells.csv"), "--out", str(tmp_path / "c")]
    with pytest.raises(SystemExit):
        main(args)
    assert "the following arguments are required: --end-day" in capsys.readouterr().err
    # --first-day may be left out only by an append (the dataset's own is taken); else it is required
    assert main([*args, "--end-day", str(END)]) == 2
    assert "--first-day and --end-day (exclusive) are required" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


# 5. a dataset's name is its folder's -------------------------------------------------------

def test_a_dataset_is_served_only_under_its_own_name(raw: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """Review: city2 ingested with --name city had its report charged to 'city' and reached ε 1.5 under 1."""
    from dpflows.cli import main

    root = tmp_path / "data"
    ingest(raw, root)
    out = ingest_events(raw / "events.parquet", raw / "cells.csv", root / "datasets" / "city2",
                        IngestOptions(name="city", first_day=MON, end_day=END, seed=2, report_epsilon="0.5"))
    assert load_dataset(out).metadata.name == "city"
    with pytest.raises(DataUnavailable, match="re-ingest it with --name city2"):
        AggregateStore(root).get("city2")
    code = main(["ingest", str(raw / "events.parquet"), "--cells", str(raw / "cells.csv"), "--out",
                 str(root / "datasets" / "city3"), "--name", "city", "--first-day", str(MON), "--end-day", str(END)])
    assert code == 2 and "differs from the --out folder 'city3'" in capsys.readouterr().err
    assert not (root / "datasets" / "city3").exists()


# 6. persons are never null ----------------------------------------------------------------

@pytest.mark.parametrize("empty", [None, "", "  "])
def test_empty_person_ids_in_a_trips_table_are_refused(raw: Path, tmp_path: Path, empty: str | None) -> None:
    """Review: empty ids were bounded as one person: ℓ1 = 8 with L = 4."""
    trips = pl.DataFrame({
        "person": ["a", empty, empty, "b"],
        "timestamp": ["2024-03-04 08:00:00", "2024-03-04 09:00:00", "2024-03-04 10:00:00", "2024-03-04 11:00:00"],
        "origin": ["C0101"] * 4, "dest": ["C0102"] * 4,
    }, schema={"person": pl.String, "timestamp": pl.String, "origin": pl.String, "dest": pl.String})
    with pytest.raises(InvalidData, match=r"column 'person' is empty in rows \[2, 3\]") as info:
        ingest_trips_table(trips, raw / "cells.csv", tmp_path / "t",
                           IngestOptions(name="t", first_day=MON, end_day=END, bound_trips=4, input_format="trips"))
    assert info.value.field == "person"
    assert not (tmp_path / "t").exists()


def test_empty_person_ids_in_events_are_refused(raw: Path, tmp_path: Path) -> None:
    events = pl.read_parquet(raw / "events.parquet").head(20).with_columns(pl.col("person").cast(pl.String))
    events = events.with_columns(pl.when(pl.int_range(pl.len()) == 4).then(pl.lit("")).otherwise(pl.col("person"))
                                 .alias("person"))
    path = tmp_path / "e.parquet"
    events.write_parquet(path)
    with pytest.raises(InvalidData, match=r"column 'person' is empty in rows \[5\]"):
        ingest_events(path, raw / "cells.csv", tmp_path / "e", IngestOptions(name="e", first_day=MON, end_day=END))


# 7. the service needs a durable ledger ---------------------------------------------------

def test_the_http_app_refuses_an_in_memory_ledger(data_root: Path) -> None:
    from api import create_app

    with pytest.raises(InvalidInput, match="memory:// keeps no budget"):
        create_app({"DPFLOWS_DATA_DIR": str(data_root), "DPFLOWS_LEDGER_URL": "memory://"})


# migration: existing ledgers keep every charge ----------------------------------------------

def test_a_ledger_from_before_grids_migrates_without_losing_a_charge(raw: Path, tmp_path: Path) -> None:
    root = tmp_path / "data"
    ingest(raw, root)
    path = tmp_path / "old.db"
    service, planner = seeded(root, SqliteLedger(path))
    service.answer(flows(MON, WEEK2, "0.5"), planner)
    service.ledger.close()
    with sqlite3.connect(path) as conn:  # the ledger as the previous release left it: no datasets table
        conn.execute("DROP TABLE datasets")
    reopened = SqliteLedger(path)
    assert reopened.total_charged("city", 0) == Epsilon.parse("0.5")
    assert reopened.dataset_grid("city") is None
    again = Service(AggregateStore(root), reopened)
    again.answer(flows(MON, WEEK2, "0.25"), planner)  # registers the grid the data has now
    assert reopened.total_charged("city", 0) == Epsilon.parse("0.75")
    grid = reopened.dataset_grid("city")
    assert grid is not None and (grid.first_day, grid.window_days, grid.measure) == ("2024-03-04", 7, "epsilon")


@pytest.mark.postgres
def test_postgres_migration_2_keeps_every_charge(postgres_url: str) -> None:
    import psycopg

    from dpflows.ledger.postgres import MIGRATIONS, PostgresLedger

    with psycopg.connect(postgres_url, autocommit=True) as conn:  # a database at schema version 1
        conn.execute("CREATE TABLE dpflows_schema (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)")
        for statement in MIGRATIONS[0][1]:
            conn.execute(statement)
        conn.execute("INSERT INTO dpflows_schema VALUES (1, now()::text)")
        conn.execute("INSERT INTO charges (client_id, dataset, win, nanos, answer_id, at) "
                     "VALUES (1, 'city', 0, 500000000, 'a', 'then')")
    ledger = PostgresLedger(postgres_url)
    try:
        assert ledger.migration_steps_applied >= 1
        assert ledger.total_charged("city", 0) == Epsilon.parse("0.5")
        assert ledger.dataset_grid("city") is None
    finally:
        ledger.close()


def test_write_aggregates_checks_the_grid_of_what_it_replaces(tmp_path: Path) -> None:
    from dpflows.aggregates import DatasetMetadata

    cells = pl.DataFrame({"cell_id": ["a"], "lat": [0.0], "lon": [0.0]})
    trips = pl.DataFrame(schema={"day": pl.Date, "hour": pl.Int8, "origin": pl.String, "dest": pl.String,
                                 "count": pl.Int64})
    presence = pl.DataFrame(schema={"day": pl.Date, "hour": pl.Int8, "cell": pl.String, "count": pl.Int64})
    meta = DatasetMetadata("d", MON, END, 7, 5, 5)
    write_aggregates(tmp_path / "d", meta, cells, trips, presence)
    longer = DatasetMetadata("d", MON, END + dt.timedelta(days=7), 7, 9, 9)  # more days, other bounds: fine
    write_aggregates(tmp_path / "d", longer, cells, trips, presence)
    assert load_dataset(tmp_path / "d").metadata.window_count == 3
    doc = json.loads((version_dir(tmp_path / "d") / "metadata.json").read_text())
    assert set(doc["files"]) == {"cells.parquet"} and sorted(doc["windows"]) == ["0", "1", "2"]
    with pytest.raises(InvalidData, match="--first-day"):
        write_aggregates(tmp_path / "d", DatasetMetadata("d", WEEK2, END, 7, 5, 5), cells, trips, presence)
