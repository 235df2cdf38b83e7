"""Queries build their key domain from public facts and count exactly what the filters say."""

from __future__ import annotations

import datetime as dt

import polars as pl
import pytest

from dpflows import queries
from dpflows.aggregates import AggregateStore, read_interchange
from dpflows.errors import DomainTooLarge, InvalidInput, NotFound
from dpflows.queries import hour_range, make_spec, prepare

D0 = dt.date(2024, 3, 4)


def spec(kind: str = "flows", **kw):
    args = {"dataset": "small", "zoning": "districts", "start": D0, "end": D0 + dt.timedelta(days=7)} | kw
    return make_spec(kind, **args)


def test_flows_release_every_zone_pair_and_match_a_direct_count(store: AggregateStore, data_root) -> None:
    s = spec(hours=[7, 10], weekdays=[0, 1, 2, 3, 4])
    p = prepare(s, store.get("small"))
    assert len(p.domain) == 8 * 8 and len(p.true_counts) == 64
    zone = {f"c{i:03d}": f"d{i // 5}" for i in range(40)}
    trips = read_interchange(data_root / "datasets/small", "trips").collect().filter(
        (pl.col("day") >= D0) & (pl.col("day") < D0 + dt.timedelta(days=7))
        & pl.col("hour").is_between(7, 9) & (pl.col("day").dt.weekday() <= 5)
    )
    expected = {}
    for row in trips.iter_rows(named=True):
        k = (zone[row["origin"]], zone[row["dest"]])
        expected[k] = expected.get(k, 0) + row["count"]
    got = {(r["origin"], r["destination"]): int(c) for r, c in zip(p.domain.rows(), p.true_counts, strict=True)}
    assert {k: v for k, v in got.items() if v} == expected
    assert p.sensitivity == 5 and p.windows == (0,)


def test_empty_keys_are_in_the_domain_as_zeros(store: AggregateStore) -> None:
    s = spec("presence", zoning="cell", start=D0, end=D0 + dt.timedelta(days=1), hours=[3, 4])
    p = prepare(s, store.get("small"))
    assert len(p.domain) == 40 and (p.true_counts == 0).any()
    assert [r["hour"] for r in p.domain.rows()] == [3] * 40


def test_patterns_cover_weekday_by_hour(store: AggregateStore) -> None:
    p = prepare(spec("patterns", measure="presence", zone="d1", end=D0 + dt.timedelta(days=28)), store.get("small"))
    assert len(p.domain) == 7 * 24 and p.windows == (0, 1, 2, 3) and p.sensitivity == 20


def test_windows_touched_follow_the_weekday_filter(store: AggregateStore) -> None:
    # 2024-03-09 and 03-10 are Sat/Sun of window 0; 03-11 (Mon) opens window 1.
    s = spec(start=dt.date(2024, 3, 9), end=dt.date(2024, 3, 12), weekdays=[5, 6])
    assert prepare(s, store.get("small")).windows == (0,)
    with pytest.raises(InvalidInput, match="never occur"):
        prepare(spec(start=dt.date(2024, 3, 4), end=dt.date(2024, 3, 5), weekdays=[6]), store.get("small"))


def test_hour_ranges_wrap_past_midnight() -> None:
    assert hour_range([22, 2]) == (22, 23, 0, 1)
    assert hour_range([0, 24]) == tuple(range(24))
    for bad in ([5, 5], [-1, 3], [3, 25], [1], [1.5, 3]):
        with pytest.raises(InvalidInput, match="hours="):
            hour_range(bad)  # type: ignore[arg-type]


def test_equivalent_queries_normalize_to_one_key() -> None:
    a = spec(weekdays=[4, 0, 2, 2])
    b = spec(weekdays=[0, 2, 4])
    assert a == b and a.key() == b.key()
    assert spec(hours=[0, 24]).key() == spec().key()


def test_the_canonical_query_is_every_field_as_before() -> None:
    """canonical() is built field by field (issue 16): the same document as dataclasses.asdict gave, in field
    order, so answers echo the same `query` and reuse keys stay as stored."""
    import dataclasses

    def by_asdict(spec: queries.QuerySpec) -> dict:
        doc = dataclasses.asdict(spec)
        doc["start"], doc["end"] = spec.start.isoformat(), spec.end.isoformat()
        doc["hours"], doc["weekdays"] = list(spec.hours), list(spec.weekdays)
        if spec.place is None:
            del doc["place"]
        return doc

    day = dt.date(2024, 3, 4)
    specs = [make_spec("flows", dataset="d", zoning="z", start=day, end=day + dt.timedelta(7), hours=[22, 2]),
             make_spec("patterns", dataset="d", zoning="z", start=day, end=day + dt.timedelta(3), measure="presence",
                       zone="z1", weekdays=[4, 0]),
             make_spec("residents", dataset="d", zoning="z", start=day, end=day + dt.timedelta(14), place="work")]
    for spec in specs:
        assert list(spec.canonical().items()) == list(by_asdict(spec).items())
        assert spec.canonical() is not spec.canonical()  # a new dict each time: callers add to it


def test_bad_queries_name_the_field(store: AggregateStore) -> None:
    with pytest.raises(InvalidInput, match="end=") as info:
        spec(end=D0)
    assert info.value.field == "end"
    with pytest.raises(InvalidInput, match="outside dataset"):
        prepare(spec(start=dt.date(2023, 1, 1)), store.get("small"))
    with pytest.raises(NotFound, match="zoning='wards'"):
        prepare(spec(zoning="wards"), store.get("small"))
    with pytest.raises(InvalidInput, match="weekdays"):
        spec(weekdays=[7])
    with pytest.raises(InvalidInput, match="zone="):
        spec("flows", zone="d1")


def test_dense_domains_above_the_limit_are_refused(store: AggregateStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(queries, "MAX_DENSE_KEYS", 1000)  # 40 cells → 1,600 OD keys
    with pytest.raises(DomainTooLarge, match="1600 keys"):
        prepare(spec(zoning="cell"), store.get("small"))


def test_flows_over_every_row_match_a_direct_count_and_the_cached_keys_stay_right(store: AggregateStore,
                                                                                 data_root) -> None:
    """The whole dataset (no row masked: the cached keys are used as they are), asked twice."""
    data = store.get("small")
    s = spec(end=data.metadata.end_day)
    zone = {f"c{i:03d}": f"d{i // 5}" for i in range(40)}
    expected: dict[tuple[str, str], int] = {}
    for row in read_interchange(data_root / "datasets/small", "trips").collect().iter_rows(named=True):
        k = (zone[row["origin"]], zone[row["dest"]])
        expected[k] = expected.get(k, 0) + row["count"]
    for _ in range(2):
        p = prepare(s, data)
        got = {(r["origin"], r["destination"]): int(c) for r, c in zip(p.domain.rows(), p.true_counts, strict=True)}
        assert {k: v for k, v in got.items() if v} == expected
