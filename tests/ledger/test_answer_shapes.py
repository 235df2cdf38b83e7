"""Ledger.find_answer_shapes, for every implementation (memory, SQLite, PostgreSQL through the
`any_ledger` contract fixture): the shape of each released answer is indexed in the same
transaction as the answer, the filter means what `ShapeFilter.admits` says, at most the best
`per_zoning` of each zoning and `limit` in all leave the ledger however many are stored, and
answers stored before the index existed are indexed by the migration (issue 18, item 2)."""

from __future__ import annotations

import sqlite3
import uuid
from pathlib import Path
from typing import Any

import pytest

from dpflows.budget import Epsilon, Rho
from dpflows.cli import main
from dpflows.errors import BudgetExceeded
from dpflows.ledger import AuditEntry, Ledger, ReleaseRequest
from dpflows.ledger.base import AnswerShape, ShapeFilter, bit_mask, shape_of
from dpflows.ledger.sqlite import SqliteLedger

DS = "city"


def payload(*, kind: str = "flows", zoning: str = "districts", hours: tuple[int, ...] = tuple(range(24)),
            weekdays: tuple[int, ...] = tuple(range(7)), scale: float = 40.0, loss: str = "epsilon_nanos",
            nanos: int = 500_000_000, start: str = "2024-03-04", end: str = "2024-03-11", version: str = "v1",
            measure: str = "trips", zone: str | None = None, mechanism: str = "discrete_laplace") -> dict[str, Any]:
    """The payload the service stores, with a small value vector."""
    return {
        "values": [1, 2, 3], "key_fields": ["origin", "destination"], "keys": {"origin": [], "destination": []},
        "windows": [0], loss: nanos, "epsilon_derived": False, "mechanism": mechanism, "scale": scale,
        "sensitivity": 20, "data_version": version,
        "query": {"kind": kind, "dataset": DS, "zoning": zoning, "start": start, "end": end, "hours": list(hours),
                  "weekdays": list(weekdays), "measure": measure, "zone": zone},
    }


def release(client_id: int, body: dict[str, Any], epsilon: Epsilon | None = None) -> ReleaseRequest:
    answer_id = uuid.uuid4().hex
    charge = epsilon or Epsilon.parse("0.001")
    return ReleaseRequest(
        client_id=client_id, dataset=DS, query_key=uuid.uuid4().hex, windows=(0,), loss=charge,
        answer_id=answer_id, payload=body,
        audit=AuditEntry(action="query.flows", outcome="released", client_id=client_id, dataset=DS, loss=charge,
                         answer_id=answer_id),
    )


def where(**kw: Any) -> ShapeFilter:
    base: dict[str, Any] = dict(
        kind="flows", data_version="v1", start="2024-03-04", end="2024-03-11", zonings=("districts", "cell"),
        unit="epsilon", max_loss_nanos=1_000_000_000, mechanisms=("discrete_laplace", "discrete_gaussian"),
        hours_mask=bit_mask(range(24), 24), hours_exact=True, weekdays_mask=bit_mask(range(7), 7),
        weekdays_exact=True,
    )
    return ShapeFilter(**(base | kw))


@pytest.fixture
def funded(any_ledger: Ledger) -> tuple[Ledger, int]:
    client = any_ledger.create_client("alice", "planner")
    any_ledger.set_cap(DS, Epsilon.parse("10"), client_id=client.id, window=None)
    any_ledger.set_cap(DS, Epsilon.parse("10"), client_id=None, window=None)
    return any_ledger, client.id


