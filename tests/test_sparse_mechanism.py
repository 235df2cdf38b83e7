"""The thresholded mechanism of sparse answers (issue 15): OpenDP's privacy map at exactly the (ℓ0, ℓ1, ℓ∞) the
service uses, a property test that no person-window exceeds that triple in any answer, and an empirical audit.

Audit. Neighbouring datasets D0 (the small test city, accounted in approximate DP, cell-level OD sparse) and
D1 = D0 plus one person-window whose L = 5 trips go to 5 cell pairs D0 never holds: its keys cross from absent
(never released) to 1 trip each. For the event E = "one of those keys is released", P(E | D0) = 0 exactly, so
(ε, δ)-DP demands P(E | D1) <= δ. At a deliberately large δ = 0.05 the threshold is low (24) and E frequent
enough to measure: 40,000 independent copies of the person's 5 keys through `release_sparse` at the service's
scale and threshold (OpenDP noises each key independently, so a map of disjoint copies is 40,000 draws), and 300
real answers through `Service.answer` on D1. Both rates must agree with the exact
P(E | D1) = 1 − (1 − P(1 + N >= t))^5 for N discrete Laplace at the scale (two-sided Clopper–Pearson, each bound at
1e-8), which is itself below δ; and the copies' lower bound must exceed δ/4, so the audit has power (the exact
rate is 0.55 δ: OpenDP's δ covers the worst person, 5 trips in one key, with room; a threshold planned for
ℓ0 = 1 gives 16 and a rate of 2.6 δ). False failures: 4 bounds at
1e-8 each, 4e-8 in all. A mechanism calibrated for ℓ0 = 1 (the bug of counting one key per person) releases E
at a rate above δ and fails (last test).
"""

from __future__ import annotations

import datetime as dt
import itertools
import math
from fractions import Fraction
from pathlib import Path

import numpy as np
import opendp.prelude as dp
import polars as pl
import pytest
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st
from scipy.stats import beta

from dpflows.aggregates import (
    ONE_PLACE_PER_PERSON_HOUR,
    PARQUET_IN_MEMORY,
    AggregateStore,
    Dataset,
    DatasetMetadata,
    WindowData,
    load_dataset,
    read_interchange,
    version_dir,
    write_aggregates,
)
from dpflows.budget import ApproxDP, Epsilon, parse_delta
from dpflows.cells import CellCatalog, Zoning
from dpflows.errors import InvalidInput
from dpflows.ingest.bounding import bound_per_person_window, cap_per_person_key
from dpflows.ledger.memory import MemoryLedger
from dpflows.mechanisms import (
    Contribution,
    plan_threshold,
    release_sparse,
    smallest_threshold,
    threshold_privacy_loss,
    threshold_scale,
)
from dpflows.mechanisms import threshold as threshold_module
from dpflows.queries import make_spec, row_keys
from dpflows.sensitivity import query_sensitivity
from dpflows.service import Policy, QueryRequest, Service
from dpflows.sparse import observed_counts
from dpflows.window_files import HOURS, SlotTable
from tests.conftest import FIRST_DAY, N_CELLS, build_small_dataset

DELTA_CP = 1e-8
WEEK = {"start": FIRST_DAY, "end": FIRST_DAY + dt.timedelta(days=7)}


def _measurement(scale: float, threshold: int) -> dp.Measurement:
    """Built here, apart from dpflows.mechanisms: the map the tests read is OpenDP's own."""
    return dp.m.make_laplace_threshold(dp.map_domain(dp.atom_domain(T="i64"), dp.atom_domain(T="i64")),
                                       dp.l01inf_distance(dp.absolute_distance(T="i64")), scale=scale,
                                       threshold=threshold)


# -- OpenDP's map at the triples used -----------------------------------------------------------------


