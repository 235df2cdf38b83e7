"""Consistent post-processing: non-negative integers, exactly agreeing totals, least squares,
and answers that add up through the service at no cost."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy.optimize import minimize

from dpflows.budget import Epsilon
from dpflows.postprocess import consistent_table, nonnegative_total, project_transportation
from dpflows.queries import make_spec
from dpflows.service import QueryRequest, Service

D0 = dt.date(2024, 3, 4)


def check_consistent(y: np.ndarray) -> None:
    ct = consistent_table(y)
    x = ct.cells
    assert x.dtype == np.int64 and x.shape == y.shape and x.min() >= 0
    assert (x.sum(axis=1) == ct.row_totals).all() and (x.sum(axis=0) == ct.col_totals).all()
    assert int(x.sum()) == ct.total == max(int(y.sum()), 0)
    assert ct.converged
    # Raw totals are kept exactly wherever they are non-negative.
    if y.sum(axis=1).min() >= 0:
        assert (ct.row_totals == y.sum(axis=1)).all()
    if y.sum(axis=0).min() >= 0:
        assert (ct.col_totals == y.sum(axis=0)).all()


@settings(max_examples=200, deadline=None)
@given(arrays(np.int64, st.tuples(st.integers(1, 7), st.integers(1, 7)), elements=st.integers(-60, 60)))
def test_any_table_becomes_consistent(y: np.ndarray) -> None:
    check_consistent(y)


def test_noisy_tables_keep_their_totals_and_stay_near_least_squares() -> None:
    rng = np.random.default_rng(7)  # synthetic test tables, not DP noise
    for shape, lam, scale in [((8, 8), 10, 20.0), ((8, 24), 3, 80.0), ((2, 2), 400, 20.0)]:
        for _ in range(20):
            p = 1 - np.exp(-1 / scale)
            y = rng.poisson(lam, shape) + rng.geometric(p, shape) - rng.geometric(p, shape)
            check_consistent(y)
            ct = consistent_table(y)
            x_star, converged = project_transportation(y.astype(float), ct.row_totals, ct.col_totals)
            assert converged
            assert np.all(np.abs(ct.cells - x_star) < 1.0 + 1e-6)  # floor or ceil of least squares


def test_projection_is_the_least_squares_solution() -> None:
    rng = np.random.default_rng(3)
    y = rng.integers(-8, 12, (3, 4)).astype(float)
    rows = nonnegative_total(y.sum(axis=1).astype(np.int64), max(int(y.sum()), 0))
    cols = nonnegative_total(y.sum(axis=0).astype(np.int64), max(int(y.sum()), 0))
    ours, converged = project_transportation(y, rows, cols)
    assert converged
    cons = [{"type": "eq", "fun": lambda v, i=i: v.reshape(3, 4)[i].sum() - rows[i]} for i in range(3)]
    cons += [{"type": "eq", "fun": lambda v, j=j: v.reshape(3, 4)[:, j].sum() - cols[j]} for j in range(3)]
    ref = minimize(lambda v: ((v - y.ravel()) ** 2).sum(), np.full(12, max(y.sum(), 0) / 12), method="SLSQP",
                   bounds=[(0, None)] * 12, constraints=cons, options={"ftol": 1e-12, "maxiter": 500})
    assert ref.success
    assert ((ours - y) ** 2).sum() <= ref.fun + 1e-6
    np.testing.assert_allclose(ours.ravel(), ref.x, atol=1e-4)


def test_negative_totals_are_projected_with_the_grand_total_kept() -> None:
    y = np.array([[-5, -3], [2, 20]])
    ct = consistent_table(y)
    assert ct.total == 14 and ct.row_totals.tolist() == [0, 14] and ct.cells[0].tolist() == [0, 0]
    assert consistent_table(np.array([[-5, 1], [1, -1]])).cells.tolist() == [[0, 0], [0, 0]]


def ask(service: Service, client, spec, epsilon: str = "0.25", **kw):
    return service.answer(QueryRequest(spec, epsilon=Epsilon.parse(epsilon), **kw), client)


def test_consistent_flows_add_up_and_keep_raw_values(service: Service, planner) -> None:
    spec = make_spec("flows", dataset="small", zoning="districts", start=D0, end=D0 + dt.timedelta(days=7),
                     hours=[2, 4])
    a = ask(service, planner, spec, consistent=True)
    counts = np.array([v["count"] for v in a.values]).reshape(8, 8)
    assert counts.min() >= 0 and a.raw_values is not None and a.totals is not None and a.raw_totals is not None
    raw = np.array(a.raw_values).reshape(8, 8)
    assert (raw < 0).any()  # a sparse night-time table: raw noise goes negative
    zones = [f"d{i}" for i in range(8)]
    assert [a.totals["departures"][z] for z in zones] == counts.sum(axis=1).tolist()
    assert [a.totals["arrivals"][z] for z in zones] == counts.sum(axis=0).tolist()
    assert a.totals["total"] == counts.sum() == max(raw.sum(), 0)
    assert a.raw_totals["total"] == raw.sum()
    assert a.raw_totals["error_bound_95"]["total"] > a.raw_totals["error_bound_95"]["departures"]["d0"]
    assert a.raw_totals["error_bound_95"]["departures"]["d0"] > a.error_bound_95
    assert any(p.startswith("consistent:") for p in a.postprocessing)
    # The same release without post-processing shows the raw values, unchanged.
    b = ask(service, planner, spec)
    assert [v["count"] for v in b.values] == a.raw_values and b.raw_values is None and b.totals is None


def test_consistent_presence_adds_up_across_zones_and_hours(service: Service, planner) -> None:
    spec = make_spec("presence", dataset="small", zoning="districts", start=D0, end=D0 + dt.timedelta(days=7))
    a = ask(service, planner, spec, consistent=True)
    counts = np.array([v["count"] for v in a.values]).reshape(8, 24)
    assert counts.min() >= 0
    assert a.totals is not None and sum(a.totals["by_zone"].values()) == a.totals["total"] == counts.sum()
    assert list(a.totals["by_hour"].values()) == counts.sum(axis=0).tolist()
    assert list(a.totals["by_zone"].values()) == counts.sum(axis=1).tolist()


def test_reused_answer_made_consistent_costs_nothing_and_is_stable(service: Service, planner) -> None:
    spec = make_spec("flows", dataset="small", zoning="sectors", start=D0, end=D0 + dt.timedelta(days=7))
    first = ask(service, planner, spec)
    again = ask(service, planner, spec, consistent=True)
    third = ask(service, planner, spec, consistent=True)
    assert again.reused and again.charged == Epsilon.zero() and again.answer_id == first.answer_id
    assert again.values == third.values and again.raw_values == [v["count"] for v in first.values]
    assert service.ledger.total_charged("small", 0, planner.id) == Epsilon.parse("0.25")


def test_clamping_keeps_raw_values(service: Service, planner) -> None:
    spec = make_spec("flows", dataset="small", zoning="districts", start=D0, end=D0 + dt.timedelta(days=7),
                     hours=[3, 4])
    a = ask(service, planner, spec, clamp_negative=True)
    assert a.raw_values is not None and min(v["count"] for v in a.values) >= 0
    assert [max(r, 0) for r in a.raw_values] == [v["count"] for v in a.values]


@pytest.mark.parametrize("shape", [(1, 1), (1, 5), (5, 1)])
def test_degenerate_shapes(shape: tuple[int, int]) -> None:
    check_consistent(np.arange(np.prod(shape)).reshape(shape) - 2)
