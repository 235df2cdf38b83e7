"""Relative change of presence: two answers, each charged once or reused, a per-zone interval
that covers the true change at least at the stated rate, and refusal that charges nothing."""

from __future__ import annotations

import dataclasses
import datetime as dt

import numpy as np
import pytest

from dpflows.aggregates import AggregateStore
from dpflows.budget import Epsilon
from dpflows.errors import BudgetExceeded, InvalidInput
from dpflows.ledger.memory import MemoryLedger
from dpflows.queries import make_spec, prepare
from dpflows.service import Answer, QueryRequest, Service

D0 = dt.date(2024, 3, 4)
WEEK = dt.timedelta(days=7)


def presence(start: dt.date, end: dt.date, **kw):
    return make_spec("presence", dataset="small", zoning="districts", start=start, end=end, **kw)


def test_relative_change_charges_both_answers_once(service: Service, planner) -> None:
    spec = presence(D0 + WEEK, D0 + 3 * WEEK, weekdays=[0, 1, 2, 3, 4], hours=[7, 10])
    req = QueryRequest(spec, epsilon=Epsilon.parse("0.25"))
    rc = service.relative_change(req, D0, D0 + WEEK, planner)
    assert rc.current_days == 10 and rc.baseline_days == 5 and rc.confidence == 0.95
    assert rc.current.charged == rc.baseline.charged == Epsilon.parse("0.25")
    assert [w.window for w in rc.current.windows] == [1, 2] and [w.window for w in rc.baseline.windows] == [0]
    assert len(rc.zones) == 8
    for row in rc.zones:
        cur = sum(v["count"] for v in rc.current.values if v["zone"] == row["zone"])
        base = sum(v["count"] for v in rc.baseline.values if v["zone"] == row["zone"])
        assert row["current_per_day"] == cur / 10 and row["baseline_per_day"] == base / 5
        if row["change_pct"] is not None:
            assert row["change_pct"] == pytest.approx(100 * ((max(cur, 0) / 10) / (base / 5) - 1))
            assert row["change_pct_low"] <= row["change_pct"]
            assert row["change_pct_high"] is None or row["change_pct"] <= row["change_pct_high"]
    again = service.relative_change(req, D0, D0 + WEEK, planner)
    assert again.current.reused and again.baseline.reused and again.zones == rc.zones
    for w in range(3):
        assert service.ledger.total_charged("small", w, planner.id) == Epsilon.parse("0.25")


def test_refused_when_the_pair_does_not_fit_and_nothing_is_charged(service: Service, planner) -> None:
    spec = presence(D0 + dt.timedelta(days=3), D0 + WEEK)
    req = QueryRequest(spec, epsilon=Epsilon.parse("0.6"))
    with pytest.raises(BudgetExceeded, match="window 0"):
        service.relative_change(req, D0, D0 + dt.timedelta(days=3), planner)
    assert service.ledger.total_charged("small", 0) == Epsilon.zero()
    [row] = service.ledger.read_audit(after_id=0, limit=100)[-1:]
    assert row.action == "query.relative_change" and row.outcome == "budget_exceeded"
    # A baseline released earlier is reused for free, so only the current answer is charged.
    service.answer(QueryRequest(presence(D0, D0 + dt.timedelta(days=3)), epsilon=Epsilon.parse("0.4")), planner)
    rc = service.relative_change(QueryRequest(spec, epsilon=Epsilon.parse("0.4")), D0, D0 + dt.timedelta(days=3),
                                 planner)
    assert rc.baseline.reused and rc.current.charged == Epsilon.parse("0.4")
    assert service.ledger.total_charged("small", 0) == Epsilon.parse("0.8")


def test_tiny_baselines_give_open_but_valid_intervals(service: Service, planner) -> None:
    from dpflows.service.relative_change import relative_change_from

    spec = presence(D0 + WEEK, D0 + 2 * WEEK, hours=[3, 4])
    rc = service.relative_change(QueryRequest(spec, epsilon=Epsilon.parse("0.25")), D0, D0 + WEEK, planner)
    # Post-process stand-ins for a baseline near zero and one far below it (noise only, no data).
    def with_counts(count: int) -> Answer:
        content = rc.baseline.content
        return dataclasses.replace(rc.baseline, source=dataclasses.replace(content, counts=[count] * len(content.counts)))

    zero = with_counts(0)
    for row in relative_change_from(rc.current, zero).zones:
        assert row["change_pct"] is None and row["change_pct_high"] is None and row["change_pct_low"] >= -100.0
    negative = with_counts(-10**6)
    row = relative_change_from(rc.current, negative).zones[0]
    assert row["change_pct"] is None and row["change_pct_low"] == -100.0 and row["change_pct_high"] is None


def test_only_presence(service: Service, planner) -> None:
    spec = make_spec("flows", dataset="small", zoning="districts", start=D0 + WEEK, end=D0 + 2 * WEEK)
    with pytest.raises(InvalidInput) as info:
        service.relative_change(QueryRequest(spec, epsilon=Epsilon.parse("0.1")), D0, D0 + WEEK, planner)
    assert info.value.field == "kind"
    assert service.ledger.total_charged("small", 0) == Epsilon.zero()


@pytest.mark.slow
def test_interval_covers_the_true_change_at_least_at_the_stated_rate(store: AggregateStore) -> None:
    service = Service(store, MemoryLedger())
    client, _ = service.create_client("sim", "planner")
    service.set_cap("small", Epsilon.parse("1000"), client_id=client.id, window=None)
    service.set_cap("small", Epsilon.parse("1000"), client_id=None, window=None)
    spec = presence(D0 + WEEK, D0 + 2 * WEEK, hours=[6, 22])
    data = store.get("small")
    base_spec = presence(D0, D0 + WEEK, hours=[6, 22])
    truth_c = prepare(spec, data).true_counts.reshape(8, -1).sum(axis=1) / 7
    truth_b = prepare(base_spec, data).true_counts.reshape(8, -1).sum(axis=1) / 7
    true_change = 100 * (truth_c / truth_b - 1)
    hits = total = 0
    for i in range(150):  # a distinct ε per draw makes each a fresh release, not a reuse
        req = QueryRequest(spec, epsilon=Epsilon(1_000_000_000 - i))
        rc = service.relative_change(req, D0, D0 + WEEK, client)
        for row, truth in zip(rc.zones, true_change, strict=True):
            high = np.inf if row["change_pct_high"] is None else row["change_pct_high"]
            hits += int(row["change_pct_low"] <= truth <= high)
            total += 1
    print(f"relative change: interval coverage {hits / total:.4f} over {total} zone-draws")
    assert hits / total >= 0.95, hits / total
