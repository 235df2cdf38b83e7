"""Shared fixtures: a small deterministic dataset written through the real aggregate store,
real ledgers (SQLite on a temporary file, in-memory), and a Service over them."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from dpflows.aggregates import (
    AggregateStore,
    DatasetMetadata,
    PlaceRule,
    load_dataset,
    read_interchange,
    version_dir,
    write_aggregates,
)
from dpflows.budget import Epsilon
from dpflows.ledger.sqlite import SqliteLedger
from dpflows.service import Service
from tests.pg_server import PgServer, PgServerError, find_bindir, in_ci

FIRST_DAY = dt.date(2024, 3, 4)  # a Monday
DAYS = 28
N_CELLS = 40


def build_small_dataset(root: Path, name: str = "small", *, bound_trips: int = 5, bound_presence: int = 20,
                        accounting: str = "pure_dp", places: bool = False, dense_limit: int = 100_000,
                        population: str | None = None) -> Path:
    """40 cells, 28 days, sparse trips with a morning peak; zonings 'districts' (8×5) and coarse 'sectors' (2×20)."""
    rng = np.random.default_rng(20240304)  # synthetic test data, not noise
    cell_ids = [f"c{i:03d}" for i in range(N_CELLS)]
    cells = pl.DataFrame({
        "cell_id": cell_ids,
        "lat": [40.0 + (i // 8) * 0.01 for i in range(N_CELLS)],
        "lon": [-74.0 + (i % 8) * 0.01 for i in range(N_CELLS)],
    })
    n = 4000
    days = rng.integers(0, DAYS, n)
    hours = np.where(rng.random(n) < 0.4, rng.integers(7, 10, n), rng.integers(0, 24, n))
    origin = rng.integers(0, N_CELLS, n)
    dest = rng.integers(0, N_CELLS, n)
    trips = (
        pl.DataFrame({
            "day": [FIRST_DAY + dt.timedelta(days=int(d)) for d in days],
            "hour": hours.astype(np.int8),
            "origin": [cell_ids[i] for i in origin],
            "dest": [cell_ids[i] for i in dest],
            "count": rng.integers(1, 4, n),
        })
        .group_by("day", "hour", "origin", "dest").agg(pl.col("count").sum())
    )
    presence = (
        pl.DataFrame({
            "day": [FIRST_DAY + dt.timedelta(days=int(d)) for d in rng.integers(0, DAYS, n)],
            "hour": rng.integers(0, 24, n).astype(np.int8),
            "cell": [cell_ids[i] for i in rng.integers(0, N_CELLS, n)],
            "count": rng.integers(1, 6, n),
        })
        .group_by("day", "hour", "cell").agg(pl.col("count").sum())
    )
    meta = DatasetMetadata(name, FIRST_DAY, FIRST_DAY + dt.timedelta(days=DAYS), 7, bound_trips, bound_presence,
                           {"kind": "synthetic-test"}, accounting, places=PlaceRule() if places else None,
                           dense_limit=dense_limit, population=population)
    residents = commuting = None
    if places:  # one home and one work cell per person-window, 300 persons over the 4 windows
        homes, works = rng.integers(0, N_CELLS, 300), rng.integers(0, N_CELLS, 300)
        rows = [(w, place, cell_ids[c]) for w in range(DAYS // 7) for place, cells_of in (("home", homes), ("work", works))
                for c in cells_of]
        residents = (pl.DataFrame(rows, schema={"window": pl.Int32, "place": pl.String, "cell": pl.String}, orient="row")
                     .group_by("window", "place", "cell").len("count").with_columns(pl.col("count").cast(pl.Int64)))
        pairs = [(w, cell_ids[h], cell_ids[k]) for w in range(DAYS // 7) for h, k in zip(homes, works, strict=True)
                 if h != k]
        commuting = (pl.DataFrame(pairs, schema={"window": pl.Int32, "home": pl.String, "work": pl.String}, orient="row")
                     .group_by("window", "home", "work").len("count").with_columns(pl.col("count").cast(pl.Int64)))
    out = write_aggregates(root / "datasets" / name, meta, cells, trips, presence, residents=residents,
                           commuting=commuting)
    store = AggregateStore(root)
    service = Service(store, SqliteLedger(root / "bootstrap-ledger.db"))
    districts = "cell_id,zone_id\n" + "".join(f"{c},d{i // 5}\n" for i, c in enumerate(cell_ids))
    sectors = "cell_id,zone_id\n" + "".join(f"{c},s{i // 20}\n" for i, c in enumerate(cell_ids))
    service.add_zoning(name, "districts", districts)
    service.add_zoning(name, "sectors", sectors, coarse=True, min_cells_per_zone=20)
    service.ledger.close()
    (root / "bootstrap-ledger.db").unlink()
    return out


def build_sparse_dataset(root: Path, name: str = "cells", population: str | None = None) -> Path:
    """The small city accounted in approximate DP with a dense limit of 1,000 keys, so that cell-level OD
    (1,600 keys) is released sparsely and district OD (64) densely; plus three cell pairs on Monday 08:00
    far from the threshold (90 at ε = 1, δ = 1e-7, L = 5): c000→c001 300 trips and c002→c003 200 (released
    unless the noise falls below -110: p < 1e-9), c004→c005 10 (released only if it rises above 80)."""
    out = build_small_dataset(root, name, accounting="approx_dp", dense_limit=1000, population=population)
    heavy = pl.DataFrame({"day": [FIRST_DAY] * 3, "hour": [8] * 3, "origin": ["c000", "c002", "c004"],
                          "dest": ["c001", "c003", "c005"], "count": [300, 200, 10]},
                         schema={"day": pl.Date, "hour": pl.Int8, "origin": pl.String, "dest": pl.String,
                                 "count": pl.Int64})
    trips = pl.concat([read_interchange(out, "trips").collect(), heavy]).group_by(
        "day", "hour", "origin", "dest").agg(pl.col("count").sum())
    write_aggregates(out, load_dataset(out).metadata, pl.read_parquet(version_dir(out) / "cells.parquet"), trips,
                     read_interchange(out, "presence").collect())
    return out


@pytest.fixture(scope="session")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A read-only data root with dataset 'small'; tests must not add zonings to it."""
    root = tmp_path_factory.mktemp("data")
    build_small_dataset(root)
    return root