@pytest.mark.parametrize(("triple", "epsilon", "delta", "scale", "threshold", "exact_delta"), [
    # the defaults: L = 20, ℓ0 = ℓ∞ = 20, ε = 0.5, δ = 1e-9 -> ~940
    ((20, 20, 20), "0.5", "1e-9", 40.0, 941, 9.883427409818069e-10),
    # approx_dp's default L = 5, cell-level OD of one week (5 trips may all go to one cell pair)
    ((5, 5, 5), "0.5", "1e-9", 10.0, 221, 9.883754925610333e-10),
    ((5, 5, 5), "1", "1e-7", 5.0, 90, 9.31829573502796e-08),
    # one person-window per key and one key (residents, commuting, one day-hour of presence)
    ((1, 1, 1), "0.5", "1e-9", 2.0, 41, 7.78169417792185e-10),
])
def test_opendp_map_at_the_planned_scale_and_threshold(triple: tuple[int, int, int], epsilon: str, delta: str,
                                                       scale: float, threshold: int, exact_delta: float) -> None:
    loss = ApproxDP.parse_pair(epsilon, delta)
    assert plan_threshold(Contribution(*triple), loss) == (scale, threshold)
    assert _measurement(scale, threshold).map(triple) == (float(epsilon), exact_delta)
    # the smallest: one less and δ is above what was asked; a scale one float smaller and ε is
    assert _measurement(scale, threshold - 1).map(triple)[1] > float(delta)
    assert Fraction(_measurement(math.nextafter(scale, 0), threshold).map(triple)[0]) > Fraction(epsilon)


def test_the_triples_the_service_computes_are_the_ones_mapped(tmp_path: Path) -> None:
    """Per query kind on an approx_dp dataset: the (ℓ0, ℓ1, ℓ∞) of dpflows.sensitivity, and the threshold
    the service would use is OpenDP's smallest for it."""
    build_small_dataset(tmp_path, "cells", accounting="approx_dp", dense_limit=10, places=True)
    data = AggregateStore(tmp_path).get("cells")
    expected = {  # L_trips 5, L_presence 20; a district holds 5 cells; row cap 1; presence: every cell of an hour
        ("flows", "cell", None): (5, 5, 5),  # 7 days × 24 hours of rows per cell pair: all 5 trips in one key
        ("flows", "cell", (8, 9)): (5, 5, 5),
        ("presence", "cell", (8, 9)): (20, 20, 7),  # one cell-hour on 7 days: 7 rows of a key, L_presence in all
        ("presence", "districts", None): (20, 20, 20),  # 7 days × 5 cells of a key's rows: L_presence
        ("residents", "cell", None): (1, 1, 1),
        ("commuting", "cell", None): (1, 1, 1),
    }
    for (kind, zoning, hours), triple in expected.items():
        spec = make_spec(kind, dataset="cells", zoning=zoning, **WEEK, hours=hours,
                         place="home" if kind == "residents" else None)
        contribution = query_sensitivity(spec, data).contribution
        assert contribution.as_tuple() == triple, (kind, zoning, hours)
        scale = threshold_scale(contribution, Epsilon.parse("0.5").nanos)
        threshold = smallest_threshold(contribution, scale, parse_delta("1e-9"))
        eps, delta = _measurement(scale, threshold).map(triple)
        assert Fraction(eps) <= Fraction(1, 2) and Fraction(delta) <= Fraction(1, 10**9)


def test_delta_falls_monotonically_in_the_threshold_down_to_openDPs_floor() -> None:
    for triple, scale in (((5, 5, 5), 10.0), ((20, 20, 20), 40.0), ((1, 1, 1), 2.0)):
        deltas = [threshold_privacy_loss(Contribution(*triple), scale, t)[1] for t in range(triple[2], 2500, 11)]
        assert all(a >= b for a, b in itertools.pairwise(deltas))
        assert deltas[-1] == Fraction(triple[0] * 2**-53)  # the floor: ℓ0·2^-53, below which no δ is given


