"""The service end to end in-process: policy, pricing, reuse, atomic charging, audit, safe errors."""

from __future__ import annotations

import datetime as dt
import re

import numpy as np
import pytest

from dpflows.budget import Epsilon
from dpflows.errors import AuthenticationFailed, BudgetExceeded, DpflowsError, InvalidInput, PolicyViolation
from dpflows.queries import make_spec, prepare
from dpflows.service import QueryRequest, Service

D0 = dt.date(2024, 3, 4)


def flows(zoning: str = "districts", days: int = 7, **kw):
    return make_spec("flows", dataset="small", zoning=zoning, start=D0, end=D0 + dt.timedelta(days=days), **kw)


def ask(service: Service, client, spec, epsilon: str | None = "0.25", **kw):
    eps = None if epsilon is None else Epsilon.parse(epsilon)
    if client.role == "analyst":
        kw.setdefault("case_ref", "case-0001")
    return service.answer(QueryRequest(spec, epsilon=eps, **kw), client)


def test_answer_states_cost_budget_unit_and_error(service: Service, planner) -> None:
    a = ask(service, planner, flows())
    assert a.charged == Epsilon.parse("0.25") and not a.reused
    assert a.budget_remaining == Epsilon.parse("0.75")
    assert a.privacy_unit == "person-window (7 days)"
    assert a.mechanism == "discrete_laplace" and a.sensitivity == 5 and a.noise_scale == 20.0
    assert a.error_bound_95 > 0 and len(a.values) == 64
    assert set(a.values[0]) == {"origin", "destination", "count"}


def test_spanning_two_windows_charges_each(service: Service, planner) -> None:
    a = ask(service, planner, flows(days=14), epsilon="0.5")
    assert [w.window for w in a.windows] == [0, 1]
    assert [str(w.budget.remaining) for w in a.windows] == ["0.5", "0.5"]
    assert service.ledger.total_charged("small", 1, planner.id) == Epsilon.parse("0.5")


def test_identical_query_is_reused_for_free(service: Service, planner) -> None:
    a = ask(service, planner, flows(weekdays=[0, 1]))
    b = ask(service, planner, flows(weekdays=[1, 0]))
    assert b.reused and b.charged == Epsilon.zero() and b.values == a.values
    assert b.answer_id == a.answer_id
    assert service.ledger.total_charged("small", 0, planner.id) == Epsilon.parse("0.25")


def test_cap_exactly_reachable_then_refused_without_charge(service: Service, planner) -> None:
    for h in range(4):
        ask(service, planner, flows(hours=[h, h + 1]))
    with pytest.raises(BudgetExceeded, match="remaining budget of 0"):
        ask(service, planner, flows(hours=[5, 6]), epsilon="0.0001")  # the smallest ε charged
    assert service.ledger.total_charged("small", 0) == Epsilon.parse("1")
    outcomes = [r.outcome for r in service.ledger.read_audit(limit=100) if r.action == "query.flows"]
    assert outcomes == ["released"] * 4 + ["budget_exceeded"]


def test_max_error_derives_epsilon_and_meets_the_target(service: Service, planner) -> None:
    a = service.answer(QueryRequest(flows(), max_error=150.0), planner)
    assert a.loss_from_max_error and a.error_bound_95 <= 150.0
    assert Epsilon.zero() < a.charged <= Epsilon.parse("1")


def test_roles_and_per_query_caps(service: Service, planner) -> None:
    analyst, _ = service.create_client("police-1", "analyst")
    admin, _ = service.create_client("root", "admin")
    service.set_cap("small", Epsilon.parse("1"), client_id=analyst.id, window=None)
    ok = ask(service, analyst, flows(zoning="sectors"), epsilon="0.25")
    assert len(ok.values) == 4
    for client, spec, eps, field in [
        (analyst, flows(zoning="districts"), "0.1", "zoning"),
        (analyst, flows(zoning="cell"), "0.1", "zoning"),
        (analyst, make_spec("presence", dataset="small", zoning="sectors", start=D0, end=D0 + dt.timedelta(days=7)),
         "0.1", "kind"),
        (analyst, flows(zoning="sectors", hours=[1, 2]), "0.26", "epsilon"),
        (planner, flows(), "1.5", "epsilon"),
        (admin, flows(), "0.1", "role"),
    ]:
        with pytest.raises(PolicyViolation) as info:
            ask(service, client, spec, epsilon=eps)
        assert info.value.field == field
    assert service.ledger.total_charged("small", 0) == Epsilon.parse("0.25")


def test_keys_authenticate_until_revoked(service: Service) -> None:
    client, key = service.create_client("p2", "planner")
    assert key.startswith("dpf_") and len(key) >= 40
    assert service.authenticate(key) == client
    for bad in (None, "", key[:-1] + ("A" if key[-1] != "A" else "B"), "dpf_" + "x" * 43):
        with pytest.raises(AuthenticationFailed):
            service.authenticate(bad)
    [record] = service.ledger.list_keys(client.id)
    service.revoke_key(record.id)
    with pytest.raises(AuthenticationFailed):
        service.authenticate(key)


def test_zero_counts_are_noised_like_any_other(service: Service, planner) -> None:
    spec = make_spec("presence", dataset="small", zoning="cell", start=D0, end=D0 + dt.timedelta(days=1),
                     hours=[3, 4])
    truth = prepare(spec, service.store.get("small")).true_counts
    a = ask(service, planner, spec, epsilon="0.5")
    released = np.array([v["count"] for v in a.values])
    assert len(released) == len(truth) == 40
    assert np.any(released[truth == 0] != 0)  # P(all zeros stay 0) = tanh(1/80)^k, negligible


def test_errors_never_carry_exact_counts(service: Service, planner) -> None:
    spec = flows()
    truth = {int(v) for v in prepare(spec, service.store.get("small")).true_counts if v > 9}
    messages = []
    for call in (
        lambda: ask(service, planner, spec, epsilon="5"),
        lambda: ask(service, planner, flows(zoning="nope")),
        lambda: ask(service, planner, flows(days=60)),
        lambda: service.answer(QueryRequest(spec, max_error=0.5), planner),
    ):
        with pytest.raises(DpflowsError) as info:
            call()
        messages.append(info.value.message)
    for message in messages:
        numbers = {int(n) for n in re.findall(r"(?<![\d.-])\d+(?![\d.-])", message)}
        assert not numbers & truth, message


def test_query_request_needs_exactly_one_price() -> None:
    with pytest.raises(InvalidInput):
        QueryRequest(flows())
    with pytest.raises(InvalidInput):
        QueryRequest(flows(), epsilon=Epsilon.parse("1"), max_error=3.0)


def test_quote_matches_the_charge(service: Service, planner) -> None:
    req = QueryRequest(flows(days=14), max_error=200.0)
    quote = service.quote(req, planner)
    assert service.ledger.total_charged("small", 0) == Epsilon.zero()
    a = service.answer(req, planner)
    assert quote.loss == a.charged and [w.window for w in quote.windows] == [0, 1]
    assert quote.error_bound_95 == a.error_bound_95
    assert service.quote(req, planner).reused is True
