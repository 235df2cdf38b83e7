"""Empirical privacy audit: a lower bound on the ε the mechanism really spends, from samples.

Neighbouring datasets, built through the real aggregate writer: D0 is the small test city, D1
adds one person's bounded records in the worst way, all L trips into one key (one day, one
hour, one origin cell, one destination cell), so the flows vector moves by exactly L at one key
and the ℓ1 distance is L. For any event E on the released value at that key, pure ε-DP gives
P(E | D1) <= e^ε · P(E | D0) and the same with D0 and D1 swapped, so

    ε_lb = ln(p1_lower / p0_upper)

with one-sided Clopper–Pearson bounds is a lower bound on the true ε with high confidence;
the test fails if ε_lb exceeds the claimed ε.

Samples. For throughput we release, through `dpflows.mechanisms.release_counts` at the query's
sensitivity L, a vector of N copies of the key's true count. OpenDP's vector Laplace adds
independent noise to each coordinate, so this is N independent draws of the key's released
value; the other keys are equal in D0 and D1 with independent noise, so the key's value carries
the whole likelihood ratio and auditing it is auditing the release. A smaller number of answers
through `Service.answer` (fresh ledger each time, the real 64-key release) checks that the
service path uses the same scale and the same distribution and stays under ε as well.

Events, per configuration (c0 = the key's count in D0): {Y >= c0 + L} (the optimal event: its
likelihood ratio is exactly e^ε and it is the likeliest such event), {Y >= c0 + 2L}, {Y >= c0 +
ceil(L/2)}, and {Y <= c0} with D0 on top (DP is symmetric).

False failures, the arithmetic. Every Clopper–Pearson bound is one-sided at δ = 1e-8 (a bound
fails with probability at most δ). An ε_lb can exceed the true ε only if one of its two bounds
fails, so with 4 events (8 bounds) on the copies, 1 event (2 bounds) on the service answers and
4 one-sided bounds checking the service rates against the exact pmf, a configuration fails
falsely with probability at most 14 · 1e-8; three configurations give 4.2e-7 < 1e-6. The power
assertions (ε_lb >= ε/2 for the optimal event) fail falsely with far smaller probability: with
z = 5.6 for δ = 1e-8 and N = 200,000, the expected ε_lb is ε - z·(σ1/p1 + σ0/p0)/√N (σ = binomial
sd per draw), i.e. 0.96 at ε = 1, 0.22 at ε = 0.25, 0.075 at ε = 0.1 (L = 1), against required
0.5, 0.125, 0.05, and the sampling sd of ε_lb is 0.002–0.005, so each margin is more than 5 sd.
Runtime: about 10 s per configuration (400,000 draws, 2,000 service answers), about 35 s in all on two cores.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from scipy.stats import beta

from dpflows.aggregates import AggregateStore, DatasetMetadata, read_interchange, version_dir, write_aggregates
from dpflows.budget import Epsilon
from dpflows.ledger.memory import MemoryLedger
from dpflows.mechanisms import release_counts, scale_for_epsilon
from dpflows.queries import make_spec, prepare
from dpflows.service import QueryRequest, Service
from tests.conftest import FIRST_DAY, N_CELLS, build_small_dataset

pytestmark = pytest.mark.slow

DELTA = 1e-8  # one-sided failure probability of every Clopper–Pearson bound
N_COPIES = 200_000
N_SERVICE = 1000
WEEK = (FIRST_DAY, FIRST_DAY + dt.timedelta(days=7))
ORIGIN, DEST = "c000", f"c{N_CELLS - 1:03d}"  # zone d0 -> zone d7 of 'districts'


def cp_lower(successes: int, n: int, delta: float = DELTA) -> float:
    """One-sided Clopper–Pearson lower bound: P(p < bound) <= delta."""
    return 0.0 if successes == 0 else float(beta.ppf(delta, successes, n - successes + 1))


def cp_upper(successes: int, n: int, delta: float = DELTA) -> float:
    """One-sided Clopper–Pearson upper bound: P(p > bound) <= delta."""
    return 1.0 if successes == n else float(beta.ppf(1 - delta, successes + 1, n - successes))


def epsilon_lower_bound(hits_top: int, n_top: int, hits_bottom: int, n_bottom: int) -> float:
    """ln(p_top_lower / p_bottom_upper): a lower bound on ε that holds unless a CP bound failed."""
    lower, upper = cp_lower(hits_top, n_top), cp_upper(hits_bottom, n_bottom)
    return -math.inf if lower <= 0 else math.log(lower / upper)


def tail_ge(scale: float, m: int) -> float:
    """Exact P(N >= m) for discrete Laplace noise N."""
    a = math.exp(-1.0 / scale)
    return a**m / (1 + a) if m >= 1 else 1 - a ** (1 - m) / (1 + a)


@dataclass(frozen=True)
class Neighbours:
    root: Path
    d0: str
    d1: str
    sensitivity: int


def _districts_csv() -> str:
    return "cell_id,zone_id\n" + "".join(f"c{i:03d},d{i // 5}\n" for i in range(N_CELLS))


def build_neighbours(root: Path, bound: int) -> Neighbours:
    """D0 = the small test city; D1 = D0 plus one person's L trips, all into one key."""
    d0, d1 = f"audit0-l{bound}", f"audit1-l{bound}"
    src = build_small_dataset(root, d0, bound_trips=bound)
    # (day, hour, origin, dest) -> count; one person-window adds L to one key, the worst case
    added = pl.DataFrame({"day": [FIRST_DAY], "hour": [8], "origin": [ORIGIN], "dest": [DEST], "count": [bound]})
    trips = pl.concat([
        read_interchange(src, "trips").collect(),
        added.with_columns(pl.col("hour").cast(pl.Int8), pl.col("count").cast(pl.Int64)),
    ]).group_by("day", "hour", "origin", "dest").agg(pl.col("count").sum())
    meta = DatasetMetadata(d1, FIRST_DAY, FIRST_DAY + dt.timedelta(days=28), 7, bound, 20, {"kind": "synthetic-test"})
    write_aggregates(root / "datasets" / d1, meta, pl.read_parquet(version_dir(src) / "cells.parquet"), trips,
                     read_interchange(src, "presence").collect())
    Service(AggregateStore(root), MemoryLedger()).add_zoning(d1, "districts", _districts_csv())
    return Neighbours(root, d0, d1, bound)


