"""Issue 19: an operator's real data. The unit is a fact of the dataset; Citi Bike files ingest as published,
with what was dropped reported to the operator alone; presence on a trips table is refused before any charge."""

from __future__ import annotations

import datetime as dt
import gzip
import json
import stat
from pathlib import Path

import pytest

from dpflows.aggregates import AggregateStore, load_dataset, version_dir
from dpflows.budget import Epsilon
from dpflows.cli import main
from dpflows.errors import InvalidInput, NotFound
from dpflows.ledger.sqlite import SqliteLedger
from dpflows.queries import make_spec
from dpflows.service import QueryRequest, Service

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "citibike-nyc-2017"
DAY1, DAY2 = SHARED / "trips-2017-04-18.csv.gz", SHARED / "trips-2017-05-21.csv.gz"


def with_planted_rows(tmp_path: Path) -> Path:
    """The 2017-04-18 file plus a trip at a station that does not exist, a bad time and a duplicate."""
    lines = gzip.open(DAY1, "rt").read().splitlines()
    planted = [lines[1].split(",")[0] + ",300,999999,3423,1,1980", "not-a-time,300,72,79,1,1980", lines[1]]
    out = tmp_path / "trips-planted.csv"
    out.write_text("\n".join(lines + planted) + "\n")
    return out


def test_citibike_files_ingest_as_published_and_the_unit_is_the_trip(tmp_path: Path, capsys) -> None:
    planted = with_planted_rows(tmp_path)
    out = tmp_path / "data" / "datasets" / "bikes"
    report = tmp_path / "dropped.txt"
    code = main(["ingest", str(planted), str(DAY2), "--input-format", "citibike", "--cells", str(SHARED / "stations.csv"),
                 "--out", str(out), "--first-day", "2017-04-17", "--end-day", "2017-05-22", "--drop-report", str(report)])
    assert code == 0
    err = capsys.readouterr().err
    assert "dropped 1 (" in err and "station missing from stations.csv" in err and "duplicate rows" in err
    assert "unparseable start_ts" in err
    assert stat.S_IMODE(report.stat().st_mode) == 0o600 and "station missing" in report.read_text()
    data = load_dataset(out)
    meta = data.metadata
    assert meta.privacy_unit == "trip" and meta.bound_trips == 1  # one trip per unit: bound 1 by default
    doc = json.loads((version_dir(out) / "metadata.json").read_text())
    assert "dropped" not in json.dumps(doc) and doc["privacy_unit"] == {"kind": "trip"}  # shares stay out
    assert int(data.frame("trips")["count"].sum()) > 1000


def test_strict_makes_any_drop_an_error(tmp_path: Path, capsys) -> None:
    code = main(["ingest", str(with_planted_rows(tmp_path)), "--input-format", "citibike", "--cells",
                 str(SHARED / "stations.csv"), "--out", str(tmp_path / "x"), "--first-day", "2017-04-18",
                 "--end-day", "2017-04-19", "--strict"])
    assert code == 2 and "--strict: rows were dropped" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_every_answer_states_the_trip_unit_and_presence_is_refused_before_any_charge(tmp_path: Path) -> None:
    out = tmp_path / "datasets" / "bikes"
    assert main(["ingest", str(DAY1), "--input-format", "citibike", "--cells", str(SHARED / "stations.csv"),
                 "--out", str(out), "--first-day", "2017-04-17", "--end-day", "2017-04-24"]) == 0
    service = Service(AggregateStore(tmp_path), SqliteLedger(tmp_path / "l.db"))
    planner, _ = service.create_client("p", "planner")
    service.set_cap("bikes", Epsilon.parse("1"), client_id=planner.id, window=None)
    service.set_cap("bikes", Epsilon.parse("1"), client_id=None, window=None)
    week = {"dataset": "bikes", "zoning": "cell", "start": dt.date(2017, 4, 17), "end": dt.date(2017, 4, 24)}
    flows = service.answer(QueryRequest(make_spec("outflows", **week), epsilon=Epsilon.parse("0.5")), planner)
    assert flows.privacy_unit == "trip" and flows.sensitivity == 1
    with pytest.raises(InvalidInput, match="holds no presence"):
        service.answer(QueryRequest(make_spec("presence", **week), epsilon=Epsilon.parse("0.1")), planner)
    with pytest.raises(InvalidInput, match="holds no presence"):
        service.quote(QueryRequest(make_spec("presence", **week), epsilon=Epsilon.parse("0.1")), planner)
    with pytest.raises(NotFound, match="each trip is its own privacy unit"):
        service.bounding_report("bikes", planner)
    assert service.ledger.total_charged("bikes", 0) == Epsilon.parse("0.5")


def test_coverage_is_declared_and_answers_say_which_days_count(tmp_path: Path) -> None:
    """A dataset of two non-consecutive days: the empty days are declared, not measured; asking only them is
    refused before any charge, and an answer over a range says which of its days count nothing."""
    out = tmp_path / "datasets" / "bikes"
    assert main(["ingest", str(DAY1), str(DAY2), "--input-format", "citibike", "--cells", str(SHARED / "stations.csv"),
                 "--out", str(out), "--first-day", "2017-04-17", "--end-day", "2017-05-22",
                 "--days", "2017-04-18,2017-05-21"]) == 0
    meta = load_dataset(out).metadata
    assert len(meta.missing_days) == 35 - 2 and meta.holds(dt.date(2017, 4, 18)) and not meta.holds(dt.date(2017, 4, 19))
    service = Service(AggregateStore(tmp_path), SqliteLedger(tmp_path / "l.db"))
    planner, _ = service.create_client("p", "planner")
    service.set_cap("bikes", Epsilon.parse("1"), client_id=planner.id, window=None)
    service.set_cap("bikes", Epsilon.parse("1"), client_id=None, window=None)
    empty = make_spec("outflows", dataset="bikes", zoning="cell", start=dt.date(2017, 4, 24), end=dt.date(2017, 5, 1))
    with pytest.raises(InvalidInput, match="holds none of the days asked"):
        service.answer(QueryRequest(empty, epsilon=Epsilon.parse("0.5")), planner)
    assert all(service.ledger.total_charged("bikes", w) == Epsilon.zero() for w in range(5))
    week = make_spec("outflows", dataset="bikes", zoning="cell", start=dt.date(2017, 4, 17), end=dt.date(2017, 4, 24))
    answer = service.answer(QueryRequest(week, epsilon=Epsilon.parse("0.5")), planner)
    assert answer.uncovered_days is not None and "2017-04-19" in answer.uncovered_days
    assert "2017-04-18" not in answer.uncovered_days and len(answer.uncovered_days) == 6
    # a row on an undeclared day stops ingestion, naming the flag
    assert main(["ingest", str(DAY1), "--input-format", "citibike", "--cells", str(SHARED / "stations.csv"),
                 "--out", str(tmp_path / "y"), "--first-day", "2017-04-17", "--end-day", "2017-04-24",
                 "--days", "2017-04-19"]) == 2
    assert not (tmp_path / "y").exists()
