"""Ledger behaviour every implementation must show: caps at their edges, atomic multi-window
charges, fail-closed defaults, answer reuse, key revocation and an append-only chained audit."""

from __future__ import annotations

import itertools
import threading
import uuid

import pytest

from dpflows.budget import Epsilon, PrivacyLoss, Rho
from dpflows.errors import BudgetExceeded, Conflict, InvalidInput, NotFound
from dpflows.ledger import AuditEntry, DatasetGrid, Ledger, ReleaseRequest
from dpflows.ledger.base import GENESIS_HASH

DS = "city"


def eps(text: str) -> Epsilon:
    return Epsilon.parse(text)


def release(client_id: int, epsilon: str, windows: tuple[int, ...] = (0,), key: str | None = None) -> ReleaseRequest:
    answer_id = uuid.uuid4().hex
    return ReleaseRequest(
        client_id=client_id, dataset=DS, query_key=key or uuid.uuid4().hex, windows=windows, loss=eps(epsilon),
        answer_id=answer_id, payload={"values": [1, 2, 3]},
        audit=AuditEntry(action="query.flows", outcome="released", client_id=client_id, dataset=DS,
                         loss=eps(epsilon), answer_id=answer_id),
    )


@pytest.fixture
def funded(any_ledger: Ledger) -> tuple[Ledger, int]:
    client = any_ledger.create_client("alice", "planner")
    any_ledger.set_cap(DS, eps("1"), client_id=client.id, window=None)
    any_ledger.set_cap(DS, eps("10"), client_id=None, window=None)
    return any_ledger, client.id


def test_cap_is_exactly_reachable(funded: tuple[Ledger, int]) -> None:
    ledger, cid = funded
    for _ in range(10):
        ledger.commit_release(release(cid, "0.1"))
    assert ledger.total_charged(DS, 0, cid) == eps("1")
    [budget] = ledger.window_budgets(DS, cid, [0])
    assert budget.remaining == Epsilon.zero()


def test_a_hair_above_the_cap_is_refused_and_charges_nothing(funded: tuple[Ledger, int]) -> None:
    ledger, cid = funded
    with pytest.raises(BudgetExceeded) as info:
        ledger.commit_release(release(cid, "1.000000001"))
    assert "window 0" in info.value.message
    assert ledger.total_charged(DS, 0) == Epsilon.zero()
    ledger.commit_release(release(cid, "1"))  # exactly the cap still fits
    assert ledger.total_charged(DS, 0, cid) == eps("1")


def test_exhausted_budget_refuses_even_the_smallest_charge(funded: tuple[Ledger, int]) -> None:
    ledger, cid = funded
    ledger.commit_release(release(cid, "1"))
    with pytest.raises(BudgetExceeded):
        ledger.commit_release(release(cid, "0.000000001"))
    assert ledger.total_charged(DS, 0, cid) == eps("1")


def test_zero_charge_is_allowed_and_changes_nothing(funded: tuple[Ledger, int]) -> None:
    ledger, cid = funded
    ledger.commit_release(release(cid, "0"))
    assert ledger.total_charged(DS, 0, cid) == Epsilon.zero()


def test_no_cap_means_nothing_to_spend(any_ledger: Ledger) -> None:
    client = any_ledger.create_client("bob", "planner")
    with pytest.raises(BudgetExceeded, match="no budget cap"):
        any_ledger.commit_release(release(client.id, "0.1"))
    any_ledger.set_cap(DS, eps("1"), client_id=client.id, window=None)
    with pytest.raises(BudgetExceeded, match="no global cap"):
        any_ledger.commit_release(release(client.id, "0.1"))
    assert any_ledger.total_charged(DS, 0) == Epsilon.zero()


def test_multi_window_charge_is_all_or_nothing(funded: tuple[Ledger, int]) -> None:
    ledger, cid = funded
    ledger.set_cap(DS, eps("0.5"), client_id=cid, window=2)  # window 2 has a tighter cap of its own
    with pytest.raises(BudgetExceeded, match="window 2"):
        ledger.commit_release(release(cid, "0.6", windows=(0, 1, 2)))
    assert [ledger.total_charged(DS, w) for w in (0, 1, 2)] == [Epsilon.zero()] * 3
    receipt = ledger.commit_release(release(cid, "0.5", windows=(0, 1, 2)))
    assert receipt.charged == eps("0.5")
    assert [ledger.total_charged(DS, w, cid) for w in (0, 1, 2)] == [eps("0.5")] * 3


