"""The one-sort path (sorted_bucket.py) computes exactly what derive.py + bounding.py compute.

Every count, residents and commuting row and every exact contribution histogram must be equal, for
any seed: the fast path keeps the very records the reference keeps (rule 2: the bound's sampling
is the reference's keyed hash of record content, unchanged). Inputs are drawn to be hard: few
cells and persons, many equal timestamps, duplicate rows, hours split evenly between cells (ties
broken by the keyed hash), person-windows above and below the bounds, and each packing of the
sort key (64-bit, 128-bit, string persons, other time units, UTC).
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dpflows.aggregates import PlaceRule
from dpflows.ingest import pipeline, sorted_bucket
from dpflows.ingest.contribution_histograms import ContributionHistograms
from dpflows.ingest.options import IngestOptions

FIRST = dt.date(2024, 3, 4)  # a Monday
N_CELLS = 5


def options(**kw: object) -> IngestOptions:
    return IngestOptions(name="x", first_day=FIRST, end_day=FIRST + dt.timedelta(days=6), report_epsilon="0.1",
                         **kw)  # type: ignore[arg-type]


def both(events: pl.DataFrame, opts: IngestOptions, *, key_cap: int | None, seed: int, n_cells: int = N_CELLS):
    """(fast counts, fast histograms), (reference counts, reference histograms), frames sorted by their keys."""
    out = []
    for fast in (True, False):
        histograms = ContributionHistograms(True)
        if fast:
            counts = sorted_bucket.bucket_counts(
                events, first_day=FIRST, window_days=opts.window_days, n_cells=n_cells,
                bound_presence=opts.bound_presence, bound_trips=opts.trips_bound(), trip_rule=opts.trip_rule,
                min_dwell=dt.timedelta(minutes=opts.min_dwell_minutes), places=opts.place_rule, key_cap=key_cap,
                seed=seed, histograms=histograms)
        else:
            counts = pipeline._reference_bucket_counts(events.lazy(), opts, key_cap=key_cap, seed=seed,
                                                       histograms=histograms)
        frames = {name: getattr(counts, name).sort(pl.exclude("count")).select(sorted(getattr(counts, name).columns))
                  for name in ("trips", "presence", "residents", "commuting")}
        out.append((frames, {k: v.tolist() for k, v in histograms.counts.items()}))
    return out


def assert_same(events: pl.DataFrame, opts: IngestOptions, *, key_cap: int | None = None, seed: int = 7,
                n_cells: int = N_CELLS) -> dict[str, pl.DataFrame]:
    (fast, fast_hist), (ref, ref_hist) = both(events, opts, key_cap=key_cap, seed=seed, n_cells=n_cells)
    for name in ref:
        assert fast[name].schema == ref[name].schema, name
        assert fast[name].equals(ref[name]), name
    assert fast_hist == ref_hist
    return fast


def frame(rows: list[tuple[int, int, int]], *, unit: str = "us", person=None) -> pl.DataFrame:
    """(person, minutes since the first day's midnight, cell) rows as an events frame."""
    start = dt.datetime.combine(FIRST, dt.time())
    return pl.DataFrame({
        "person": [p for p, _, _ in rows] if person is None else [person(p) for p, _, _ in rows],
        "timestamp": pl.Series([start + dt.timedelta(minutes=m) for _, m, _ in rows]).cast(pl.Datetime(unit)),
        "cell": pl.Series([c for _, _, c in rows], dtype=pl.UInt32),
    })


rows_strategy = st.lists(st.tuples(st.integers(0, 5), st.integers(0, 6 * 24 * 60 - 1).map(lambda m: m - m % 7),
                                   st.integers(0, N_CELLS - 1)), min_size=1, max_size=250)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=rows_strategy, bound_presence=st.integers(1, 6), bound_trips=st.integers(1, 4),
       window_days=st.integers(1, 3), rule=st.sampled_from(["stay", "consecutive"]), dwell=st.sampled_from([0, 10, 30]),
       key_cap=st.sampled_from([None, 1, 2]), seed=st.integers(0, 2**62), days=st.integers(1, 2))
def test_equal_to_the_reference_on_drawn_inputs(rows, bound_presence, bound_trips, window_days, rule, dwell, key_cap,
                                                seed, days) -> None:
    opts = options(window_days=window_days, bound_presence=bound_presence, bound_trips=bound_trips, trip_rule=rule,
                   min_dwell_minutes=dwell, places=PlaceRule(min_work_days=min(days, window_days)))
    assert_same(frame(rows), opts, key_cap=key_cap, seed=seed)


