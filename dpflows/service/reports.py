"""Use case: pay for a dataset's bounding report, then serve it (dpflows.contribution_report).

Ingestion released the report (noisy) at its ε in every window. Before anything of that
ingestion is served, that ε (on a zCDP dataset, the ρ OpenDP converts the release to) is
charged against the global cap of the dataset's population through `commit_release`, by the reserved principal
SYSTEM_CLIENT, keyed by the ingestion's digest: one charge per ingestion, whichever worker or
host comes first. Until it succeeds (no global cap yet, or too little left) the dataset serves
nothing: no answer, no report.
"""

from __future__ import annotations

import uuid
from typing import Any

from dpflows.accounting import accounting
from dpflows.aggregates import TRIP, Dataset
from dpflows.budget import MAX_EPSILON_NANOS, PrivacyLoss
from dpflows.cells import CELL_ZONING
from dpflows.contribution_report import ReportCharge, report_document
from dpflows.errors import BudgetExceeded, Conflict, DpflowsError, NotFound
from dpflows.ledger import AuditEntry, Client, DatasetGrid, ReleaseRequest
from dpflows.service.context import ServiceContext

#: The reserved principal that pays for bounding reports (no key, no allowance of its own).
SYSTEM_CLIENT = "system:ingest"
REPORT_ACTION = "ingest.bounding_report"


def charge_bounding_report(ctx: ServiceContext, data: Dataset) -> None:
    """Charge, once, every bounding report an ingestion owes, before anything of it is served."""
    for charge in data.report_charges:
        if charge.query_key in ctx.reports_paid:
            continue
        if ctx.ledger.find_answer(data.metadata.name, charge.query_key) is None:
            loss = accounting(data.metadata.accounting).report_loss(charge)
            _commit_report_charge(ctx, data.metadata.name, charge, loss, ctx.grid(data),
                                  ctx.population_loss(data, loss))
        ctx.reports_paid.add(charge.query_key)


def _commit_report_charge(ctx: ServiceContext, dataset: str, charge: ReportCharge, loss: PrivacyLoss,
                          grid: DatasetGrid, population_loss: PrivacyLoss) -> None:
    """`loss`: the report's ε, or on a zCDP dataset the ρ OpenDP converts that release to; `population_loss`
    the same in the population's measure."""
    system = system_client(ctx)
    # No allowance of its own: the global cap, shared with every client, is its only limit.
    ctx.ledger.set_cap(dataset, type(loss)(MAX_EPSILON_NANOS), client_id=system.id, window=None, grid=grid)
    answer_id = uuid.uuid4().hex
    query = {"kind": "bounding_report", "ingestion": charge.ingestion, "epsilon": charge.epsilon.to_json(),
             loss.unit: loss.to_json()}
    try:
        ctx.ledger.commit_release(ReleaseRequest(
            client_id=system.id, dataset=dataset, query_key=charge.query_key,
            windows=charge.window_indexes, loss=loss, answer_id=answer_id, grid=grid,
            population_loss=population_loss,
            payload={"query": query, "loss_nanos": loss.nanos, "unit": loss.unit},
            audit=AuditEntry(action=REPORT_ACTION, outcome="released", client_id=system.id, dataset=dataset,
                             query=query, loss=loss, answer_id=answer_id),
        ))
    except BudgetExceeded as exc:
        ctx.audit_failure(REPORT_ACTION, exc, system, dataset, query)
        raise BudgetExceeded(
            f"dataset {dataset!r} serves nothing until its bounding report ({loss.unit}={loss} in every "
            f"window) is charged to the global cap, and that failed: {exc.message.split('; ')[0]}; "
            "ask an admin to set or raise the global cap (dpflows admin set-cap --global)",
            field="dataset", details=exc.details,
        ) from exc


def system_client(ctx: ServiceContext) -> Client:
    """The reserved principal, created on first use; refused if anyone gave it a key."""
    try:
        client = ctx.ledger.client_by_name(SYSTEM_CLIENT)
    except NotFound:
        try:
            client = ctx.ledger.create_client(SYSTEM_CLIENT, "admin")
        except Conflict:  # another worker or host created it meanwhile
            client = ctx.ledger.client_by_name(SYSTEM_CLIENT)
    active = [k.id for k in ctx.ledger.list_keys(client.id) if k.revoked_at is None]
    if active:  # only a ledger from before system principals were refused keys can hold one
        raise Conflict(f"client {SYSTEM_CLIENT!r} is reserved for bounding-report charges but holds API key(s) "
                       f"{active}; revoke them: dpflows admin revoke-key --key-id {active[0]}", field="name")
    return client


def bounding_report(ctx: ServiceContext, dataset: str, client: Client) -> dict[str, Any]:
    """How much bounding drops, read from the dataset's noisy bounding report once it is paid for."""
    audit_query: dict[str, Any] = {"kind": "bounding_report"}
    try:
        data = ctx.dataset(dataset)
        report = data.bounding_report
        if report is None:
            if data.metadata.unit == TRIP:
                raise NotFound(f"dataset {dataset!r} has no bounding report: each trip is its own privacy unit, so "
                               "there is no per-person contribution to bound (its bound is 1)", field="dataset")
            raise NotFound(f"dataset {dataset!r} has no bounding report; re-ingest it with "
                           "--report-epsilon 0.05 (the default) to make one", field="dataset")
        charge_bounding_report(ctx, data)
    except DpflowsError as exc:
        ctx.audit_failure("query.bounding_report", exc, client, dataset, audit_query)
        raise
    # Reading a paid release again is free, as a reused answer is.
    ctx.ledger.append_audit(AuditEntry(action="query.bounding_report", outcome="reused", client_id=client.id,
                                       dataset=dataset, query=audit_query))
    zones = [data.zoning(z).zone_count for z in zoning_names(data) if z != CELL_ZONING]
    meta = data.metadata
    doc = report_document(report, {"trips": meta.bound_trips, "presence": meta.bound_presence},
                          max(zones, default=None))
    charged = accounting(meta.accounting).report_loss(data.report_charges[-1])  # this ingestion's own: the last
    return {"dataset": dataset, "privacy_unit": meta.privacy_unit, "charged": charged,
            "charged_unit": charged.unit, **doc}


def zoning_names(data: Dataset) -> set[str]:
    """Zonings loaded here plus any another worker or host saved since this process loaded the dataset."""
    names = set(data.zonings)
    zdir = data.path / "zonings"
    if zdir.is_dir():
        names |= {p.stem for p in zdir.glob("*.json")}
    return names
