"""Repetition cannot average the noise away (design §4, answer reuse).

An averaging attacker asks the same query n times and averages: with fresh noise each time the
error shrinks like 1/√n and the privacy loss grows like n·ε. dpflows answers the identical
normalized query from the stored release instead: the same values, `reused` true, ε charged
once, so the average of any number of repeats is the first answer. Queries that differ only
in a no-op way (weekday order, duplicated weekdays, an hour range that spells all hours)
normalize to the same key and are reused too. Queries that differ in substance (another ε)
are fresh releases, each charged, and the client cap ends that game.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from dpflows.budget import Epsilon
from dpflows.errors import BudgetExceeded
from dpflows.queries import make_spec
from dpflows.service import Answer, QueryRequest, Service
from tests.conftest import FIRST_DAY

WEEK = (FIRST_DAY, FIRST_DAY + dt.timedelta(days=7))  # window 0 only
EPSILON = Epsilon.parse("0.5")


def _flows(**kwargs: object) -> QueryRequest:
    spec = make_spec("flows", dataset="small", zoning="districts", start=WEEK[0], end=WEEK[1], **kwargs)  # type: ignore[arg-type]
    return QueryRequest(spec=spec, epsilon=EPSILON)


def _counts(answer: Answer) -> np.ndarray:
    return np.asarray([row["count"] for row in answer.values], dtype=np.int64)


def test_fifty_identical_queries_return_one_stored_answer(service: Service, planner) -> None:
    answers = [service.answer(_flows(hours=[7, 10], weekdays=[0, 1, 2, 3, 4]), planner) for _ in range(50)]
    first = answers[0]
    assert not first.reused and first.charged == EPSILON
    for later in answers[1:]:
        assert later.reused
        assert later.charged == Epsilon.zero()
        assert later.answer_id == first.answer_id
        assert later.values == first.values
    stacked = np.stack([_counts(a) for a in answers])
    # The averaging attack's estimate is exactly the first noisy answer: no noise was removed.
    np.testing.assert_array_equal(stacked.mean(axis=0), _counts(first))
    assert np.all(stacked.std(axis=0) == 0)
    # Charged once, in the one window the query touches.
    assert service.ledger.total_charged("small", 0, planner.id) == EPSILON
    assert service.ledger.total_charged("small", 1, planner.id) == Epsilon.zero()
    outcomes = [e.outcome for e in service.ledger.read_audit(limit=1000) if e.action == "query.flows"]
    assert outcomes.count("released") == 1 and outcomes.count("reused") == 49


@pytest.mark.parametrize(
    ("first", "variants"),
    [
        pytest.param(
            {"weekdays": [0, 1, 2, 3, 4]},
            [{"weekdays": [4, 3, 2, 1, 0]}, {"weekdays": [2, 0, 4, 1, 3]}, {"weekdays": [0, 0, 1, 2, 2, 3, 4, 4]}],
            id="weekday-order-and-duplicates",
        ),
        pytest.param(
            {},
            [{"hours": [0, 24]}, {"hours": None}, {"weekdays": [6, 5, 4, 3, 2, 1, 0]},
             {"hours": [0, 24], "weekdays": [0, 1, 2, 3, 4, 5, 6, 6]}],
            id="all-hours-and-all-weekdays-spelled-out",
        ),
        pytest.param(
            {"hours": [22, 2], "weekdays": [5, 6]},
            [{"hours": [22, 2], "weekdays": [6, 5]}, {"hours": [22, 2], "weekdays": [6, 5, 6, 5]}],
            id="wrapping-hours-weekend",
        ),
    ],
)
def test_no_op_variants_normalize_to_the_same_stored_answer(
    service: Service, planner, first: dict, variants: list[dict]
) -> None:
    original = service.answer(_flows(**first), planner)
    assert not original.reused
    for variant in variants:
        request = _flows(**variant)
        assert request.spec.key() == original.spec.key(), variant
        again = service.answer(request, planner)
        assert again.reused, variant
        assert again.charged == Epsilon.zero()
        assert again.answer_id == original.answer_id
        np.testing.assert_array_equal(_counts(again), _counts(original))
    assert service.ledger.total_charged("small", 0, planner.id) == EPSILON


def test_a_real_change_is_a_new_release_and_is_charged(service: Service, planner) -> None:
    """One hour fewer is a different query: fresh noise, charged again (this is what the cap limits)."""
    a = service.answer(_flows(hours=[7, 10]), planner)
    b = service.answer(_flows(hours=[7, 9]), planner)
    assert not a.reused and not b.reused and a.answer_id != b.answer_id
    assert service.ledger.total_charged("small", 0, planner.id) == EPSILON + EPSILON


def test_nudging_epsilon_to_dodge_reuse_runs_into_the_cap(service: Service, planner) -> None:
    """ε is part of the reuse key, so 0.5 and 0.500000001 are two releases; both are charged and the
    planner's cap of 1 per window stops the third. Averaging fresh answers costs budget every time."""
    service.answer(_flows(), planner)
    request = _flows()
    nudged = QueryRequest(spec=request.spec, epsilon=Epsilon.parse("0.499999999"))
    service.answer(nudged, planner)
    with pytest.raises(BudgetExceeded):
        service.answer(QueryRequest(spec=request.spec, epsilon=Epsilon.parse("0.0001")), planner)
    assert service.ledger.total_charged("small", 0, planner.id) == Epsilon.parse("0.999999999")