@pytest.mark.parametrize("person", [lambda p: p, lambda p: -(2**62) + p * 2**61, lambda p: f"p{p}",
                                    lambda p: (2**64 - 1) - p])
@pytest.mark.parametrize("unit", ["ns", "us", "ms"])
def test_every_packing_of_the_sort_key(person, unit) -> None:
    """Persons small or spanning 64 bits (128-bit key), strings (hashed), unsigned; times in ns, us, ms."""
    rng = np.random.default_rng(5)
    rows = [(int(p), int(m), int(c)) for p, m, c in zip(rng.integers(0, 4, 600), rng.integers(0, 6 * 1440, 600),
                                                        rng.integers(0, N_CELLS, 600), strict=True)]
    events = frame(rows, unit=unit, person=person)
    if isinstance(person(0), int) and person(0) >= 2**63:
        events = events.with_columns(pl.col("person").cast(pl.UInt64))
    fast = assert_same(events, options(bound_presence=3, bound_trips=2, window_days=2), key_cap=1)
    assert fast["trips"]["count"].sum() > 0 and fast["commuting"].height > 0


def test_sub_second_times_and_utc() -> None:
    start = dt.datetime.combine(FIRST, dt.time())
    stamps = [start + dt.timedelta(hours=8, microseconds=k * 333_331) for k in range(400)]
    events = pl.DataFrame({"person": [k % 3 for k in range(400)], "timestamp": stamps,
                           "cell": pl.Series([k * 7 % N_CELLS for k in range(400)], dtype=pl.UInt32)})
    assert_same(events, options(bound_trips=5, min_dwell_minutes=0.001, trip_rule="stay"))
    utc = events.with_columns(pl.col("timestamp").dt.replace_time_zone("UTC"))
    assert_same(utc, options(bound_trips=5, min_dwell_minutes=0.001, trip_rule="stay"))


def test_other_time_zones_fall_back_to_the_reference() -> None:
    events = frame([(1, 60, 0), (1, 200, 1), (1, 600, 2)]).with_columns(
        pl.col("timestamp").dt.replace_time_zone("Europe/Paris"))
    with pytest.raises(sorted_bucket.Unsupported):
        both(events, options(), key_cap=None, seed=1)
    histograms = ContributionHistograms(True)
    counts = pipeline._bucket_counts(events, options(), n_cells=N_CELLS, key_cap=None, seed=1, histograms=histograms,
                                     progress=pipeline.Progress(False), label="")
    assert counts.presence["count"].sum() == 3


def test_a_large_city_week_equals_the_reference(tmp_path) -> None:
    """A demo city of 300 persons over a week: thousands of ties, bounds that bind for some person-windows."""
    from dpflows.demo import generate_city
    from dpflows.ingest.inputs import _indexed_events, _scan, read_cells

    city = generate_city(tmp_path, persons=300, days=7, seed=2)
    catalog, _ = read_cells(city.cells)
    events = _indexed_events(_scan(city.events).select("person", "timestamp", "cell_id"), city.events,
                             catalog).collect()
    opts = IngestOptions(name="x", **city.span, bound_presence=40, bound_trips=6)
    fast = assert_same(events, opts, n_cells=len(catalog), seed=99)
    assert fast["residents"].height > 0 and fast["trips"]["count"].sum() > 1000


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_rank_cut_keeps_what_bound_per_person_window_keeps_even_for_equal_hashes(seed: int) -> None:
    """Identical records share a hash (the 64-bit key then ties): the exact stable order decides, as Polars' does."""
    from dpflows.ingest.bounding import bound_per_person_window

    rng = np.random.default_rng(seed)
    person = np.repeat(np.arange(40), rng.integers(1, 30, 40))
    records = pl.DataFrame({"person": person, "window": np.zeros(len(person), dtype=np.int64),
                            "payload": rng.integers(0, 4, len(person))})  # many identical records
    units = records["person"].to_numpy()
    kept = records[sorted_bucket._kept_by_rank(records, units, 5, seed)]
    reference = bound_per_person_window(records.lazy(), 5, seed=seed).collect()
    assert kept.sort(pl.all()).equals(reference.sort(pl.all())) and kept.height < records.height