def test_a_release_indexes_its_shape_with_the_answer(funded: tuple[Ledger, int]) -> None:
    ledger, cid = funded
    body = payload(hours=(7, 8, 9), weekdays=(0, 1, 2, 3, 4))
    receipt = ledger.commit_release(release(cid, body))
    [shape] = ledger.find_answer_shapes(DS, where(hours_mask=0b1110000000, weekdays_mask=0b11111))
    assert shape == AnswerShape(receipt.answer.answer_id, DS, "flows", "v1", "discrete_laplace", "2024-03-04",
                                "2024-03-11", "districts", 0b1110000000, 0b11111, "trips", "", "epsilon",
                                500_000_000, 40.0, receipt.answer.created_at)
    assert shape == shape_of(receipt.answer)
    # the identical query again is reused: still one shape
    again = release(cid, body)
    again = ReleaseRequest(**{**again.__dict__, "query_key": receipt.answer.query_key})
    assert ledger.commit_release(again).reused
    assert len(ledger.find_answer_shapes(DS, where(hours_mask=0b1110000000, weekdays_mask=0b11111))) == 1
    assert ledger.find_answer_shapes("elsewhere", where(hours_mask=0b1110000000, weekdays_mask=0b11111)) == []


def test_refused_and_shapeless_releases_are_not_indexed(funded: tuple[Ledger, int]) -> None:
    ledger, cid = funded
    with pytest.raises(BudgetExceeded):
        ledger.commit_release(release(cid, payload(), Epsilon.parse("11")))
    report = {"query": {"kind": "bounding_report", "ingestion": "x"}, "loss_nanos": 5, "unit": "epsilon"}
    ledger.commit_release(release(cid, report))
    ledger.commit_release(release(cid, {"values": [1]}))
    assert ledger.find_answer_shapes(DS, where()) == []
    assert ledger.find_answer_shapes(DS, where(kind="bounding_report")) == []


def test_the_filter_admits_exactly_what_it_says(funded: tuple[Ledger, int]) -> None:
    ledger, cid = funded
    ids = {}
    for name, body in {
        "match": payload(),
        "cell": payload(zoning="cell", scale=41.0),
        "other_zoning": payload(zoning="wards"),
        "other_kind": payload(kind="presence"),
        "other_version": payload(version="v0"),
        "other_dates": payload(end="2024-03-10"),
        "over_the_cap": payload(nanos=1_000_000_001),
        "rho": payload(loss="rho_nanos", nanos=1000, mechanism="discrete_gaussian"),
        "some_hours": payload(hours=(7, 8, 9)),
        "weekdays": payload(weekdays=(0, 1, 2, 3, 4)),
    }.items():
        ids[ledger.commit_release(release(cid, body)).answer.answer_id] = name
    found = [ids[s.answer_id] for s in ledger.find_answer_shapes(DS, where())]
    assert found == ["match", "cell"]  # smallest scale first
    assert [ids[s.answer_id] for s in ledger.find_answer_shapes(DS, where(unit="rho"))] == ["rho"]
    # hours as a key (presence, patterns): a stored answer qualifies if it asked at least these hours
    superset = where(hours_mask=0b1100000000, hours_exact=False, zonings=("districts",))
    assert sorted(ids[s.answer_id] for s in ledger.find_answer_shapes(DS, superset.__class__(
        **{**superset.__dict__, "per_zoning": 5}))) == ["match", "some_hours"]
    loose_days = where(weekdays_mask=0b11, weekdays_exact=False, zonings=("districts",), per_zoning=5)
    assert sorted(ids[s.answer_id] for s in ledger.find_answer_shapes(DS, loose_days)) == ["match", "weekdays"]


def test_patterns_match_measure_and_zone(funded: tuple[Ledger, int]) -> None:
    ledger, cid = funded
    whole = ledger.commit_release(release(cid, payload(kind="patterns", measure="presence"))).answer.answer_id
    ledger.commit_release(release(cid, payload(kind="patterns", measure="presence", zone="d1")))
    ledger.commit_release(release(cid, payload(kind="patterns", measure="trips")))
    found = ledger.find_answer_shapes(DS, where(kind="patterns", zonings=("districts",), pattern=("presence", ""),
                                                per_zoning=5))
    assert [s.answer_id for s in found] == [whole]


