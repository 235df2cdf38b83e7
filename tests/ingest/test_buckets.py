"""Person-hash buckets: the output never depends on B, temporary files never outlive ingestion."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dpflows.aggregates import PlaceRule, read_interchange, version_dir
from dpflows.demo import generate_city
from dpflows.errors import InvalidData
from dpflows.ingest import pipeline
from dpflows.ingest.pipeline import (
    BUCKET_DIR_PREFIX,
    IngestOptions,
    Progress,
    ZoningSpec,
    choose_buckets,
    ingest_events,
)

ROOT = Path(__file__).resolve().parents[2]
SECRET = 9876543210  # a distinctive pseudonym that must never appear in a message


@pytest.fixture(scope="module")
def city(tmp_path_factory: pytest.TempPathFactory):
    return generate_city(tmp_path_factory.mktemp("city"), persons=600, seed=3, days=14)


def dataset(out: Path) -> tuple[dict, pl.DataFrame, pl.DataFrame]:
    """What an ingestion writes but its fresh id and its noisy bounding report: metadata, trips, presence.

    The report's exact histograms are compared apart (`exact_histograms`), zonings too.
    """
    meta = json.loads((version_dir(out) / "metadata.json").read_text())
    meta.pop("ingestion_id")
    meta.pop("bounding_report", None)
    meta["windows"] = {k: v["sha256"] for k, v in meta["windows"].items()}  # the content, not the fresh ids
    return meta, read_interchange(out, "trips").collect(), read_interchange(out, "presence").collect()


@pytest.fixture
def exact_histograms(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, list[int]]]:
    """The exact (secret) contribution histograms of each ingestion, as handed to the noisy release."""
    seen: list[dict[str, list[int]]] = []
    real = pipeline.release_bounding_report

    def recording(histograms, epsilon, windows, first_window=0):
        seen.append({measure: counts.tolist() for measure, counts in histograms.counts.items()})
        return real(histograms, epsilon, windows, first_window)

    monkeypatch.setattr(pipeline, "release_bounding_report", recording)
    return seen


def places(out: Path) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Residents and commuting as written."""
    return (read_interchange(out, "residents").collect(),
            read_interchange(out, "commuting").collect())


def assert_same(a: Path, b: Path, *, with_places: bool = True) -> None:
    meta_a, trips_a, pres_a = dataset(a)
    meta_b, trips_b, pres_b = dataset(b)
    assert meta_a == meta_b  # file hashes included: the same bytes
    assert trips_a.equals(trips_b) and pres_a.equals(pres_b)
    assert trips_a.height > 0 and pres_a.height > 0
    (res_a, com_a), (res_b, com_b) = places(a), places(b)
    assert res_a.equals(res_b) and com_a.equals(com_b)
    assert (res_a.height > 0 and com_a.height > 0) == with_places


def leftovers(root: Path) -> list[Path]:
    return sorted(root.rglob(f"{BUCKET_DIR_PREFIX}*"))


@pytest.mark.parametrize("rule", ["stay", "consecutive"])
def test_bucketed_equals_unbucketed_exactly_with_active_bounds(city, tmp_path: Path, rule: str,
                                                               capsys: pytest.CaptureFixture[str],
                                                               exact_histograms: list) -> None:
    kw = dict(name="city", bound_trips=3, bound_presence=12, trip_rule=rule, seed=11,
              zonings=[ZoningSpec("sectors", city.sectors, True, 50)])
    one = ingest_events(city.events, city.cells, tmp_path / "one", IngestOptions(**city.span, buckets=1, **kw))
    assert "bucket" not in capsys.readouterr().err  # progress lines only on a terminal
    four = ingest_events(city.events, city.cells, tmp_path / "four",
                         IngestOptions(**city.span, buckets=4, **kw), progress=Progress(True))
    err = capsys.readouterr().err
    assert "splitting events by person into 4 buckets" in err and "bucket 4/4: deriving trips" in err
    assert_same(one, four)
    assert (one / "zonings" / "sectors.json").read_text() == (four / "zonings" / "sectors.json").read_text()
    # the bounding report's exact histograms, summed over buckets, equal the unbucketed ones
    hist_one, hist_four = exact_histograms
    assert set(hist_one) == {"trips", "presence"} and hist_one == hist_four
    assert sum(hist_one["trips"]) > 0 and sum(hist_one["presence"]) > 0
    assert "bounding_report" in json.loads((version_dir(four) / "metadata.json").read_text())  # released once
    meta, trips, _ = dataset(four)
    assert (meta["first_day"], meta["end_day"]) == ("2024-03-04", "2024-03-18")
    # the bounds were active: bounding dropped records, so equality is not a trivial keep-all
    unbounded = ingest_events(city.events, city.cells, tmp_path / "all",
                              IngestOptions(**city.span, buckets=1,
                                            **{**kw, "bound_trips": 10_000, "bound_presence": 10_000}))
    assert trips["count"].sum() < dataset(unbounded)[1]["count"].sum()
    # a different seed keeps different records: the comparison above is not blind to the seed
    other = ingest_events(city.events, city.cells, tmp_path / "other",
                          IngestOptions(**city.span, buckets=4, **{**kw, "seed": 12}))
    assert not dataset(other)[1].equals(trips)
    assert leftovers(tmp_path) == []