# -- no person-window exceeds the triple, in any answer ----------------------------------------------

TRIP = st.tuples(st.integers(0, 13), st.integers(0, 23), st.integers(0, 5), st.integers(0, 5))


@st.composite
def scenario(draw: st.DrawFn) -> dict:
    n_cells = draw(st.integers(2, 6))
    zone_of_cell = draw(st.lists(st.integers(0, n_cells - 1), min_size=n_cells, max_size=n_cells))
    used = sorted(set(zone_of_cell))
    persons = draw(st.lists(st.lists(TRIP, max_size=30), min_size=1, max_size=4))
    hours = draw(st.tuples(st.integers(0, 23), st.integers(1, 24)).filter(lambda h: h[0] != h[1]))
    start = draw(st.integers(0, 12))
    kind = draw(st.sampled_from(["flows", "inflows", "outflows", "patterns", "presence", "patterns-presence"]))
    return {
        "n_cells": n_cells, "zone_of_cell": [used.index(z) for z in zone_of_cell], "zones": len(used),
        "persons": [[(d, h, o % n_cells, t % n_cells) for d, h, o, t in p] for p in persons],
        "bound_trips": draw(st.integers(1, 6)), "bound_presence": draw(st.integers(1, 10)),
        "key_cap": draw(st.integers(1, 3)), "kind": kind, "zoning": draw(st.sampled_from(["cell", "z"])),
        "start": start, "end": draw(st.integers(start + 1, 14)), "hours": hours,
        "weekdays": draw(st.lists(st.integers(0, 6), min_size=1, max_size=7, unique=True)),
        "seed": draw(st.integers(0, 2**32)),
    }


