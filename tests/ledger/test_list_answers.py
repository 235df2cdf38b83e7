"""Ledger.list_answers, for every implementation: a dataset's released answers, oldest first,
optionally of one kind; never another dataset's, never a refused release."""

from __future__ import annotations

import uuid

import pytest

from dpflows.budget import Epsilon
from dpflows.errors import BudgetExceeded
from dpflows.ledger import AuditEntry, Ledger, ReleaseRequest


def release(client_id: int, dataset: str, kind: str, epsilon: str = "0.1") -> ReleaseRequest:
    answer_id = uuid.uuid4().hex
    return ReleaseRequest(
        client_id=client_id, dataset=dataset, query_key=uuid.uuid4().hex, windows=(0,), loss=Epsilon.parse(epsilon),
        answer_id=answer_id, payload={"values": [1], "query": {"kind": kind, "dataset": dataset}},
        audit=AuditEntry(action=f"query.{kind}", outcome="released", client_id=client_id, dataset=dataset,
                         loss=Epsilon.parse(epsilon), answer_id=answer_id),
    )


def test_list_answers_filters_by_dataset_and_kind(any_ledger: Ledger) -> None:
    client = any_ledger.create_client("alice", "planner")
    for ds in ("city", "town"):
        any_ledger.set_cap(ds, Epsilon.parse("1"), client_id=client.id, window=None)
        any_ledger.set_cap(ds, Epsilon.parse("1"), client_id=None, window=None)
    ids = [any_ledger.commit_release(release(client.id, "city", kind)).answer.answer_id
           for kind in ("flows", "presence", "flows")]
    any_ledger.commit_release(release(client.id, "town", "flows"))
    with pytest.raises(BudgetExceeded):
        any_ledger.commit_release(release(client.id, "city", "flows", epsilon="0.8"))
    assert [a.answer_id for a in any_ledger.list_answers("city")] == ids
    assert [a.answer_id for a in any_ledger.list_answers("city", "flows")] == [ids[0], ids[2]]
    assert [a.answer_id for a in any_ledger.list_answers("city", "presence")] == [ids[1]]
    assert any_ledger.list_answers("city", "patterns") == []
    assert any_ledger.list_answers("nowhere") == []
    assert any_ledger.list_answers("city")[0].payload["query"]["kind"] == "flows"