def test_bucketed_equals_unbucketed_with_zcdp_per_key_cap(city, tmp_path: Path, exact_histograms: list) -> None:
    kw = dict(name="z", bound_trips=4, bound_presence=12, seed=21, accounting="zcdp", key_cap_trips=1,
              trip_rule="consecutive")  # handovers back and forth repeat keys within an hour
    one = ingest_events(city.events, city.cells, tmp_path / "one", IngestOptions(**city.span, buckets=1, **kw))
    three = ingest_events(city.events, city.cells, tmp_path / "three", IngestOptions(**city.span, buckets=3, **kw))
    assert_same(one, three)
    assert exact_histograms[0] == exact_histograms[1]
    assert dataset(three)[0]["accounting"]["measure"] == "zcdp"
    # the per-key cap is active on this city: without the L bound, capping repeats keeps fewer trips
    unbounded = {**kw, "bound_trips": 10_000, "report_epsilon": 0}
    capped = ingest_events(city.events, city.cells, tmp_path / "capped",
                           IngestOptions(**city.span, buckets=3, **unbounded))
    loose = ingest_events(city.events, city.cells, tmp_path / "loose",
                          IngestOptions(**city.span, buckets=3, **{**unbounded, "key_cap_trips": 50}))
    assert dataset(loose)[1]["count"].sum() > dataset(capped)[1]["count"].sum()


def test_bucketed_csv_with_string_persons_first_day_and_more_buckets_than_persons(tmp_path: Path) -> None:
    rows = []
    for p, person in enumerate(["ann", "bob", "cy"]):
        for d in range(9):
            for h, cell in [(7, "C0101"), (9, "C0202"), (13, "C0303"), (18, "C0101")]:
                rows.append(f"{person},2024-03-{5 + d:02d} {h:02d}:{10 * p:02d}:00,{cell}\n")
    events = tmp_path / "events.csv"
    events.write_text("person,timestamp,cell_id\n" + "".join(rows))
    city = generate_city(tmp_path / "c", persons=1, days=1)
    kw = dict(name="x", bound_trips=2, bound_presence=5, first_day=dt.date(2024, 3, 4), end_day=dt.date(2024, 3, 14),
              seed=5)
    one = ingest_events(events, city.cells, tmp_path / "one", IngestOptions(buckets=1, **kw))
    many = ingest_events(events, city.cells, tmp_path / "many", IngestOptions(buckets=16, **kw))  # most buckets empty
    assert_same(one, many, with_places=False)  # no night hours, no homes
    meta, trips, _ = dataset(many)
    assert (meta["first_day"], meta["end_day"]) == ("2024-03-04", "2024-03-14")
    assert trips["count"].sum() == 2 * 3 * 2  # L per person-window: 3 persons, 2 windows
    assert leftovers(tmp_path) == []


events_strategy = st.lists(
    st.tuples(st.integers(0, 12), st.integers(0, 3 * 24 * 60 - 1), st.sampled_from(["C0101", "C0102", "C0202"])),
    min_size=1, max_size=200,
)