def test_global_cap_binds_across_clients(any_ledger: Ledger) -> None:
    a = any_ledger.create_client("a", "planner")
    b = any_ledger.create_client("b", "analyst")
    for c in (a, b):
        any_ledger.set_cap(DS, eps("1"), client_id=c.id, window=None)
    any_ledger.set_cap(DS, eps("1.5"), client_id=None, window=None)
    any_ledger.commit_release(release(a.id, "1"))
    with pytest.raises(BudgetExceeded, match="global"):
        any_ledger.commit_release(release(b.id, "0.6"))
    any_ledger.commit_release(release(b.id, "0.5"))
    assert any_ledger.total_charged(DS, 0) == eps("1.5")


def test_identical_query_is_reused_at_no_cost(funded: tuple[Ledger, int]) -> None:
    ledger, cid = funded
    first = ledger.commit_release(release(cid, "0.4", key="same"))
    second = ledger.commit_release(release(cid, "0.4", key="same"))
    assert not first.reused and second.reused
    assert second.answer.answer_id == first.answer.answer_id
    assert second.answer.payload == first.answer.payload
    assert second.charged == Epsilon.zero()
    assert ledger.total_charged(DS, 0, cid) == eps("0.4")
    assert ledger.find_answer(DS, "same") is not None


def test_keys_resolve_until_revoked(any_ledger: Ledger) -> None:
    client = any_ledger.create_client("carol", "admin")
    record = any_ledger.add_key(client.id, "h" * 64, "dpf_abc")
    assert any_ledger.client_for_key_hash("h" * 64) == client
    any_ledger.revoke_key(record.id)
    assert any_ledger.client_for_key_hash("h" * 64) is None
    assert any_ledger.list_keys(client.id)[0].revoked_at is not None
    with pytest.raises(NotFound):
        any_ledger.revoke_key(9999)


def test_client_names_and_roles_are_checked(any_ledger: Ledger) -> None:
    any_ledger.create_client("dora", "planner")
    with pytest.raises(Conflict):
        any_ledger.create_client("dora", "analyst")
    with pytest.raises(InvalidInput, match="role"):
        any_ledger.create_client("erin", "superuser")
    assert [c.name for c in any_ledger.list_clients()] == ["dora"]


def test_audit_is_a_hash_chain(funded: tuple[Ledger, int]) -> None:
    ledger, cid = funded
    ledger.commit_release(release(cid, "0.1"))
    ledger.append_audit(AuditEntry(action="query.flows", outcome="budget_exceeded", client_id=cid, dataset=DS))
    rows = ledger.read_audit(limit=10)
    assert [r.outcome for r in rows] == ["released", "budget_exceeded"]
    assert rows[0].prev_hash == GENESIS_HASH
    for prev, row in itertools.pairwise(rows):
        assert row.prev_hash == prev.row_hash
    for row in rows:
        assert row.row_hash == row.chain_hash(row.prev_hash, row.at)
    assert ledger.read_audit(after_id=rows[0].id, limit=10) == rows[1:]