@pytest.fixture(scope="session")
def report_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A read-only data root with dataset 'city': a small demo city (2 windows) ingested with a
    bounding report at ε = 0.1 and the zoning 'districts'; copy it before re-ingesting."""
    from dpflows.demo import generate_city
    from dpflows.ingest.pipeline import IngestOptions, ZoningSpec, ingest_events

    root = tmp_path_factory.mktemp("report-data")
    files = generate_city(root / "raw", persons=600, seed=3, days=14)
    ingest_events(files.events, files.cells, root / "datasets" / "city",
                  IngestOptions(**files.span, name="city", seed=7, report_epsilon="0.1",
                                zonings=[ZoningSpec("districts", files.districts)]))
    return root


@pytest.fixture
def store(data_root: Path) -> AggregateStore:
    return AggregateStore(data_root)


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[SqliteLedger]:
    led = SqliteLedger(tmp_path / "ledger.db")
    yield led
    led.close()


@pytest.fixture
def service(store: AggregateStore, ledger: SqliteLedger) -> Service:
    return Service(store, ledger)


@pytest.fixture
def planner(service: Service):
    """A planner with cap 1.0 per window and a global cap of 3.0 on 'small'."""
    client, _key = service.create_client("planner-1", "planner")
    service.set_cap("small", Epsilon.parse("1"), client_id=client.id, window=None)
    service.set_cap("small", Epsilon.parse("3"), client_id=None, window=None)
    return client


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """One PostgreSQL server for the session (see tests/pg_server.py); stopped at the end, always."""
    bindir = find_bindir()
    if bindir is None:
        reason = ("PostgreSQL server binaries (initdb, postgres) not found in $DPFLOWS_PG_BINDIR, "
                  "/usr/lib/postgresql/*/bin or on PATH; install them (scripts/bootstrap.sh does, as root)")
        if in_ci():
            pytest.fail(f"CI must run the PostgreSQL tests: {reason}", pytrace=False)
        pytest.skip(reason)
    try:
        import psycopg  # noqa: F401
        import psycopg_pool  # noqa: F401
    except ImportError as exc:
        reason = f"psycopg is not installed ({exc}); pip install -e '.[postgres]'"
        if in_ci():
            pytest.fail(f"CI must run the PostgreSQL tests: {reason}", pytrace=False)
        pytest.skip(reason)
    server = PgServer(bindir)
    try:
        server.start()
    except PgServerError as exc:
        pytest.fail(f"the PostgreSQL test server did not start: {exc}", pytrace=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def postgres_url(pg_server: PgServer) -> Iterator[str]:
    """A fresh, empty database for one test, dropped afterwards."""
    url = pg_server.create_database()
    yield url
    pg_server.drop_database(url)
