"""What every use case shares: the store, the ledger, the policy, and the few steps they all take.

A use case (answering, quoting, relative change, report charging, admin) is a module of
functions over one `ServiceContext`; the `Service` facade only wires them.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dpflows.accounting import Accounting, accounting, accounting_of_measure, common_measure
from dpflows.aggregates import AggregateStore, Dataset, DatasetMetadata
from dpflows.budget import PrivacyLoss
from dpflows.errors import Conflict, DpflowsError
from dpflows.ledger import AuditEntry, Client, DatasetGrid, Ledger, WindowBudget
from dpflows.ledger._sql import check_grid_matches, group_query_key
from dpflows.ledger.base import DEFAULT_POPULATION
from dpflows.ledger.high_water import HighWaterMark
from dpflows.mechanisms import stock_noise
from dpflows.queries import QuerySpec, touched_windows
from dpflows.sensitivity import query_sensitivity
from dpflows.service.policy import Policy
from dpflows.service.records import QueryRequest, WindowStatus

log = logging.getLogger("dpflows.service")


def dataset_grid(data: Dataset, population: str | None = None, population_measure: str | None = None) -> DatasetGrid:
    """What the ledger records of a dataset so that its window indices keep their meaning, and whose budget
    it draws on (its population: declared at ingestion, else the default)."""
    meta = data.metadata
    return DatasetGrid(meta.name, meta.first_day.isoformat(), meta.window_days, accounting(meta.accounting).measure,
                       population or meta.population or DEFAULT_POPULATION, population_measure)


def approx_dp(acc: Accounting, loss: PrivacyLoss, meta: DatasetMetadata) -> dict[str, float] | None:
    """The (ε, δ) a loss implies, for display, where the accounting is not already in ε."""
    epsilon = acc.approx_dp(loss, meta.delta)
    return None if epsilon is None else {"epsilon": epsilon, "delta": meta.delta}


@dataclass(frozen=True)
class KnownAnswer:
    """A stored answer this process has read: its id and the windows its release touched."""

    answer_id: str
    windows: tuple[int, ...]


class ReuseIndex:
    """Query key -> the stored answer it names, for answers this process has read (a few hundred bytes
    each, at most `entries`). A query key names one answer for good (the ledger keeps answers and
    their keys unchanged), so a reuse needs only the answer's id and the client's budgets, in one
    read. Keys hold the sharing group: an entry only ever serves the group that released it."""

    def __init__(self, entries: int = 10_000) -> None:
        self.entries = entries
        self._known: OrderedDict[str, KnownAnswer] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, query_key: str) -> KnownAnswer | None:
        with self._lock:
            known = self._known.get(query_key)
            if known is not None:
                self._known.move_to_end(query_key)
            return known

    def remember(self, query_key: str, answer_id: str, windows: tuple[int, ...]) -> None:
        with self._lock:
            self._known[query_key] = KnownAnswer(answer_id, windows)
            self._known.move_to_end(query_key)
            while len(self._known) > self.entries:
                self._known.popitem(last=False)

    def forget(self, query_key: str) -> None:
        with self._lock:
            self._known.pop(query_key, None)


class ServiceContext:
    """The store, the ledger and the policy, with the per-process caches the use cases share."""

    def __init__(self, store: AggregateStore, ledger: Ledger, policy: Policy,
                 high_water: HighWaterMark | None = None) -> None:
        self.store = store
        self.ledger = ledger
        self.policy = policy
        self.high_water = high_water
        self.reports_paid: set[str] = set()  # report-charge keys known to be in the ledger
        self.grids: dict[str, DatasetGrid] = {}  # dataset version -> its grid, once the ledger has recorded it
        self.noise_stocked: set[str] = set()  # dataset versions whose public scales the noise pool stocks
        self.reuse_index = ReuseIndex()  # stored answers this process has read, by query key
        self._query_keys: dict[tuple[Any, ...], str] = {}  # (spec, dataset version, loss, group) -> query key

    def dataset(self, name: str) -> Dataset:
        """A loaded dataset whose window grid and measure agree with what the ledger recorded for it.

        Spending is kept per window index: a dataset re-ingested on another grid or in another
        measure would read old spending against other weeks or another unit, so it is refused
        here (reads) and again inside every charge's transaction (`ReleaseRequest.grid`).
        """
        data = self.store.get(name)
        if data.version not in self.grids:
            self._grid(data)
        if data.version not in self.noise_stocked:
            self.stock_noise(data.metadata)
            self.noise_stocked.add(data.version)
        return data

    def grid(self, data: Dataset) -> DatasetGrid:
        """The dataset's grid, population and its population's measure (checked by `dataset`)."""
        return self.grids.get(data.version) or self._grid(data)

    def _grid(self, data: Dataset) -> DatasetGrid:
        """The dataset's grid as the ledger must record it, refused where the ledger's record differs or where
        its charges cannot be converted into its population's measure.

        Its population: declared at ingestion; else the one the ledger recorded for it (a dataset placed in
        a population of its own by the populations migration); else the data root's default. The
        population's measure: the ledger's record, or for a population not yet recorded the one every
        dataset of it in the data root converts into (accounting.common_measure)."""
        meta = data.metadata
        acc = accounting(meta.accounting)
        recorded = self.ledger.dataset_grid(meta.name)
        name = meta.population or (recorded.population if recorded is not None else DEFAULT_POPULATION)
        record = self.ledger.population(name)
        measure = record.measure if record is not None and record.measure is not None else self._proposed(name)
        grid = dataset_grid(data, name, measure)
        if recorded is not None:
            check_grid_matches(recorded, grid)  # first: another grid or measure is the more specific refusal
        if not acc.converts_to(measure):
            fix = accounting_of_measure(measure).name
            raise Conflict(
                f"dataset {meta.name!r} is accounted in {acc.label} ({acc.measure}) but draws on population {name!r}, "
                f"whose budget is in {measure}; OpenDP has no conversion of {acc.measure} into {measure}, so its "
                f"charges cannot be counted there and nothing is served. Ingest it with --population NAME of "
                f"another population, or with --accounting {fix}",
                field="dataset")
        if recorded is not None:
            self.grids[data.version] = grid  # recorded: it never changes
        return grid

    def _proposed(self, population: str) -> str:
        """The measure a population not yet recorded takes: one every dataset of it here converts into."""
        members = []
        for other in self.store.names():
            try:
                meta = self.store.metadata(other)
            except DpflowsError:
                continue  # a broken dataset is refused when asked, not here
            if (meta.population or DEFAULT_POPULATION) == population:
                members.append(accounting(meta.accounting))
        return common_measure(members) if members else accounting_of_measure("epsilon").measure

    def population_loss(self, data: Dataset, loss: PrivacyLoss) -> PrivacyLoss:
        """`loss` in the dataset's population's measure: OpenDP's conversion, rounded up (Accounting.convert)."""
        measure = self.grid(data).population_measure
        return loss if measure is None else accounting(data.metadata.accounting).convert(loss, measure)

    def stock_noise(self, meta: DatasetMetadata) -> None:
        """Declare to the noise pool the scales of this dataset's bounds at the preset losses: public
        facts only, whatever clients ask (dpflows.noise_pool)."""
        acc = accounting(meta.accounting)
        stock_noise(acc.mechanism.name, acc.public_sensitivities(meta), self.policy.noise_presets(acc.unit))

    def price(self, client: Client, request: QueryRequest, data: Dataset, *, sparse: bool = False) -> PrivacyLoss:
        """The ε (pure-DP dataset), ρ (zCDP) or (ε, δ) (approximate DP) this query costs, checked against the
        role's cap. Only a sparse answer costs a δ: the one asked, else the server's default."""
        meta = data.metadata
        acc = accounting(meta.accounting)
        loss = acc.loss_of(epsilon=request.epsilon, rho=request.rho, dataset=meta.name, delta=request.delta)
        if loss is None:
            assert request.max_error is not None
            sensitivity = acc.sensitivity(query_sensitivity(request.spec, data))
            loss = acc.loss_for_error(sensitivity, request.max_error, request.confidence,
                                      floor=self.policy.min_loss(acc.unit))
        if sparse:
            loss = acc.with_delta(loss, self.policy.default_delta if request.delta is None else request.delta)
        self.policy.check_loss(client, loss, acc.name, derived_from=request.max_error)
        return loss

    def query_key(self, spec: QuerySpec, data: Dataset, loss: PrivacyLoss, client: Client) -> str:
        """Reuse key: the normalized query, the versions of the windows it counts, the mechanism and its ε or ρ,
        within the client's sharing group: another group's answer to the same query is never found (issue 17).
        An append leaves the served windows' versions as they were, so their answers stay found (issue 19).
        Remembered per dataset version (which fixes the windows' versions and the mechanism): a reused
        answer's request hashes nothing."""
        memo = (spec, data.version, loss, client.share_group)
        known = self._query_keys.get(memo)
        if known is None:
            known = self._query_keys[memo] = self._query_key(spec, data, loss, client)
            if len(self._query_keys) > 4096:
                self._query_keys.clear()
        return known

    @staticmethod
    def _query_key(spec: QuerySpec, data: Dataset, loss: PrivacyLoss, client: Client) -> str:
        mechanism = accounting(data.metadata.accounting).mechanism.name
        text = (f"{spec.key()}|{data.data_version(touched_windows(spec, data))}|{mechanism}|{loss.nanos}"
                + (f"|{loss.delta_attos}" if loss.delta_attos else ""))
        return group_query_key(hashlib.sha256(text.encode()).hexdigest(), client.share_group)

    def window_status(self, data: Dataset, client: Client, windows: list[int],
                      budgets: list[WindowBudget] | None = None) -> list[WindowStatus]:
        """Each window's dates and this client's budget there (read now unless the caller has it)."""
        meta = data.metadata
        acc = accounting(meta.accounting)
        if budgets is None:
            budgets = self.ledger.window_budgets(meta.name, client.id, windows)
        return [
            WindowStatus(b.window, meta.window_start(b.window),
                         min(meta.window_start(b.window + 1), meta.end_day), b, approx_dp(acc, b.client_spent, meta),
                         remaining=_in_measure(acc, b.remaining_in(_within(acc, b.unit))))
            for b in budgets
        ]

    def audit_failure(self, action: str, exc: DpflowsError, client: Client | None, dataset: str | None,
                      query: dict[str, Any] | None) -> None:
        try:
            self.ledger.append_audit(AuditEntry(action=action, outcome=exc.code,
                                                client_id=None if client is None else client.id,
                                                dataset=dataset, query=query))
        except DpflowsError:
            log.error("audit row for a failed %s could not be written: ledger unavailable", action)

    def audit_admin(self, admin: Client | None, action: str, **details: Any) -> None:
        self.ledger.append_audit(AuditEntry(action=action, outcome="ok",
                                            client_id=None if admin is None else admin.id,
                                            dataset=details.pop("dataset", None), query=details or None))


def _within(acc: Accounting, measure: str | None) -> Callable[[PrivacyLoss], PrivacyLoss] | None:
    """What a group's allocation left in the population's `measure` leaves a client of this accounting."""
    if measure is None or measure == acc.measure:
        return None
    return lambda left: acc.largest_within(left, measure)


def _in_measure(acc: Accounting, amount: PrivacyLoss) -> PrivacyLoss:
    """A ledger amount as a loss of this accounting: with its δ where the accounting has one."""
    return acc.loss_type(amount.nanos, amount.delta_attos if acc.loss_type.carries_delta else 0)