@settings(max_examples=15, deadline=None)
@given(rows=events_strategy, buckets=st.integers(2, 6), seed=st.integers(0, 2**63 - 1))
def test_any_bucket_count_gives_the_same_output(city, tmp_path_factory: pytest.TempPathFactory,
                                                 rows: list[tuple[int, int, str]], buckets: int, seed: int) -> None:
    tmp = tmp_path_factory.mktemp("prop")
    start = dt.datetime(2024, 3, 4)
    frame = pl.DataFrame({"person": [r[0] for r in rows],
                          "timestamp": [start + dt.timedelta(minutes=r[1]) for r in rows],
                          "cell_id": [r[2] for r in rows]})
    frame.write_parquet(tmp / "events.parquet")
    kw = dict(name="p", bound_trips=2, bound_presence=3, window_days=2, min_dwell_minutes=10, seed=seed,
              report_epsilon=0, places=PlaceRule(min_work_days=1))  # work cells from one day: more of them
    one = ingest_events(tmp / "events.parquet", city.cells, tmp / "one", IngestOptions(**city.span, buckets=1, **kw))
    many = ingest_events(tmp / "events.parquet", city.cells, tmp / "many",
                         IngestOptions(**city.span, buckets=buckets, **kw))
    meta_a, trips_a, pres_a = dataset(one)
    meta_b, trips_b, pres_b = dataset(many)
    assert meta_a == meta_b and trips_a.equals(trips_b) and pres_a.equals(pres_b)
    (res_a, com_a), (res_b, com_b) = places(one), places(many)
    assert res_a.equals(res_b) and com_a.equals(com_b)


def test_temporary_buckets_exist_during_ingestion_and_are_removed_after(city, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "data"
    seen: list[list[str]] = []
    real = pipeline._bucket_counts

    def watching(*args, **kwargs):
        [work] = leftovers(data)
        assert (work.stat().st_mode & 0o777) == 0o700  # pseudonyms: this user only
        seen.append(sorted(p.name for p in work.glob("bucket-*.arrow")))
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "_bucket_counts", watching)
    ingest_events(city.events, city.cells, data / "ds", IngestOptions(**city.span, name="x", buckets=3, seed=1))
    assert len(seen) == 3 and len(seen[0]) >= 3  # three buckets, each in its own file(s)
    assert leftovers(data) == [] and (version_dir(data / "ds") / "metadata.json").exists()