def test_at_most_the_best_of_each_zoning_and_limit_in_all(funded: tuple[Ledger, int]) -> None:
    """300 matching answers in one zoning and 20 zonings: the ledger returns the smallest scale of
    each zoning, best first, never more than `limit` rows."""
    ledger, cid = funded
    best: dict[str, str] = {}
    for i in range(300):
        scale = 1000.0 - i  # later answers have smaller scales: the last is the best
        answer = ledger.commit_release(release(cid, payload(scale=scale), Epsilon.parse("0.0001"))).answer
        best["districts"] = answer.answer_id
    zonings = [f"z{j:02d}" for j in range(20)]
    for j, zoning in enumerate(zonings):
        for scale in (500.0 + j, 600.0 + j):
            answer = ledger.commit_release(release(cid, payload(zoning=zoning, scale=scale))).answer
            if scale < 600:
                best[zoning] = answer.answer_id
    everything = tuple(["districts", *zonings])
    found = ledger.find_answer_shapes(DS, where(zonings=everything, limit=100))
    assert [s.answer_id for s in found] == [best[z] for z in zonings] + [best["districts"]]
    assert [s.scale for s in found] == [500.0 + j for j in range(20)] + [701.0]
    limited = ledger.find_answer_shapes(DS, where(zonings=everything, limit=5))
    assert [s.answer_id for s in limited] == [s.answer_id for s in found[:5]]
    two_each = ledger.find_answer_shapes(DS, where(zonings=("z03", "districts"), per_zoning=2, limit=10))
    assert [s.scale for s in two_each] == [503.0, 603.0, 701.0, 702.0]


def test_zcdp_shapes_carry_rho(any_ledger: Ledger) -> None:
    ledger, cid = any_ledger, any_ledger.create_client("alice", "planner").id
    ledger.set_cap(DS, Rho.parse("10"), client_id=cid, window=None)
    ledger.set_cap(DS, Rho.parse("10"), client_id=None, window=None)  # the population's measure: rho
    body = payload(loss="rho_nanos", nanos=2_000_000, mechanism="discrete_gaussian", scale=12.5)
    ledger.commit_release(release(cid, body, Rho.parse("0.002")))
    [shape] = ledger.find_answer_shapes(DS, where(unit="rho", max_loss_nanos=2_000_000))
    assert (shape.unit, shape.loss_nanos, shape.mechanism, shape.scale) == ("rho", 2_000_000, "discrete_gaussian", 12.5)
    assert ledger.find_answer_shapes(DS, where(unit="rho", max_loss_nanos=1_999_999)) == []


# -- migration: answers stored before the index ------------------------------------------------------


def _fill(ledger: Ledger) -> list[str]:
    client = ledger.create_client("old", "planner")
    ledger.set_cap(DS, Epsilon.parse("1"), client_id=client.id, window=None)
    ledger.set_cap(DS, Epsilon.parse("1"), client_id=None, window=None)
    ids = [ledger.commit_release(release(client.id, payload(scale=100.0 + i))).answer.answer_id for i in range(700)]
    ledger.commit_release(release(client.id, {"values": [1]}))  # no shape
    return ids