def flows_spec(dataset: str):
    return make_spec("flows", dataset=dataset, zoning="districts", start=WEEK[0], end=WEEK[1])


CONFIGS = [
    pytest.param(5, "1", id="L5-eps1"),
    pytest.param(5, "0.25", id="L5-eps0.25"),
    pytest.param(1, "0.1", id="L1-eps0.1"),
]


@pytest.mark.parametrize(("bound", "eps_text"), CONFIGS)
def test_audit_epsilon_lower_bound_stays_below_claim(
    tmp_path: Path, bound: int, eps_text: str, record_property: pytest.RecordProperty
) -> None:
    epsilon = Epsilon.parse(eps_text)
    eps = epsilon.as_float()
    pair = build_neighbours(tmp_path, bound)
    store = AggregateStore(tmp_path)
    v0 = prepare(flows_spec(pair.d0), store.get(pair.d0))
    v1 = prepare(flows_spec(pair.d1), store.get(pair.d1))
    diff = v1.true_counts - v0.true_counts
    assert np.abs(diff).sum() == bound and np.count_nonzero(diff) == 1, "neighbours at ℓ1 distance L"
    assert v0.sensitivity == v1.sensitivity == bound
    key = int(np.flatnonzero(diff)[0])
    c0 = int(v0.true_counts[key])

    # N independent draws of the key's released value under each dataset.
    y0 = release_counts(np.full(N_COPIES, c0, dtype=np.int64), bound, epsilon).values
    y1 = release_counts(np.full(N_COPIES, c0 + bound, dtype=np.int64), bound, epsilon).values
    events = {
        "Y >= c0+L (optimal)": (y1 >= c0 + bound, y0 >= c0 + bound),
        "Y >= c0+2L": (y1 >= c0 + 2 * bound, y0 >= c0 + 2 * bound),
        "Y >= c0+ceil(L/2)": (y1 >= c0 + math.ceil(bound / 2), y0 >= c0 + math.ceil(bound / 2)),
        "Y <= c0 (D0 on top)": (y0 <= c0, y1 <= c0),
    }
    lower_bounds = {
        name: epsilon_lower_bound(int(top.sum()), N_COPIES, int(bottom.sum()), N_COPIES)
        for name, (top, bottom) in events.items()
    }
    for name, lb in lower_bounds.items():
        record_property(f"eps_lb[{name}]", round(lb, 4))
        assert lb <= eps, f"{name}: empirical ε lower bound {lb:.4f} exceeds the claimed ε={eps}"
    optimal = lower_bounds["Y >= c0+L (optimal)"]
    assert optimal >= 0.5 * eps, f"audit has no power: ε_lb={optimal:.4f} < ε/2={eps / 2}"
    print(f"\n[audit L={bound} ε={eps}] " + ", ".join(f"{k}: ε_lb={v:.4f}" for k, v in lower_bounds.items()))

    # The service path: real answers on fresh ledgers, the same mechanism at the same scale.
    scale = scale_for_epsilon(bound, epsilon)
    hits = {}
    for name in (pair.d0, pair.d1):
        values = []
        for _ in range(N_SERVICE):
            service = Service(store, MemoryLedger())
            client, _key = service.create_client("auditor", "planner")
            service.set_cap(name, Epsilon.parse("10"), client_id=client.id, window=None)
            service.set_cap(name, Epsilon.parse("10"), client_id=None, window=None)
            answer = service.answer(QueryRequest(spec=flows_spec(name), epsilon=epsilon), client)
            assert not answer.reused and answer.charged == epsilon
            assert answer.noise_scale == scale and answer.sensitivity == bound
            assert answer.mechanism == "discrete_laplace"
            row = answer.values[key]
            assert (row["origin"], row["destination"]) == ("d0", "d7")
            values.append(row["count"])
        hits[name] = int((np.asarray(values) >= c0 + bound).sum())
    service_lb = epsilon_lower_bound(hits[pair.d1], N_SERVICE, hits[pair.d0], N_SERVICE)
    record_property("eps_lb[service, optimal]", round(service_lb, 4))
    assert service_lb <= eps
    # The service's event rates agree with the exact discrete Laplace at the stated scale.
    for name, exact in ((pair.d0, tail_ge(scale, bound)), (pair.d1, tail_ge(scale, 0))):
        assert cp_lower(hits[name], N_SERVICE) <= exact <= cp_upper(hits[name], N_SERVICE), name
    print(f"[audit L={bound} ε={eps}] service path ({N_SERVICE} answers per dataset): ε_lb={service_lb:.4f}")


def test_audit_catches_a_mechanism_that_underestimates_sensitivity() -> None:
    """The audit is not vacuous: noise calibrated to sensitivity 1 instead of L=5 at claimed ε=1 fails it."""
    epsilon, bound, c0 = Epsilon.parse("1"), 5, 100
    wrong = 1  # the bug: a per-record sensitivity where the person bound L applies
    y0 = release_counts(np.full(50_000, c0, dtype=np.int64), wrong, epsilon).values
    y1 = release_counts(np.full(50_000, c0 + bound, dtype=np.int64), wrong, epsilon).values
    lb = epsilon_lower_bound(int((y1 >= c0 + bound).sum()), 50_000, int((y0 >= c0 + bound).sum()), 50_000)
    assert lb > epsilon.as_float(), f"the audit missed a 5x privacy loss (ε_lb={lb:.3f})"