def _slot_table(rows: pl.DataFrame, window: int, cells: list[str]) -> SlotTable:
    """One window's rows of a measure as the store holds them: sorted by slot (day·24 + hour), with offsets."""
    counts = rows.filter(pl.col("day") // 7 == window).group_by(["day", "hour", *cells]).len()
    slot = ((counts["day"].to_numpy().astype(np.int64) - 7 * window) * HOURS
            + counts["hour"].to_numpy().astype(np.int64))
    order = np.argsort(slot, kind="stable")
    columns = {c: counts[c].to_numpy().astype(np.int64)[order] for c in cells}
    columns["count"] = counts["len"].to_numpy().astype(np.int64)[order]
    return SlotTable(np.searchsorted(slot[order], np.arange(7 * HOURS + 1), side="left").astype(np.int64), columns)


def _dataset(meta: DatasetMetadata, catalog: CellCatalog, zoning: Zoning, trips: pl.DataFrame,
             presence: pl.DataFrame) -> Dataset:
    """The counts held in memory, two windows of 7 days (as a format-1 dataset is read)."""
    windows = {w: WindowData(w, "test", meta.window_start(w), 7, _slot_table(trips, w, ["origin", "dest"]),
                             _slot_table(presence.rename({"origin": "cell"}), w, ["cell"]), None, None)
               for w in range(meta.window_count)}
    return Dataset(Path("."), meta, catalog, {"cell": Zoning.identity(catalog), "z": zoning},
                   layout=PARQUET_IN_MEMORY, _windows=windows)


@given(scenario())
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_no_person_window_exceeds_the_triple_in_any_answer(sc: dict) -> None:
    """Records bounded by ingestion's own functions (the per-row cap, then L per person-window, chosen at
    random); each person-window's own records counted into the answer's keys by the query's own row keys."""
    n = sc["n_cells"]
    catalog = CellCatalog.from_columns([f"c{i}" for i in range(n)], [0.0] * n, [0.0] * n)
    zoning = Zoning("z", tuple(f"z{k}" for k in range(sc["zones"])), np.asarray(sc["zone_of_cell"], dtype=np.int64))
    meta = DatasetMetadata("prop", FIRST_DAY, FIRST_DAY + dt.timedelta(days=14), 7, sc["bound_trips"],
                           sc["bound_presence"], {"kind": "test"}, "approx_dp", sc["key_cap"],
                           presence_rule=ONE_PLACE_PER_PERSON_HOUR)
    records = pl.DataFrame(
        [(p, d, h, o, t) for p, trips in enumerate(sc["persons"]) for d, h, o, t in trips],
        schema={"person": pl.Int64, "day": pl.Int32, "hour": pl.Int8, "origin": pl.Int64, "dest": pl.Int64},
        orient="row").with_columns((pl.col("day") // 7).alias("window"))
    # trips: (person, day, hour, origin, dest) -> at most C, then (person, window) -> at most L_trips
    trips = bound_per_person_window(cap_per_person_key(records.lazy(), sc["key_cap"],
                                                       keys=["day", "hour", "origin", "dest"]),
                                    sc["bound_trips"], seed=sc["seed"]).collect()
    # presence: one place per person-hour (the first trip's origin), then at most L_presence per person-window
    hours = records.unique(["person", "day", "hour"], keep="first", maintain_order=True)
    presence = bound_per_person_window(hours.lazy(), sc["bound_presence"], seed=sc["seed"]).collect()
    kind, measure = (sc["kind"].split("-")[0], "presence") if sc["kind"].endswith("presence") else (sc["kind"], None)
    spec = make_spec(kind, dataset="prop", zoning=sc["zoning"], start=FIRST_DAY + dt.timedelta(days=sc["start"]),
                     end=FIRST_DAY + dt.timedelta(days=sc["end"]), hours=sc["hours"], weekdays=sc["weekdays"],
                     measure=measure)
    try:
        triple = query_sensitivity(spec, _dataset(meta, catalog, zoning, trips.clear(), presence.clear())).contribution
    except InvalidInput:  # a query refused for everyone (no such weekday in the dates)
        reject()
    for (person, window), _ in records.group_by(["person", "window"]):
        mine = (pl.col("person") == person) & (pl.col("window") == window)
        data = _dataset(meta, catalog, zoning, trips.filter(mine), presence.filter(mine))
        try:
            keys, weights = row_keys(spec, data)
        except Exception:
            return
        per_key = np.bincount(keys, weights=weights) if len(keys) else np.zeros(0)
        assert np.count_nonzero(per_key) <= triple.l0
        assert per_key.sum() <= triple.l1
        assert per_key.max(initial=0) <= triple.linf


# -- the empirical audit ------------------------------------------------------------------------------

AUDIT_EPSILON, AUDIT_DELTA = "1", "0.05"
PAIRS = 5  # the person's trips: one each into 5 cell pairs that D0 never holds in the week


def cp_lower(k: int, n: int) -> float:
    return 0.0 if k == 0 else float(beta.ppf(DELTA_CP, k, n - k + 1))


def cp_upper(k: int, n: int) -> float:
    return 1.0 if k == n else float(beta.ppf(1 - DELTA_CP, k + 1, n - k))


def tail_ge(scale: float, m: int) -> float:
    """Exact P(N >= m) for N discrete Laplace at `scale`."""
    a = math.exp(-1.0 / scale)
    return a**m / (1 + a) if m >= 1 else 1 - a ** (1 - m) / (1 + a)


def _neighbours(root: Path) -> tuple[str, str, list[tuple[str, str]]]:
    """D0 = the small city (approx_dp); D1 = D0 plus one person-window's 5 trips into 5 absent cell pairs."""
    src = build_small_dataset(root, "audit0", accounting="approx_dp", dense_limit=1000)
    data = load_dataset(src)
    held = set(observed_counts(make_spec("flows", dataset="audit0", zoning="cell", **WEEK), data).keys.tolist())
    absent = [k for k in range(N_CELLS * N_CELLS) if k not in held][:PAIRS]
    pairs = [(f"c{k // N_CELLS:03d}", f"c{k % N_CELLS:03d}") for k in absent]
    added = pl.DataFrame({"day": [FIRST_DAY] * PAIRS, "hour": [8] * PAIRS, "origin": [o for o, _ in pairs],
                          "dest": [d for _, d in pairs], "count": [1] * PAIRS},
                         schema={"day": pl.Date, "hour": pl.Int8, "origin": pl.String, "dest": pl.String,
                                 "count": pl.Int64})
    trips = pl.concat([read_interchange(src, "trips").collect(), added])
    out = build_small_dataset(root, "audit1", accounting="approx_dp", dense_limit=1000)
    write_aggregates(out, load_dataset(out).metadata, pl.read_parquet(version_dir(src) / "cells.parquet"), trips,
                     read_interchange(src, "presence").collect())
    return "audit0", "audit1", pairs


@pytest.mark.parametrize(("threads", "chunk_records"), [(1, 1 << 22), (2, 1 << 22), (2, 7_777), (3, 50_000)])
def test_the_parts_cover_every_key_once_balanced_by_keys_and_within_the_record_cap(
        monkeypatch: pytest.MonkeyPatch, threads: int, chunk_records: int) -> None:
    """OpenDP's cost is per key: the parts hold equal numbers of keys (PARTS_PER_THREAD per thread), cut further
    where a part would hold more than CHUNK_RECORDS records, and together every key exactly once, in order."""
    monkeypatch.setattr(threshold_module, "THREADS", threads)
    monkeypatch.setattr(threshold_module, "CHUNK_RECORDS", chunk_records)
    counts = np.random.default_rng(7).zipf(1.6, size=60_000).clip(max=5_000).astype(np.int64)
    parts = threshold_module._chunks(counts)
    assert parts[0][0] == 0 and parts[-1][1] == len(counts)
    assert all(stop == start for (_, stop), (start, _) in itertools.pairwise(parts))
    shares = threads * threshold_module.PARTS_PER_THREAD if threads > 1 else 1
    assert all(stop - start <= -(-len(counts) // shares) for start, stop in parts)
    # a part holds at most the cap, plus the one key that crossed it
    assert all(counts[start:stop].sum() <= chunk_records + counts[start:stop].max() for start, stop in parts)
    if threads == 1 and chunk_records >= counts.sum():
        assert parts == [(0, len(counts))]
    assert threshold_module._chunks(np.ones(100, dtype=np.int64)) == [(0, 100)]  # too few keys to share
    assert threshold_module._chunks(np.zeros(0, dtype=np.int64)) == [(0, 0)]


@pytest.mark.parametrize(("threads", "chunk_records"), [(1, 1 << 22), (2, 1 << 22), (2, 10_007)])
def test_joining_the_parts_releases_every_key_once(monkeypatch: pytest.MonkeyPatch, threads: int,
                                                   chunk_records: int) -> None:
    """Keys far above the threshold are all released, each once, with its own count plus noise, however the keys
    are split into parts and threads; keys never given to OpenDP are never released. At ε = 4, δ = 1e-3 the
    scale is 1.25 and the threshold 15 (OpenDP's map): a key of count 60 misses it with probability e^-36 and
    is off by more than 40 with probability 2e^-32, so over 30,000 keys this fails less than once in 10^9."""
    monkeypatch.setattr(threshold_module, "THREADS", threads)
    monkeypatch.setattr(threshold_module, "CHUNK_RECORDS", chunk_records)
    contribution, loss = Contribution(5, 5, 5), ApproxDP.parse_pair("4", "1e-3")
    scale, threshold = plan_threshold(contribution, loss)
    assert (scale, threshold) == (1.25, 15)
    keys = np.arange(30_000, dtype=np.int64) * 3 + 1
    released = release_sparse(keys, np.full(len(keys), 60, dtype=np.int64), contribution, loss)
    assert released.keys.tolist() == keys.tolist()
    assert int(np.abs(released.values - 60).max()) <= 40 and (released.values >= threshold).all()


@pytest.mark.slow
def test_audit_the_persons_keys_cross_the_threshold_at_most_delta_often(tmp_path: Path) -> None:
    d0, d1, pairs = _neighbours(tmp_path)
    store = AggregateStore(tmp_path)
    spec1 = make_spec("flows", dataset=d1, zoning="cell", **WEEK)
    loss = ApproxDP.parse_pair(AUDIT_EPSILON, AUDIT_DELTA)
    contribution = query_sensitivity(spec1, store.get(d1)).contribution
    assert contribution.as_tuple() == (5, 5, 5)
    scale, threshold = plan_threshold(contribution, loss)
    exact = 1 - (1 - tail_ge(scale, threshold - 1)) ** PAIRS  # P(E | D1); P(E | D0) = 0
    assert exact <= float(AUDIT_DELTA)

    copies = 40_000
    keys = np.arange(copies * PAIRS, dtype=np.int64)
    released = release_sparse(keys, np.ones_like(keys), contribution, loss)
    hit = np.zeros(copies, dtype=bool)
    hit[released.keys // PAIRS] = True
    k = int(hit.sum())
    assert cp_lower(k, copies) <= exact <= cp_upper(k, copies), (k, exact)
    assert cp_lower(k, copies) <= float(AUDIT_DELTA)
    assert cp_lower(k, copies) >= float(AUDIT_DELTA) / 4, "the audit has no power"

    # the service path: real answers on D1 (fresh ledgers), the same scale and threshold, the same rate
    policy = Policy(planner_max_delta=parse_delta("0.1"))
    answers, hits = 300, 0
    for _ in range(answers):
        service = Service(store, MemoryLedger(), policy)
        client, _ = service.create_client("auditor", "planner")
        for who in (client.id, None):
            service.set_cap(d1, ApproxDP.parse_pair("10", "0.5"), client_id=who, window=None)
        answer = service.answer(QueryRequest(spec1, epsilon=Epsilon.parse(AUDIT_EPSILON),
                                             delta=parse_delta(AUDIT_DELTA)), client)
        assert (answer.noise_scale, answer.threshold) == (scale, threshold)
        hits += any((r["origin"], r["destination"]) in pairs for r in answer.values)
    assert cp_lower(hits, answers) <= exact <= cp_upper(hits, answers), (hits, exact)
    # and on D0 those keys are never released: they are not there
    service = Service(store, MemoryLedger(), policy)
    client, _ = service.create_client("auditor", "planner")
    for who in (client.id, None):
        service.set_cap(d0, ApproxDP.parse_pair("10", "0.5"), client_id=who, window=None)
    answer = service.answer(QueryRequest(make_spec("flows", dataset=d0, zoning="cell", **WEEK),
                                         epsilon=Epsilon.parse(AUDIT_EPSILON), delta=parse_delta(AUDIT_DELTA)), client)
    assert not any((r["origin"], r["destination"]) in pairs for r in answer.values)


def test_audit_catches_a_threshold_calibrated_for_one_key_per_person() -> None:
    """Not vacuous: a threshold planned for ℓ0 = 1 (as if each person touched one key) releases the 5 crossing
    keys of D1 more often than δ allows."""
    loss = ApproxDP.parse_pair(AUDIT_EPSILON, AUDIT_DELTA)
    wrong = Contribution(1, 5, 5)  # the bug: ℓ0 = 1 where L = 5 keys can be touched
    copies = 20_000
    keys = np.arange(copies * PAIRS, dtype=np.int64)
    released = release_sparse(keys, np.ones_like(keys), wrong, loss)
    hit = np.zeros(copies, dtype=bool)
    hit[released.keys // PAIRS] = True
    assert cp_lower(int(hit.sum()), copies) > float(AUDIT_DELTA), "the audit missed a 5x δ"