def test_concurrent_spenders_never_exceed_the_cap(durable_ledger_factory) -> None:
    """8 threads, each with its own connection, ask for 10× the cap in total."""
    setup = durable_ledger_factory()
    client = setup.create_client("racer", "planner")
    setup.set_cap(DS, eps("1"), client_id=client.id, window=None)
    setup.set_cap(DS, eps("1"), client_id=None, window=None)
    granted: list[Epsilon] = []
    lock = threading.Lock()

    def spend() -> None:
        ledger = durable_ledger_factory()
        try:
            for _ in range(25):
                try:
                    receipt = ledger.commit_release(release(client.id, "0.05", windows=(0, 1)))
                except BudgetExceeded:
                    continue
                with lock:
                    granted.append(receipt.charged)
        finally:
            ledger.close()

    threads = [threading.Thread(target=spend) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(granted) == 20  # 1 / 0.05, exactly
    for w in (0, 1):
        assert setup.total_charged(DS, w) == eps("1")
    setup.close()


def test_a_release_returns_the_budgets_it_leaves(funded: tuple[Ledger, int]) -> None:
    """The answer needs the client's remaining budget: read in the release's own transaction."""
    ledger, cid = funded
    receipt = ledger.commit_release(release(cid, "0.25", windows=(1, 0), key="k"))
    assert [b.window for b in receipt.budgets] == [0, 1]
    assert all(b.client_spent == eps("0.25") and b.remaining == eps("0.75") for b in receipt.budgets)
    again = ledger.commit_release(release(cid, "0.25", windows=(0, 1), key="k"))
    assert again.reused and [b.client_spent for b in again.budgets] == [eps("0.25")] * 2


def test_a_reuse_is_audited_with_the_budgets_in_one_call(funded: tuple[Ledger, int]) -> None:
    ledger, cid = funded
    ledger.commit_release(release(cid, "0.5", windows=(0,)))
    before = len(ledger.read_audit(limit=1000))
    entry = AuditEntry(action="query.flows", outcome="reused", client_id=cid, dataset=DS, answer_id="a")
    [budget] = ledger.audit_reuse(entry, (0,))
    assert budget.client_spent == eps("0.5") and budget.remaining == eps("0.5")
    rows = ledger.read_audit(limit=1000)
    assert len(rows) == before + 1 and rows[-1].outcome == "reused" and rows[-1].loss == Epsilon.zero()
    with pytest.raises(InvalidInput):
        ledger.audit_reuse(AuditEntry(action="query.flows", outcome="reused"), (0,))


# -- sharing groups and allocations (issue 17) ------------------------------------------------------


def test_groups_are_on_the_client_record(any_ledger: Ledger) -> None:
    a = any_ledger.create_client("a", "planner")
    any_ledger.add_key(a.id, "h" * 64, "dpf_xx")
    assert a.group is None and a.share_group == f"client:{a.id}"
    assert any_ledger.set_group(a.id, "city-planning").group == "city-planning"
    assert any_ledger.get_client(a.id).share_group == "city-planning"
    assert any_ledger.client_for_key_hash("h" * 64).group == "city-planning"  # what authentication returns
    assert [c.group for c in any_ledger.list_clients()] == ["city-planning"]
    for bad in ("", "client:1", "a b", "x" * 65, "-lead"):
        with pytest.raises(InvalidInput):
            any_ledger.set_group(a.id, bad)
    assert any_ledger.set_group(a.id, None).share_group == f"client:{a.id}"
    with pytest.raises(NotFound):
        any_ledger.set_group(999, "g")


def _allocated(ledger: Ledger) -> dict[str, int]:
    """Global cap 1; group A 0.4, group B 0.4; the pool (clients without an allocation) 0.2."""
    ids = {}
    for name, group in (("a1", "A"), ("a2", "A"), ("b1", "B"), ("c", None)):
        client = ledger.create_client(name, "planner")
        ledger.set_cap(DS, eps("1"), client_id=client.id, window=None)
        if group is not None:
            ledger.set_group(client.id, group)
        ids[name] = client.id
    ledger.set_cap(DS, eps("1"), client_id=None, window=None)
    ledger.set_cap(DS, eps("0.4"), client_id=None, window=None, group="A")
    ledger.set_cap(DS, eps("0.4"), client_id=None, window=None, group="B")
    return ids


def test_allocations_never_sum_above_the_global_cap(any_ledger: Ledger) -> None:
    _allocated(any_ledger)
    before = any_ledger.list_allocations(DS)
    with pytest.raises(InvalidInput, match=r"sum to 1\.000000001 in every window"):
        any_ledger.set_cap(DS, eps("0.200000001"), client_id=None, window=None, group="C")
    with pytest.raises(InvalidInput, match="window 3"):  # a window's own allocation counts in that window
        any_ledger.set_cap(DS, eps("0.600000001"), client_id=None, window=3, group="A")
    any_ledger.set_cap(DS, eps("0.2"), client_id=None, window=None, group="C")  # exactly the global cap
    with pytest.raises(InvalidInput, match="global cap"):  # nor can the global cap drop below them
        any_ledger.set_cap(DS, eps("0.999999999"), client_id=None, window=None)
    with pytest.raises(InvalidInput, match="window 2"):
        any_ledger.set_cap(DS, eps("0.5"), client_id=None, window=2)
    assert [(a.group, a.window, a.cap) for a in any_ledger.list_allocations(DS)] == [
        (a.group, a.window, a.cap) for a in before] + [("C", None, eps("0.2"))]
    any_ledger.set_cap(DS, eps("0.1"), client_id=None, window=None, group="C")  # lowering is always allowed
    any_ledger.set_cap(DS, eps("0.9"), client_id=None, window=2)
    with pytest.raises(InvalidInput, match="not both"):
        any_ledger.set_cap(DS, eps("0.1"), client_id=1, window=None, group="A")


def test_a_client_spends_its_cap_and_its_groups_allocation(any_ledger: Ledger) -> None:
    ids = _allocated(any_ledger)
    any_ledger.commit_release(release(ids["a1"], "0.3"))
    [budget] = any_ledger.window_budgets(DS, ids["a2"], [0])
    assert (budget.group, budget.group_cap, budget.group_spent) == ("A", eps("0.4"), eps("0.3"))
    assert budget.remaining == eps("0.1")  # the group's allocation, not the global cap
    with pytest.raises(BudgetExceeded, match=r"allocation of 0\.1 of your group 'A'") as info:
        any_ledger.commit_release(release(ids["a2"], "0.100000001"))
    assert info.value.details == {"window": 0, "remaining": 0.1}
    any_ledger.commit_release(release(ids["a2"], "0.1"))  # exactly the allocation
    # B's allocation and the pool are untouched by A's spending
    assert any_ledger.window_budgets(DS, ids["b1"], [0])[0].remaining == eps("0.4")
    any_ledger.commit_release(release(ids["b1"], "0.4"))
    # c (alone, no allocation) spends from the pool, 1 - 0.4 - 0.4; it sees only its own cap
    [c] = any_ledger.window_budgets(DS, ids["c"], [0])
    assert (c.group, c.group_cap, c.remaining) == (None, None, eps("1"))
    any_ledger.commit_release(release(ids["c"], "0.2"))
    with pytest.raises(BudgetExceeded) as info:
        any_ledger.commit_release(release(ids["c"], "0.000000001"))
    # refused by the global cap (the backstop, exhausted here): no figure of other groups' spending
    assert "global budget" in info.value.message and info.value.details == {"window": 0}
    assert "0.2" not in info.value.message and "0.8" not in info.value.message
    assert any_ledger.total_charged(DS, 0) == eps("1")


def test_the_pool_refuses_without_a_figure(any_ledger: Ledger) -> None:
    ids = _allocated(any_ledger)
    any_ledger.commit_release(release(ids["c"], "0.15"))
    with pytest.raises(BudgetExceeded, match="without a group allocation") as info:
        any_ledger.commit_release(release(ids["c"], "0.06"))
    assert info.value.details == {"window": 0} and "0.05" not in info.value.message
    any_ledger.commit_release(release(ids["c"], "0.05"))


def test_concurrent_spenders_across_groups_never_exceed_allocations(durable_ledger_factory) -> None:
    """12 threads, each its own connection, 3 per client, ask for 25 × 0.05 each across two windows:
    group A (two clients) gets exactly its 0.4, B its 0.4, the client alone the pool's 0.2."""
    setup = durable_ledger_factory()
    ids = _allocated(setup)
    granted: dict[str, int] = dict.fromkeys(ids, 0)
    lock = threading.Lock()

    def spend(name: str) -> None:
        ledger = durable_ledger_factory()
        try:
            for _ in range(25):
                try:
                    ledger.commit_release(release(ids[name], "0.05", windows=(0, 1)))
                except BudgetExceeded:
                    continue
                with lock:
                    granted[name] += 1
        finally:
            ledger.close()

    threads = [threading.Thread(target=spend, args=(name,)) for name in ids for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert granted["a1"] + granted["a2"] == 8 and granted["b1"] == 8 and granted["c"] == 4
    for w in (0, 1):
        assert setup.total_charged(DS, w) == eps("1")
        assert setup.total_charged(DS, w, ids["a1"]) + setup.total_charged(DS, w, ids["a2"]) == eps("0.4")
        assert setup.window_budgets(DS, ids["a1"], [w])[0].group_spent == eps("0.4")
    setup.close()


# -- populations (issue 17): caps, allocations and a horizon cap per population, charges converted ----------


def _grid(dataset: str, first_day: str = "2024-03-04", measure: str = "epsilon", population: str = "people",
          population_measure: str | None = None, window_days: int = 7) -> DatasetGrid:
    return DatasetGrid(dataset, first_day, window_days, measure, population, population_measure)


def _spend(ledger: Ledger, client_id: int, dataset: str, loss: PrivacyLoss, windows: tuple[int, ...] = (0,),
           charge: PrivacyLoss | None = None, grid: DatasetGrid | None = None) -> ReleaseRequest:
    answer_id = uuid.uuid4().hex
    request = ReleaseRequest(
        client_id=client_id, dataset=dataset, query_key=uuid.uuid4().hex, windows=windows, loss=loss,
        answer_id=answer_id, payload={"values": [1]}, grid=grid, population_loss=charge,
        audit=AuditEntry(action="query.flows", outcome="released", client_id=client_id, dataset=dataset, loss=loss,
                         answer_id=answer_id))
    ledger.commit_release(request)
    return request


def _two_datasets(ledger: Ledger, population_cap: str = "1") -> int:
    """'a' (from 03-04) and 'b' (from 03-11: its window 0 is the population's window 1), one population;
    a client capped at 1 on each; the population's global cap `population_cap` in every window."""
    client = ledger.create_client("p", "planner")
    ledger.set_cap("a", eps("1"), client_id=client.id, window=None, grid=_grid("a"))
    ledger.set_cap("b", eps("1"), client_id=client.id, window=None, grid=_grid("b", "2024-03-11"))
    ledger.set_cap(None, eps(population_cap), client_id=None, window=None, population="people")
    return client.id


def test_one_global_cap_binds_every_dataset_of_a_population(any_ledger: Ledger) -> None:
    cid = _two_datasets(any_ledger)
    assert any_ledger.population_of("b") == ("people", 1)
    _spend(any_ledger, cid, "a", eps("0.7"), windows=(1,))  # population window 1
    with pytest.raises(BudgetExceeded, match="global budget") as info:
        _spend(any_ledger, cid, "b", eps("0.300000001"), windows=(0,))  # population window 1 as well
    assert info.value.details == {"window": 0} and "0.7" not in info.value.message
    _spend(any_ledger, cid, "b", eps("0.3"), windows=(0,))  # exactly the population's cap
    _spend(any_ledger, cid, "b", eps("1"), windows=(1,))  # population window 2: untouched
    assert any_ledger.population_spent("people", 1) == eps("1")
    assert [any_ledger.total_charged("b", w) for w in (0, 1)] == [eps("0.3"), eps("1")]
    [budget] = any_ledger.window_budgets("b", cid, [0])
    assert (budget.population, budget.population_window, budget.remaining) == ("people", 1, eps("0.7"))


def test_the_global_cap_set_through_a_dataset_is_its_populations(any_ledger: Ledger) -> None:
    cid = _two_datasets(any_ledger, population_cap="5")
    any_ledger.set_cap("b", eps("0.5"), client_id=None, window=0)  # b's window 0 = the population's window 1
    assert any_ledger.population_caps("people") == [(None, eps("5")), (1, eps("0.5"))]
    with pytest.raises(BudgetExceeded, match="global budget"):
        _spend(any_ledger, cid, "a", eps("0.6"), windows=(1,))
    _spend(any_ledger, cid, "a", eps("0.6"), windows=(0,))
    with pytest.raises(InvalidInput, match="send the cap as epsilon"):
        any_ledger.set_cap(None, Rho.parse("1"), client_id=None, window=None, population="people")


def test_a_dataset_off_its_populations_grid_is_refused_with_the_fix(any_ledger: Ledger) -> None:
    _two_datasets(any_ledger)
    for grid, why in ((_grid("c", "2024-03-06"), "--first-day 2024-03-11"),
                      (_grid("c", "2024-03-04", window_days=14), "--window-days 7"),
                      (_grid("c", "2024-02-26"), "--first-day 2024-03-04")):
        with pytest.raises(Conflict, match=why) as info:
            any_ledger.register_dataset(grid)
        assert "--population" in info.value.message
    assert any_ledger.dataset_grid("c") is None
    # a dataset keeps its population for life, like its grid and measure (issue 12)
    with pytest.raises(Conflict, match="--population people"):
        any_ledger.register_dataset(_grid("a", population="others"))
    assert any_ledger.register_dataset(_grid("c", "2024-03-25")) == _grid("c", "2024-03-25")
    assert any_ledger.population_of("c") == ("people", 3)


def test_a_converted_charge_is_checked_in_the_populations_measure(any_ledger: Ledger) -> None:
    """A pure-DP dataset in a zCDP population: the client cap takes ε, the population its ρ."""
    client = any_ledger.create_client("p", "planner")
    pure, zcdp = _grid("pure", population_measure="rho"), _grid("zcdp", measure="rho", population_measure="rho")
    any_ledger.set_cap("pure", eps("2"), client_id=client.id, window=None, grid=pure)
    any_ledger.set_cap("zcdp", Rho.parse("1"), client_id=client.id, window=None, grid=zcdp)
    any_ledger.set_cap(None, Rho.parse("0.5"), client_id=None, window=None, population="people")
    assert any_ledger.population("people").measure == "rho"
    _spend(any_ledger, client.id, "pure", eps("0.5"), charge=Rho.parse("0.125"))
    _spend(any_ledger, client.id, "zcdp", Rho.parse("0.375"))
    assert any_ledger.population_spent("people", 0) == Rho.parse("0.5")
    assert any_ledger.total_charged("pure", 0) == eps("0.5")
    with pytest.raises(BudgetExceeded, match=r"epsilon=0.1 \(rho=0.005 in its population's measure\)"):
        _spend(any_ledger, client.id, "pure", eps("0.1"), charge=Rho.parse("0.005"))
    with pytest.raises(Conflict, match="came in epsilon"):  # an unconverted charge never reaches the population
        _spend(any_ledger, client.id, "pure", eps("0.1"), windows=(1,))
    with pytest.raises(Conflict, match="budgets in rho, not epsilon"):
        any_ledger.register_dataset(_grid("other", population_measure="epsilon"))
    assert any_ledger.population_spent("people", 1) == Rho.zero()


def test_allocations_of_a_population_never_sum_above_its_global_cap(any_ledger: Ledger) -> None:
    cid = _two_datasets(any_ledger)
    any_ledger.set_group(cid, "A")
    any_ledger.set_cap(None, eps("0.6"), client_id=None, window=None, population="people", group="A")
    with pytest.raises(InvalidInput, match=r"population 'people' would sum to 1\.000000001"):
        any_ledger.set_cap("b", eps("0.400000001"), client_id=None, window=None, group="B")
    any_ledger.set_cap("b", eps("0.4"), client_id=None, window=None, group="B")  # through a dataset: the same
    assert [(a.group, a.cap) for a in any_ledger.list_allocations(population="people")] == [
        ("A", eps("0.6")), ("B", eps("0.4"))]
    assert any_ledger.list_allocations("a") == any_ledger.list_allocations(population="people")
    # A's allocation is spent across both datasets of the population
    _spend(any_ledger, cid, "a", eps("0.5"), windows=(1,))
    [budget] = any_ledger.window_budgets("b", cid, [0])
    assert (budget.group_cap, budget.group_spent, budget.remaining) == (eps("0.6"), eps("0.5"), eps("0.1"))
    with pytest.raises(BudgetExceeded, match=r"allocation of 0\.1 of your group 'A'"):
        _spend(any_ledger, cid, "b", eps("0.2"), windows=(0,))


def test_the_horizon_cap_bounds_any_run_of_windows(any_ledger: Ledger) -> None:
    """Horizon: at most 1 over any 3 consecutive population windows; each window's own cap is 0.6."""
    cid = _two_datasets(any_ledger, population_cap="0.6")
    any_ledger.set_cap("a", eps("5"), client_id=cid, window=None)
    any_ledger.set_cap("b", eps("5"), client_id=cid, window=None)
    assert any_ledger.set_horizon_cap("people", 3, eps("1")).horizon_cap == eps("1")
    _spend(any_ledger, cid, "a", eps("0.5"), windows=(0,))
    _spend(any_ledger, cid, "b", eps("0.5"), windows=(1,))  # population window 2: the run 0-2 holds 1
    with pytest.raises(BudgetExceeded, match="horizon cap of population 'people'") as info:
        _spend(any_ledger, cid, "a", eps("0.000000001"), windows=(1,))
    assert "0.5" not in info.value.message and info.value.details == {}
    with pytest.raises(BudgetExceeded, match="horizon"):  # window 3 is in the run 1-3 with window 2
        _spend(any_ledger, cid, "a", eps("0.500000001"), windows=(3,))
    _spend(any_ledger, cid, "a", eps("0.5"), windows=(3,))  # runs 1-3 and 2-4 hold exactly 1
    with pytest.raises(BudgetExceeded, match="horizon"):  # population window 5: the run 3-5 would hold 1.1
        _spend(any_ledger, cid, "b", eps("0.6"), windows=(4,))
    _spend(any_ledger, cid, "b", eps("0.5"), windows=(4,))
    with pytest.raises(BudgetExceeded, match="horizon"):  # a charge in two windows counts twice in a run
        _spend(any_ledger, cid, "a", eps("0.3"), windows=(6, 7))  # the run 5-7 would hold 1.1
    _spend(any_ledger, cid, "a", eps("0.25"), windows=(6, 7))  # run 5-7: 0.5 + 0.25 + 0.25 = 1
    assert any_ledger.set_horizon_cap("people", None, None).horizon_windows is None
    _spend(any_ledger, cid, "a", eps("0.1"), windows=(1,))  # no horizon cap: the window's own cap again


def test_concurrent_spenders_across_datasets_of_a_population_never_exceed_its_caps(durable_ledger_factory) -> None:
    """8 threads, each its own connection, on two datasets of one population: population window 1 is
    window 1 of 'a' and window 0 of 'b'. Its global cap of 1 is granted exactly, and the horizon cap (1.5 over
    any 2 windows) bounds windows 1 and 2 together, whatever dataset each thread spends on."""
    setup = durable_ledger_factory()
    cid = _two_datasets(setup)
    setup.set_cap("a", eps("10"), client_id=cid, window=None)
    setup.set_cap("b", eps("10"), client_id=cid, window=None)
    setup.set_horizon_cap("people", 2, eps("1.5"))
    granted: list[str] = []
    lock = threading.Lock()

    def spend(dataset: str, window: int) -> None:
        ledger = durable_ledger_factory()
        try:
            for _ in range(15):
                try:
                    _spend(ledger, cid, dataset, eps("0.05"), windows=(window,))
                except BudgetExceeded:
                    continue
                with lock:
                    granted.append(dataset)
        finally:
            ledger.close()

    threads = [threading.Thread(target=spend, args=args) for args in (("a", 1), ("b", 0), ("a", 2), ("b", 1)) * 2]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(granted) == 30  # 1.5 / 0.05, exactly: the horizon cap over population windows 1 and 2
    spent = [setup.population_spent("people", w) for w in (1, 2)]
    assert spent[0] + spent[1] == eps("1.5") and all(s <= eps("1") for s in spent)
    assert setup.total_charged("a", 1) + setup.total_charged("b", 0) == spent[0]
    setup.close()


def test_deleting_retired_answers_keeps_charges_audit_and_later_windows(funded: tuple[Ledger, int]) -> None:
    """Retiring windows before 1 (dpflows.retirement): the stored answers counting window 0 leave the ledger,
    except `keep_client`'s; every charge and audit row stays, and answers of later windows stay reusable."""
    ledger, cid = funded
    system = ledger.create_client("reports", "planner")
    ledger.set_cap(DS, eps("1"), client_id=system.id, window=None)
    old = ledger.commit_release(release(cid, "0.1", windows=(0,), key="old"))
    spanning = ledger.commit_release(release(cid, "0.1", windows=(0, 1), key="spanning"))
    later = ledger.commit_release(release(cid, "0.1", windows=(1,), key="later"))
    kept = ledger.commit_release(release(system.id, "0.1", windows=(0,), key="report"))
    audit_before = ledger.read_audit(limit=1000)
    charged_before = [ledger.total_charged(DS, w) for w in (0, 1)]

    assert ledger.delete_answers(DS, 1, keep_client=system.id) == 2
    assert ledger.find_answer(DS, "old") is None and ledger.find_answer(DS, "spanning") is None
    assert ledger.find_answer(DS, "later") is not None
    assert ledger.find_answer(DS, "report") is not None
    assert [ledger.total_charged(DS, w) for w in (0, 1)] == charged_before == [eps("0.3"), eps("0.2")]
    assert [e.answer_id for e in ledger.read_audit(limit=1000)] == [e.answer_id for e in audit_before]
    again = ledger.commit_release(release(cid, "0.1", windows=(1,), key="later"))
    assert again.reused and again.answer.answer_id == later.answer.answer_id
    assert {old.answer.answer_id, spanning.answer.answer_id, kept.answer.answer_id} - {later.answer.answer_id}
    assert ledger.delete_answers(DS, 1, keep_client=system.id) == 0  # nothing left to delete
    assert ledger.delete_answers(DS, 1) == 1  # without keep_client, the report's answer goes too
