"""The service: answer(query, client) and the admin tasks, over a store and a ledger.

One module per use case, each a few functions over a `ServiceContext` (the store, the ledger,
the policy and the caches they share); `Service` only wires them and is what `api/` and the
CLI call. See docs/architecture.md for the flow of one query and the record at each boundary.

    policy.py      who may ask what; per-query caps per role and measure
    records.py     QueryRequest, Answer, Quote, WindowStatus
    context.py     ServiceContext: dataset (grid-checked), price, reuse key, budgets, audit
    answering.py   answer: authorize → price → reuse / derive / release → one ledger transaction
    quoting.py     quote
    relative_change.py   % change of presence against a baseline: two priced answers
    reports.py     bounding reports: charged once per ingestion before anything is served
    admin.py       keys, clients, caps, zonings, budget status, readiness
    catalog.py     public facts about datasets and zonings
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from dpflows.aggregates import AggregateStore, Dataset
from dpflows.budget import PrivacyLoss
from dpflows.cells import Zoning
from dpflows.errors import DpflowsError
from dpflows.ledger import ApiKeyRecord, AuditEntry, Client, Ledger
from dpflows.ledger.base import Population
from dpflows.ledger.high_water import HighWaterMark
from dpflows.mechanisms import configure_noise_pool, start_noise_pool
from dpflows.service import admin, answering, quoting, relative_change, reports
from dpflows.service.admin import KEY_PREFIX, PopulationBudget, hash_key
from dpflows.service.catalog import Catalog
from dpflows.service.context import ServiceContext, dataset_grid
from dpflows.service.policy import Policy
from dpflows.service.records import Answer, QueryRequest, Quote, WindowStatus
from dpflows.service.relative_change import RelativeChange
from dpflows.service.reports import REPORT_ACTION, SYSTEM_CLIENT


class Service:
    """The library's front door: the API calls these methods and nothing below them."""

    def __init__(self, store: AggregateStore, ledger: Ledger, policy: Policy | None = None,
                 high_water: HighWaterMark | None = None) -> None:
        self.context = ServiceContext(store, ledger, policy or Policy(), high_water)

    @property
    def store(self) -> AggregateStore:
        return self.context.store

    @property
    def ledger(self) -> Ledger:
        return self.context.ledger

    @property
    def policy(self) -> Policy:
        return self.context.policy

    def start_noise_pool(self, values: int) -> None:
        """Pre-draw noise in this process (at most `values` held; 0: none) for every dataset's public
        scales; call it in each worker after fork (the app factory does)."""
        configure_noise_pool(values)
        if values <= 0:
            return
        for name in self.store.names():
            try:
                self.context.stock_noise(self.store.metadata(name))
            except DpflowsError:
                continue  # a broken dataset is refused when asked, not here
        start_noise_pool()

    # queries
    def dataset(self, name: str) -> Dataset:
        return self.context.dataset(name)

    def answer(self, request: QueryRequest, client: Client) -> Answer:
        return answering.answer(self.context, request, client)

    def quote(self, request: QueryRequest, client: Client) -> Quote:
        return quoting.quote(self.context, request, client)

    def relative_change(self, request: QueryRequest, baseline_start: dt.date, baseline_end: dt.date,
                        client: Client) -> RelativeChange:
        return relative_change.relative_change(self.context, request, baseline_start, baseline_end, client)

    def charge_bounding_report(self, data: Dataset) -> None:
        reports.charge_bounding_report(self.context, data)

    def bounding_report(self, dataset: str, client: Client) -> dict[str, Any]:
        return reports.bounding_report(self.context, dataset, client)

    def budget_status(self, client: Client, dataset: str) -> list[WindowStatus]:
        return admin.budget_status(self.context, client, dataset)

    def read_audit(self, reader: Client, *, after_id: int = 0, limit: int = 100) -> list[AuditEntry]:
        return admin.read_audit(self.context, reader, after_id=after_id, limit=limit)

    def readiness(self) -> dict[str, Any]:
        return admin.readiness(self.context)

    # keys and admin tasks
    def authenticate(self, api_key: str | None) -> Client:
        return admin.authenticate(self.context, api_key)

    def issue_key(self, client_id: int) -> str:
        return admin.issue_key(self.context, client_id)

    def create_client(self, name: str, role: str, *, by: Client | None = None) -> tuple[Client, str]:
        return admin.create_client(self.context, name, role, by=by)

    def rotate_key(self, client_id: int, *, by: Client | None = None) -> str:
        return admin.rotate_key(self.context, client_id, by=by)

    def revoke_key(self, key_id: int, *, by: Client | None = None) -> ApiKeyRecord:
        return admin.revoke_key(self.context, key_id, by=by)

    def set_group(self, client_id: int, group: str | None, *, by: Client | None = None) -> Client:
        return admin.set_group(self.context, client_id, group, by=by)

    def set_cap(self, dataset: str | None, cap: PrivacyLoss, *, client_id: int | None, window: int | None,
                by: Client | None = None, group: str | None = None, population: str | None = None) -> None:
        admin.set_cap(self.context, dataset, cap, client_id=client_id, window=window, by=by, group=group,
                      population=population)

    def set_horizon_cap(self, population: str, windows: int | None, cap: PrivacyLoss | None, *,
                        by: Client | None = None) -> Population:
        return admin.set_horizon_cap(self.context, population, windows, cap, by=by)

    def population_budget(self, *, dataset: str | None = None, population: str | None = None) -> PopulationBudget:
        return admin.population_budget(self.context, dataset=dataset, population=population)

    def retire_windows(self, dataset: str, before: dt.date, *, by: Client | None = None) -> int:
        return admin.retire_windows(self.context, dataset, before, by=by)

    def add_zoning(self, dataset: str, name: str, csv_text: str, *, coarse: bool = False,
                   min_cells_per_zone: int | None = None, geometry: dict[str, Any] | None = None,
                   by: Client | None = None) -> Zoning:
        return admin.add_zoning(self.context, dataset, name, csv_text, coarse=coarse,
                                min_cells_per_zone=min_cells_per_zone, geometry=geometry, by=by)


__all__ = [
    "KEY_PREFIX", "REPORT_ACTION", "SYSTEM_CLIENT", "Answer", "Catalog", "Policy", "PopulationBudget", "QueryRequest",
    "Quote", "Service",
    "ServiceContext", "WindowStatus", "dataset_grid", "hash_key",
]