def test_buckets_with_a_relative_out_path(city, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`--out data/ds` (relative, as admins type it): the bucket files are found again, the output is the same.

    Polars joins a relative file path given for a partition to the partition's base once more, so
    bucket files written under a relative temporary directory were never read back.
    """
    kw = dict(**city.span, name="ds", bound_trips=3, bound_presence=12, seed=4, report_epsilon=0)
    one = ingest_events(city.events, city.cells, tmp_path / "one" / "ds", IngestOptions(buckets=1, **kw))
    monkeypatch.chdir(tmp_path)
    relative = ingest_events(city.events, city.cells, Path("data") / "ds", IngestOptions(buckets=3, **kw))
    assert not relative.is_absolute()
    assert_same(one, tmp_path / relative)
    assert leftovers(tmp_path / "data") == []


def test_temporary_buckets_are_removed_after_a_failure(city, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "data"
    # a data error found after the split: events start before --first-day
    with pytest.raises(InvalidData, match=r"before --first-day 2024-03-05"):
        ingest_events(city.events, city.cells, data / "early",
                      IngestOptions(name="x", buckets=3, first_day=dt.date(2024, 3, 5), end_day=city.end_day))
    assert leftovers(data) == [] and not (data / "early").exists()
    # a crash in the middle of the bucket loop
    calls = []
    real = pipeline._bucket_counts

    def failing_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise MemoryError("simulated")
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "_bucket_counts", failing_second)
    with pytest.raises(MemoryError):
        ingest_events(city.events, city.cells, data / "crash", IngestOptions(**city.span, name="x", buckets=3, seed=1))
    assert leftovers(data) == [] and not (data / "crash").exists()


def write_events(tmp_path: Path, rows: list[tuple]) -> Path:
    path = tmp_path / "events.csv"
    path.write_text("person,timestamp,cell_id\n" + "".join(",".join(map(str, r)) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("buckets", [None, 1, 4])
def test_validation_errors_do_not_depend_on_buckets(city, tmp_path: Path, buckets: int | None) -> None:
    good = (SECRET, "2024-03-04 08:00:00", "C0101")
    cases = [
        ([good, (SECRET, "yesterday", "C0101")], "events.csv: column 'timestamp' has unparseable timestamps in "
         "rows [2]; use ISO 8601 such as 2024-03-04 08:15:00"),
        ([good, (SECRET, "2024-03-04 09:00:00", "NOPE")], "events.csv: column 'cell_id' holds values missing from "
         "the cell catalog in rows [2]; check the column order, add the cells to the catalog or drop those rows"),
        ([good, (SECRET, "", "C0101")], "events.csv: column 'timestamp' is empty in rows [2]; every row needs a time"),
        ([good, ("", "2024-03-04 09:00:00", "C0101")], "events.csv: column 'person' is empty in rows [2]; every "
         "event needs its person's pseudonym: fill them or remove those rows"),
        ([], "events.csv: no rows; nothing to ingest: give the file(s) that hold the events of the declared days"),
    ]
    for rows, message in cases:
        with pytest.raises(InvalidData) as info:
            ingest_events(write_events(tmp_path, rows), city.cells, tmp_path / "data" / "out",
                          IngestOptions(**city.span, name="x", seed=1, buckets=buckets))
        assert info.value.message == message
        assert str(SECRET) not in info.value.message
    assert leftovers(tmp_path) == [] and not (tmp_path / "data" / "out").exists()
    with pytest.raises(InvalidData, match=r"buckets=0 must be at least 1") as info:
        ingest_events(city.events, city.cells, tmp_path / "out", IngestOptions(**city.span, name="x", buckets=0))
    assert info.value.field == "buckets"


def test_buckets_chosen_from_the_input_size() -> None:
    per = pipeline.BUCKET_EVENTS
    assert [choose_buckets(n) for n in (0, 1, per, per + 1, 25 * per)] == [1, 1, 1, 2, 25]
    assert choose_buckets(4_200_000) == 1  # the demo city (20,000 persons, 4 weeks) stays in one bucket
    assert choose_buckets(103_214_118, per_bucket=4_000_000) == 26


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dpflows.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          check=False, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})


def test_cli_buckets(city, tmp_path: Path) -> None:
    # bounds far above any person-window's records keep everything, so no seed is needed to compare trips;
    # the CLI's secret seed breaks ties between cells differently, which moves presence and places between
    # cells but never changes how many person-hours each (day, hour) holds nor how many homes a window has
    common = ["--cells", str(city.cells), "--bound-trips", "100000", "--bound-presence", "100000",
              "--first-day", str(city.first_day), "--end-day", str(city.end_day)]
    done = cli("ingest", str(city.events), "--out", str(tmp_path / "data" / "cli"), "--buckets", "3", *common)
    assert done.returncode == 0, done.stderr
    assert "dataset 'cli' written to" in done.stdout
    lib = ingest_events(city.events, city.cells, tmp_path / "lib",
                        IngestOptions(**city.span, name="cli", buckets=1, bound_trips=100_000, bound_presence=100_000))
    (meta_a, trips_a, pres_a), (meta_b, trips_b, pres_b) = dataset(tmp_path / "data" / "cli"), dataset(lib)
    assert trips_a.equals(trips_b) and trips_a.height > 0
    assert ({k: v for k, v in meta_a.items() if k not in ("files", "windows")}
            == {k: v for k, v in meta_b.items() if k not in ("files", "windows")})
    per_hour = [p.group_by("day", "hour").agg(pl.col("count").sum()).sort("day", "hour") for p in (pres_a, pres_b)]
    assert per_hour[0].equals(per_hour[1])
    homes = [read_interchange(d, "residents").collect().filter(pl.col("place") == "home")
             .group_by("window").agg(pl.col("count").sum()).sort("window") for d in (tmp_path / "data" / "cli", lib)]
    assert homes[0].equals(homes[1]) and homes[0]["count"].sum() > 0
    assert leftovers(tmp_path) == []
    for extra, fragment in [(["--buckets", "0"], "buckets=0 must be at least 1"),
                            (["--buckets", "2", "--engine", "spark"], "--buckets applies to events ingested with "
                             "--engine polars"),
                            (["--buckets", "2", "--trips-table"], "--buckets applies to events ingested with")]:
        bad = cli("ingest", str(city.events), "--out", str(tmp_path / "bad"), *common, *extra)
        assert bad.returncode == 2 and fragment in bad.stderr, bad.stderr
