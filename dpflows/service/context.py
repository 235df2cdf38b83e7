"""What every use case shares: the store, the ledger, the policy, and the few steps they all take.

A use case (answering, quoting, relative change, report charging, admin) is a module of
functions over one `ServiceContext`; the `Service` facade only wires them.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

from dpflows.accounting import Accounting, accounting
from dpflows.aggregates import AggregateStore, Dataset, DatasetMetadata
from dpflows.budget import PrivacyLoss
from dpflows.errors import DpflowsError
from dpflows.ledger import AuditEntry, Client, DatasetGrid, Ledger, WindowBudget
from dpflows.ledger._sql import check_grid_matches, group_query_key
from dpflows.ledger.high_water import HighWaterMark
from dpflows.mechanisms import stock_noise
from dpflows.queries import QuerySpec, touched_windows
from dpflows.sensitivity import query_sensitivity
from dpflows.service.policy import Policy
from dpflows.service.records import QueryRequest, WindowStatus

log = logging.getLogger("dpflows.service")


def dataset_grid(data: Dataset) -> DatasetGrid:
    """What the ledger records of a dataset so that its window indices keep their meaning."""
    meta = data.metadata
    return DatasetGrid(meta.name, meta.first_day.isoformat(), meta.window_days, accounting(meta.accounting).unit)


def approx_dp(acc: Accounting, loss: PrivacyLoss, meta: DatasetMetadata) -> dict[str, float] | None:
    """The (ε, δ) a loss implies, for display, where the accounting is not already in ε."""
    epsilon = acc.approx_dp(loss, meta.delta)
    return None if epsilon is None else {"epsilon": epsilon, "delta": meta.delta}


class ServiceContext:
    """The store, the ledger and the policy, with the per-process caches the use cases share."""

    def __init__(self, store: AggregateStore, ledger: Ledger, policy: Policy,
                 high_water: HighWaterMark | None = None) -> None:
        self.store = store
        self.ledger = ledger
        self.policy = policy
        self.high_water = high_water
        self.reports_paid: set[str] = set()  # report-charge keys known to be in the ledger
        self.grids_checked: set[str] = set()  # dataset versions whose grid matches the ledger's record
        self.noise_stocked: set[str] = set()  # dataset versions whose public scales the noise pool stocks

    def dataset(self, name: str) -> Dataset:
        """A loaded dataset whose window grid and measure agree with what the ledger recorded for it.

        Spending is kept per window index: a dataset re-ingested on another grid or in another
        measure would read old spending against other weeks or another unit, so it is refused
        here (reads) and again inside every charge's transaction (`ReleaseRequest.grid`).
        """
        data = self.store.get(name)
        if data.version not in self.grids_checked:
            recorded = self.ledger.dataset_grid(name)
            if recorded is not None:
                check_grid_matches(recorded, dataset_grid(data))
                self.grids_checked.add(data.version)
        if data.version not in self.noise_stocked:
            self.stock_noise(data.metadata)
            self.noise_stocked.add(data.version)
        return data

    def stock_noise(self, meta: DatasetMetadata) -> None:
        """Declare to the noise pool the scales of this dataset's bounds at the preset losses: public
        facts only, whatever clients ask (dpflows.noise_pool)."""
        acc = accounting(meta.accounting)
        stock_noise(acc.mechanism.name, acc.public_sensitivities(meta), self.policy.noise_presets(acc.unit))

    def price(self, client: Client, request: QueryRequest, data: Dataset) -> PrivacyLoss:
        """The ε (pure-DP dataset) or ρ (zCDP dataset) this query costs, checked against the role's cap."""
        meta = data.metadata
        acc = accounting(meta.accounting)
        loss = acc.loss_of(epsilon=request.epsilon, rho=request.rho, dataset=meta.name)
        if loss is None:
            assert request.max_error is not None
            sensitivity = acc.sensitivity(query_sensitivity(request.spec, data))
            loss = acc.loss_for_error(sensitivity, request.max_error, request.confidence,
                                      floor=self.policy.min_loss(acc.unit))
        self.policy.check_loss(client, loss, acc.name, derived_from=request.max_error)
        return loss

    @staticmethod
    def query_key(spec: QuerySpec, data: Dataset, loss: PrivacyLoss, client: Client) -> str:
        """Reuse key: the normalized query, the versions of the windows it counts, the mechanism and its ε or ρ,
        within the client's sharing group: another group's answer to the same query is never found (issue 17).
        An append leaves the served windows' versions as they were, so their answers stay found (issue 19)."""
        mechanism = accounting(data.metadata.accounting).mechanism.name
        text = f"{spec.key()}|{data.data_version(touched_windows(spec, data))}|{mechanism}|{loss.nanos}"
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
                         min(meta.window_start(b.window + 1), meta.end_day), b, approx_dp(acc, b.client_spent, meta))
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
