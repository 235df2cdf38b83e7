"""Issue 19's leftovers: events from several files at once (daily files), appends without --first-day,
and every bad input refused with the file, the column and the fix, leaving the data root as it was.

Through the real pipeline and the real `dpflows ingest` command (in process: `main` is the console
script's entry point), on a small demo city written to real CSV and Parquet files.
"""

from __future__ import annotations

import datetime as dt
import gzip
from dataclasses import replace
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from dpflows.aggregates import load_dataset, read_interchange
from dpflows.cli import main
from dpflows.demo import generate_city
from dpflows.errors import InvalidData
from dpflows.ingest.pipeline import IngestOptions, ingest_events

MON = dt.date(2024, 3, 4)
DAY = dt.timedelta(days=1)
MEASURES = {"trips": ["day", "hour", "origin", "dest"], "presence": ["day", "hour", "cell"],
            "residents": ["window", "place", "cell"], "commuting": ["window", "home", "work"]}


@pytest.fixture(scope="module")
def city(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return generate_city(tmp_path_factory.mktemp("daily-city"), persons=200, seed=7, days=14, start=MON)


@pytest.fixture(scope="module")
def daily(city: Any, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """The city's events as 14 daily files, as an operator's export writes them: even days Parquet, odd days CSV."""
    where = tmp_path_factory.mktemp("daily")
    events = pl.read_parquet(city.events)
    files = []
    for k in range(14):
        day = events.filter(pl.col("timestamp").dt.date() == MON + k * DAY)
        path = where / f"events-{MON + k * DAY}.{'parquet' if k % 2 == 0 else 'csv'}"
        if k % 2 == 0:
            day.write_parquet(path)
        else:
            day.write_csv(path)
        files.append(path)
    return files


def _same_aggregates(a: Path, b: Path) -> None:
    for name, keys in MEASURES.items():
        left, right = (read_interchange(out, name).collect().sort(keys) for out in (a, b))
        assert left.height > 0 and left.equals(right), name


def _tree(root: Path) -> list[tuple[str, int, int]]:
    """Every file and directory under `root` with its size and modification time: 'untouched' means equal."""
    if not root.exists():
        return []
    return sorted((str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*"))


def _ingest(*args: str | Path) -> int:
    return main(["ingest", *map(str, args), "--report-epsilon", "0"])


def test_daily_files_give_the_dataset_of_the_one_file_holding_them(city: Any, daily: list[Path],
                                                                   tmp_path: Path) -> None:
    """Parquet days only: the same persons (integers) and times, so the very same counts (bounds active), with
    one bucket or several."""
    options = IngestOptions(name="city", first_day=MON, end_day=MON + 14 * DAY, seed=11, report_epsilon="0",
                            missing_days=[MON + k * DAY for k in range(1, 14, 2)])
    parquet_days = [p for p in daily if p.suffix == ".parquet"]
    pl.read_parquet(parquet_days).write_parquet(tmp_path / "even-days.parquet")
    one = ingest_events(tmp_path / "even-days.parquet", city.cells, tmp_path / "one" / "city", options)
    several = ingest_events(parquet_days, city.cells, tmp_path / "several" / "city", options)
    _same_aggregates(one, several)
    four = ingest_events(parquet_days, city.cells, tmp_path / "four" / "city", replace(options, buckets=4))
    _same_aggregates(one, four)
    assert load_dataset(several).metadata.window_count == 2


def test_the_cli_reads_csv_and_parquet_daily_files_together(city: Any, daily: list[Path], tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """Mixed formats: persons read as text from the CSV days and as integers from the Parquet ones are one
    person (compared as text), so the dataset is the one made from a single CSV of every day."""
    one_csv = tmp_path / "all.csv"
    pl.read_parquet(city.events).write_csv(one_csv)
    root = tmp_path / "data" / "datasets"
    span = ["--first-day", str(MON), "--end-day", str(MON + 14 * DAY)]
    assert _ingest(one_csv, "--cells", city.cells, "--out", root / "one", *span) == 0
    assert _ingest(*daily, "--cells", city.cells, "--out", root / "daily", *span) == 0
    assert "written to" in capsys.readouterr().out
    one, days = load_dataset(root / "one"), load_dataset(root / "daily")
    for name in ("trips", "presence"):  # seeds differ (drawn): totals of the inactive-bound measures agree
        totals = [read_interchange(out, name).select(pl.col("count").sum()).collect().item()
                  for out in (root / "one", root / "daily")]
        assert totals[0] == totals[1] > 0, name
    assert one.metadata.window_count == days.metadata.window_count == 2


def test_errors_name_the_file_and_its_row_and_write_nothing(city: Any, daily: list[Path], tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "data"
    (root / "datasets").mkdir(parents=True)
    (root / "keep.txt").write_text("the operator's")
    before = _tree(root)
    out = root / "datasets" / "city"
    bad_cell = tmp_path / "events-bad-cell.csv"
    day = pl.read_csv(daily[1])
    day.with_columns(pl.when(pl.int_range(pl.len()) == 2).then(pl.lit("NOPE")).otherwise(pl.col("cell_id"))
                     .alias("cell_id")).write_csv(bad_cell)
    empty = tmp_path / "events-empty.csv"
    day.head(0).write_csv(empty)
    truncated = tmp_path / "events-truncated.csv.gz"
    truncated.write_bytes(gzip.compress(daily[3].read_bytes())[:2000])
    wrong = tmp_path / "events-wrong-types.parquet"
    pl.read_parquet(daily[0]).with_columns(pl.col("timestamp").dt.epoch("s")).write_parquet(wrong)
    folder = tmp_path / "exports"
    folder.mkdir()
    cases = [
        ([daily[0], bad_cell, daily[2]], "events-bad-cell.csv: column 'cell_id' holds values missing from the cell "
         "catalog in rows [3]; check the column order, add the cells to the catalog or drop those rows"),
        ([daily[0], empty], "events-empty.csv: no rows; remove it from the files given"),
        ([daily[0], truncated], "events-truncated.csv.gz: cannot be read as gzip-compressed CSV (truncated or "
         "corrupt?); export it again"),
        ([daily[0], wrong], "events-wrong-types.parquet: column 'timestamp' has type Int64; it must hold datetimes: "
         "write it as a Parquet timestamp or as ISO 8601 text"),
        ([daily[0], folder], "exports: is a directory; give the files in it"),
        ([daily[0], daily[0]], f"{daily[0].name}: given twice; each file's rows would be counted twice"),
        ([daily[0], tmp_path / "nowhere.csv"], "nowhere.csv: file not found; check the path"),
    ]
    for files, message in cases:
        assert _ingest(*files, "--cells", city.cells, "--out", out, "--first-day", str(MON), "--end-day",
                       str(MON + 14 * DAY), "--days", f"{MON}..{MON + 2 * DAY}") == 2
        err = capsys.readouterr().err
        assert err.startswith("dpflows: error: ") and message in err, err
        assert "Traceback" not in err
        assert _tree(root) == before, message
    with pytest.raises(InvalidData) as info:  # the Python API says the same, with the field
        ingest_events([daily[0], bad_cell], city.cells, out, IngestOptions(name="city", first_day=MON,
                                                                           end_day=MON + 2 * DAY))
    assert info.value.field == "cell_id" and "events-bad-cell.csv" in info.value.message


def test_daily_appends_take_the_datasets_first_day(city: Any, daily: list[Path], tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """The docs/admin.md walk: week 1 from its daily files, then each day's append with the files so far,
    without --first-day; a different --first-day, an --end-day inside the served span, a bad time zone and
    an append to no dataset are refused, naming the flag and the fix, with the data root untouched."""
    out = tmp_path / "data" / "datasets" / "city"
    cells = ["--cells", str(city.cells)]
    assert _ingest(*daily[:7], *cells, "--out", out, "--first-day", str(MON), "--end-day", str(MON + 7 * DAY),
                   "--time-zone", "Europe/Paris") == 0
    week1 = load_dataset(out).window_refs[0]
    capsys.readouterr()
    # day 10: three days of week 2 in: held, nothing written, exit 0
    before = _tree(out.parents[1])
    assert _ingest(*daily[7:10], *cells, "--out", out, "--end-day", str(MON + 10 * DAY), "--append") == 0
    assert "nothing appended: --append: window 1 (2024-03-11..2024-03-17) is not complete" in capsys.readouterr().err and _tree(out.parents[1]) == before
    refusals = [
        (["--first-day", str(MON + DAY)], "--append: dataset 'city' starts 2024-03-04; drop --first-day or give "
         "--first-day 2024-03-04"),
        (["--end-day", str(MON + 5 * DAY)], "--end-day 2024-03-09 adds no day after the served windows"),
        (["--time-zone", "Paris/Nowhere"], "time_zone='Paris/Nowhere' is not an IANA time zone"),
        (["--time-zone", "UTC"], "was ingested with time zone 'Europe/Paris' and this append asks for 'UTC'"),
    ]
    for extra, message in refusals:
        flags = ["--end-day", str(MON + 14 * DAY), *extra] if "--end-day" not in extra else extra
        assert _ingest(*daily[7:], *cells, "--out", out, "--append", *flags) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err
        assert _tree(out.parents[1]) == before
    truncated = tmp_path / "events-2024-03-12.csv.gz"
    truncated.write_bytes(gzip.compress(daily[8 + 1].read_bytes())[:3000])
    assert _ingest(daily[7], truncated, *cells, "--out", out, "--end-day", str(MON + 14 * DAY), "--append") == 2
    err = capsys.readouterr().err
    assert "events-2024-03-12.csv.gz: cannot be read as gzip-compressed CSV" in err and "Traceback" not in err, err
    assert _tree(out.parents[1]) == before
    assert _ingest(*daily[7:], *cells, "--out", tmp_path / "none" / "city", "--end-day", str(MON + 14 * DAY),
                   "--append") == 2
    assert "holds no dataset to append to; ingest its first windows without --append" in capsys.readouterr().err
    assert not (tmp_path / "none").exists()
    assert _ingest(*daily[7:], *cells, "--out", out, "--end-day", str(MON + 14 * DAY)) == 2  # not appending
    assert "--first-day and --end-day (exclusive) are required" in capsys.readouterr().err
    # day 14: week 2 complete; the files of week 1 given again are late rows, left out and reported as a share
    assert _ingest(*daily, *cells, "--out", out, "--end-day", str(MON + 14 * DAY), "--append") == 0
    captured = capsys.readouterr()
    assert "appended to" in captured.out and "late: " in captured.err
    data = load_dataset(out)
    assert data.metadata.window_count == 2 and data.metadata.first_day == MON
    assert data.window_refs[0] == week1


def test_an_appended_files_bad_row_is_numbered_in_its_file(city: Any, daily: list[Path], tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """Late rows are left out before the checks, yet a bad row is named by its number in its own file."""
    out = tmp_path / "data" / "datasets" / "city"
    assert _ingest(*daily[:7], "--cells", city.cells, "--out", out, "--first-day", str(MON), "--end-day",
                   str(MON + 7 * DAY)) == 0
    late_then_new = tmp_path / "resent-and-new.csv"
    rows = pl.concat([pl.read_csv(daily[5]).head(4), pl.read_csv(daily[9]).head(3)])  # rows 1-4 late
    rows.with_columns(pl.when(pl.int_range(pl.len()) == 5).then(pl.lit("NOPE")).otherwise(pl.col("cell_id"))
                      .alias("cell_id")).write_csv(late_then_new)
    before = _tree(out.parents[1])
    capsys.readouterr()
    assert _ingest(daily[7], daily[8], late_then_new, *daily[10:], "--cells", city.cells, "--out", out, "--end-day",
                   str(MON + 14 * DAY), "--append") == 2
    err = capsys.readouterr().err
    assert "resent-and-new.csv: column 'cell_id' holds values missing from the cell catalog in rows [6]" in err, err
    assert _tree(out.parents[1]) == before
    # week 1's files resent first (all their rows late, none left to check): the bad file is still the one named
    assert _ingest(*daily[:7], late_then_new, *daily[10:], "--cells", city.cells, "--out", out, "--end-day",
                   str(MON + 14 * DAY), "--append") == 2
    err = capsys.readouterr().err
    assert "resent-and-new.csv: column 'cell_id' holds values missing from the cell catalog in rows [6]" in err, err
    assert _tree(out.parents[1]) == before


CITIBIKE = Path(__file__).resolve().parents[3] / "shared" / "data" / "citibike-nyc-2017"


def test_trips_and_citibike_inputs_refuse_bad_files_naming_them(city: Any, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """The other input formats: unreadable, empty or mistyped files, a bad stations.csv or an unwritable drop
    report stop the command with one line naming the file or flag and the fix; nothing under the data root."""
    root = tmp_path / "data"
    (root / "datasets").mkdir(parents=True)
    before = _tree(root)
    out = root / "datasets" / "bikes"
    day = ["--first-day", "2017-04-18", "--end-day", "2017-04-19"]
    trips = tmp_path / "trips.csv.gz"
    whole = gzip.compress(b"timestamp,origin,dest\n" + b"2024-03-04 08:00:00,C0101,C0102\n" * 2000)
    trips.write_bytes(whole[:len(whole) // 2])
    typed = tmp_path / "trips.parquet"
    pl.DataFrame({"timestamp": [1, 2], "origin": ["C0101", "C0102"], "dest": ["C0102", "C0101"]}).write_parquet(typed)
    stations = tmp_path / "stations.csv"
    stations.write_text("id,lat,lon\n1,40.7,-74.0\n")
    empty_day = tmp_path / "trips-2017-04-19.csv"
    empty_day.write_text("start_ts,start_station,end_station\n")
    published = CITIBIKE / "trips-2017-04-18.csv.gz"
    cases = [
        ([trips, "--input-format", "trips", "--cells", city.cells, "--first-day", str(MON), "--end-day",
          str(MON + DAY)], "trips.csv.gz: cannot be read as gzip-compressed CSV (truncated or corrupt?)"),
        ([typed, "--input-format", "trips", "--cells", city.cells, "--first-day", str(MON), "--end-day",
          str(MON + DAY)], "trips.parquet: column 'timestamp' has type Int64; it must hold datetimes"),
        ([trips, typed, "--input-format", "trips", "--cells", city.cells, *day],
         "--input-format trips reads one trips table; give one path"),
        ([published, "--input-format", "citibike", "--cells", stations, *day],
         "stations.csv: not a Citi Bike stations CSV with columns station_id, latitude, longitude"),
        ([published, "--input-format", "citibike", "--cells", tmp_path / "no-stations.csv", *day],
         "no-stations.csv: file not found; give the published stations.csv with --cells"),
        ([published, empty_day, "--input-format", "citibike", "--cells", CITIBIKE / "stations.csv", *day],
         "trips-2017-04-19.csv: no trips; remove it from the files given"),
        ([published, tmp_path, "--input-format", "citibike", "--cells", CITIBIKE / "stations.csv", *day],
         f"{tmp_path.name}: is a directory; give the files in it"),
        ([published, "--input-format", "citibike", "--cells", CITIBIKE / "stations.csv", *day, "--drop-report",
          tmp_path / "no-such-dir" / "drops.txt"], "cannot be written (No such file or directory)"),
    ]
    for args, message in cases:
        assert _ingest(*args, "--out", out) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err
        assert _tree(root) == before, message