def test_sqlite_migration_indexes_answers_stored_before(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A ledger of main before issue 18 (no answer_shapes, user_version 0) is indexed once, in
    batches, by `dpflows migrate` or the first open (then step 2 moves each answer into its
    releasing client's sharing group, issue 17)."""
    path = tmp_path / "old.db"
    ledger = SqliteLedger(path)
    ids = _fill(ledger)
    ledger.close()
    conn = sqlite3.connect(path)
    conn.executescript("DROP TABLE answer_shapes; PRAGMA user_version = 0;")
    conn.close()
    assert main(["migrate", "--ledger-url", f"sqlite:///{path}"]) == 0
    assert main(["migrate", "--ledger-url", f"sqlite:///{path}"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "dpflows: sqlite ledger schema is up to date (3 migration step(s) applied now)",
        "dpflows: sqlite ledger schema is up to date (0 migration step(s) applied now)",
    ]
    ledger = SqliteLedger(path)
    assert ledger.migration_steps_applied == 0
    group = f"client:{ledger.client_by_name('old').id}"
    found = ledger.find_answer_shapes(DS, where(per_zoning=1000, limit=1000, group=group))
    assert [s.answer_id for s in found] == ids  # by scale: the order they were stored in
    ledger.close()


@pytest.mark.postgres
def test_postgres_migration_indexes_answers_stored_before(postgres_ledger_factory, postgres_url: str) -> None:
    import psycopg

    ledger = postgres_ledger_factory()
    ids = _fill(ledger)
    with psycopg.connect(postgres_url, autocommit=True) as conn:  # the schema as of version 2
        conn.execute("DROP TABLE answer_shapes")
        conn.execute("DELETE FROM dpflows_schema WHERE version >= 3")
    assert ledger.migrate() == 3  # 3 (the index), 4 (sharing groups) and 5 (populations, issue 17)
    assert ledger.migrate() == 0
    group = f"client:{ledger.client_by_name('old').id}"
    found = ledger.find_answer_shapes(DS, where(per_zoning=1000, limit=1000, group=group))
    assert [s.answer_id for s in found] == ids


# -- migration: answers stored before sharing groups (issue 17) -------------------------------------


def _fill_shared(ledger: Ledger) -> dict[str, tuple[str, int]]:
    """Answers as main stored them before groups: one query key for everyone. Returns key -> (answer, client)."""
    out = {}
    for name in ("alice", "system:ingest"):
        client = ledger.create_client(name, "planner")
        ledger.set_cap(DS, Epsilon.parse("1"), client_id=client.id, window=None)
        ledger.set_cap(DS, Epsilon.parse("2"), client_id=None, window=None)
        body = payload() if name == "alice" else {"query": {"kind": "bounding_report"}, "loss_nanos": 1}
        receipt = ledger.commit_release(release(client.id, body))
        out[receipt.answer.query_key] = (receipt.answer.answer_id, client.id)
    return out


def _check_rekeyed(ledger: Ledger, stored: dict[str, tuple[str, int]]) -> None:
    from dpflows.ledger._sql import group_query_key

    (alice_key, (alice_answer, alice_id)), (system_key, (system_answer, _)) = stored.items()
    group = f"client:{alice_id}"
    assert ledger.find_answer(DS, alice_key) is None  # no longer reusable by anyone outside alice's group
    assert ledger.find_answer(DS, group_query_key(alice_key, group)).answer_id == alice_answer
    assert ledger.find_answer(DS, system_key).answer_id == system_answer  # report charges keep their key
    assert [s.answer_id for s in ledger.find_answer_shapes(DS, where(group=group))] == [alice_answer]
    assert ledger.find_answer_shapes(DS, where()) == []


def test_sqlite_migration_moves_answers_into_their_clients_groups(tmp_path: Path) -> None:
    path = tmp_path / "v1.db"
    ledger = SqliteLedger(path)
    stored = _fill_shared(ledger)
    ledger.close()
    conn = sqlite3.connect(path)
    conn.executescript("UPDATE answer_shapes SET share_group = ''; PRAGMA user_version = 1;")
    conn.close()
    ledger = SqliteLedger(path)
    assert ledger.migration_steps_applied == 2  # 2 (sharing groups) and 3 (populations)
    _check_rekeyed(ledger, stored)
    ledger.close()


@pytest.mark.postgres
def test_postgres_migration_moves_answers_into_their_clients_groups(postgres_ledger_factory,
                                                                     postgres_url: str) -> None:
    import psycopg

    ledger = postgres_ledger_factory()
    stored = _fill_shared(ledger)
    with psycopg.connect(postgres_url, autocommit=True) as conn:  # the schema as of version 3
        conn.execute("DROP TABLE client_groups, group_caps, group_spend")
        conn.execute("ALTER TABLE answer_shapes DROP COLUMN share_group")
        conn.execute("DELETE FROM dpflows_schema WHERE version >= 4")
    assert ledger.migrate() == 2  # 4 (sharing groups) and 5 (populations)
    assert ledger.migrate() == 0
    _check_rekeyed(ledger, stored)
