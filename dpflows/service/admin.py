"""Use cases: authentication and keys, clients, caps, zonings, budget status, readiness."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import hmac
import os
import secrets
from typing import Any

from dpflows.accounting import accounting
from dpflows.budget import PrivacyLoss
from dpflows.cells import Zoning, parse_zoning_csv
from dpflows.errors import (
    AuthenticationFailed,
    Conflict,
    DataUnavailable,
    DpflowsError,
    InvalidInput,
    NotFound,
    PolicyViolation,
)
from dpflows.ledger import Allocation, ApiKeyRecord, AuditEntry, Client
from dpflows.ledger.base import Population
from dpflows.retirement import retire_windows as retire_files
from dpflows.service.context import ServiceContext
from dpflows.service.records import WindowStatus
from dpflows.service.reports import SYSTEM_CLIENT

KEY_PREFIX = "dpf_"
#: Names of dpflows' own principals (the bounding-report payer); no client may take one, none gets a key.
SYSTEM_PREFIX = "system:"


def hash_key(api_key: str) -> str:
    """Keys have ≥ 256 random bits, so a plain SHA-256 is a safe, fast one-way store."""
    return hashlib.sha256(api_key.encode()).hexdigest()


def authenticate(ctx: ServiceContext, api_key: str | None) -> Client:
    """The client holding this key; one message for missing, unknown and revoked keys."""
    if not api_key:
        raise AuthenticationFailed("missing API key; send 'Authorization: Bearer <key>'")
    digest = hash_key(api_key)
    client = ctx.ledger.client_for_key_hash(digest)
    # The lookup is by SHA-256 digest, so its timing says nothing about how much of a key
    # was right; compare_digest keeps the final check constant-time as well.
    expected = digest if client is not None else "0" * 64
    if client is None or not hmac.compare_digest(digest, expected):
        raise AuthenticationFailed("unknown or revoked API key; ask an admin for a valid key")
    return client


def issue_key(ctx: ServiceContext, client_id: int) -> str:
    """A new random key for a client: shown once, stored only as its hash. System principals get none."""
    if ctx.ledger.get_client(client_id).name.startswith(SYSTEM_PREFIX):
        raise PolicyViolation(f"client id={client_id} is a system principal of dpflows; it never gets an API key",
                              field="client_id")
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    ctx.ledger.add_key(client_id, hash_key(key), key[: len(KEY_PREFIX) + 6])
    return key


def create_client(ctx: ServiceContext, name: str, role: str, *, by: Client | None = None) -> tuple[Client, str]:
    """Register a client and issue its first key (returned once, never stored)."""
    if name.startswith(SYSTEM_PREFIX):
        raise InvalidInput(f"name={name!r} is reserved (names starting with 'system:' are dpflows' own); "
                           "choose another name", field="name")
    client = ctx.ledger.create_client(name, role)
    key = issue_key(ctx, client.id)
    ctx.audit_admin(by, "admin.create_client", client=name, role=role)
    return client, key


def rotate_key(ctx: ServiceContext, client_id: int, *, by: Client | None = None) -> str:
    key = issue_key(ctx, client_id)
    ctx.audit_admin(by, "admin.issue_key", client_id=client_id)
    return key


def revoke_key(ctx: ServiceContext, key_id: int, *, by: Client | None = None) -> ApiKeyRecord:
    key = ctx.ledger.revoke_key(key_id)
    ctx.audit_admin(by, "admin.revoke_key", key_id=key_id)
    return key


def set_group(ctx: ServiceContext, client_id: int, group: str | None, *, by: Client | None = None) -> Client:
    """Put a client in a sharing group (None: alone again). Clients of one group reuse and derive from each
    other's stored answers; no other client sees them (issue 17). Answers released before a move stay in the
    group they were released in. dpflows' own principals belong to no group."""
    if ctx.ledger.get_client(client_id).name.startswith(SYSTEM_PREFIX):
        raise PolicyViolation(f"client id={client_id} is a system principal of dpflows; it belongs to no group",
                              field="client_id")
    client = ctx.ledger.set_group(client_id, group)
    ctx.audit_admin(by, "admin.set_group", client_id=client_id, group=group)
    return client


def set_cap(ctx: ServiceContext, dataset: str | None, cap: PrivacyLoss, *, client_id: int | None,
            window: int | None, by: Client | None = None, group: str | None = None,
            population: str | None = None) -> None:
    """A per-client cap on a dataset (client_id), or a population's global cap (neither) or a sharing group's
    allocation of it (group), for one window or every window. Allocations never sum above the global cap (the
    ledger refuses).

    Named by `dataset` (the names that predate populations), a global cap or allocation is that of the
    dataset's population, its `window` the dataset's (window k of the dataset is the population's k + the
    dataset's offset); named by `population`, its windows are the population's. A client's cap is in the
    dataset's measure, a population's in the population's (ε, or ρ once any of its datasets is zCDP); the
    other is refused, so an ε can never be read as a ρ.
    """
    if dataset is None:
        if population is None or client_id is not None:
            raise InvalidInput("send dataset (a client's cap, or the global cap or an allocation of its population) "
                               "or population (its global cap or an allocation)", field="dataset")
        ctx.ledger.set_cap(None, cap, client_id=None, window=window, group=group, population=population)
        ctx.audit_admin(by, "admin.set_cap", population=population, window=window, cap=cap.to_json(), unit=cap.unit,
                        **({"group": group} if group is not None else {}))
        return
    data = ctx.dataset(dataset)
    grid = ctx.grid(data)
    if population is not None and population != grid.population:
        raise InvalidInput(f"dataset {dataset!r} draws on population {grid.population!r}, not {population!r}; send "
                           "one of dataset or population", field="population")
    unit = accounting(data.metadata.accounting).unit
    measure = unit if client_id is not None else grid.population_measure or unit
    if cap.unit != measure:
        whose = (f"a client's cap on dataset {dataset!r} is in its measure, {unit}" if client_id is not None else
                 f"dataset {dataset!r} draws on population {grid.population!r}, whose global cap and allocations are "
                 f"in {measure} (a client's cap on the dataset stays in {unit})")
        raise InvalidInput(f"{whose}; send the cap as {measure}, not {cap.unit}", field=cap.unit)
    if window is not None and not 0 <= window < data.metadata.window_count:
        raise InvalidInput(
            f"window={window} is not a window of dataset {dataset!r}; use 0..{data.metadata.window_count - 1} "
            "or omit it for every window",
            field="window",
        )
    ctx.ledger.set_cap(dataset, cap, client_id=client_id, window=window, grid=grid, group=group)
    ctx.audit_admin(by, "admin.set_cap", dataset=dataset, client_id=client_id, window=window,
                    cap=cap.to_json(), unit=cap.unit, **({"group": group} if group is not None else {}))


@dataclasses.dataclass(frozen=True)
class WindowCap:
    window: int | None  # None: every window without a cap of its own
    cap: PrivacyLoss


@dataclasses.dataclass(frozen=True)
class WindowSpent:
    window: int
    spent: PrivacyLoss


@dataclasses.dataclass(frozen=True)
class PopulationBudget:
    """What an admin sees of a population: its measure and grid, its global caps, its groups' allocations,
    its horizon cap, and what was spent in each window it has figures for (admins only, never clients)."""

    population: Population
    global_caps: list[WindowCap]
    allocations: list[Allocation]
    spent: list[WindowSpent]


def population_budget(ctx: ServiceContext, *, dataset: str | None = None,
                      population: str | None = None) -> PopulationBudget:
    """A population's caps, allocations and spending, named directly or by one of its datasets."""
    if dataset is not None:
        grid = ctx.grid(ctx.dataset(dataset))
        if population is not None and population != grid.population:
            raise InvalidInput(f"dataset {dataset!r} draws on population {grid.population!r}, not {population!r}",
                               field="population")
        population = grid.population
    if population is None:
        raise InvalidInput("send dataset or population", field="dataset")
    record = ctx.ledger.population(population)
    if record is None:
        raise NotFound(f"population {population!r} has no budget yet: no dataset of it was capped or charged, and "
                       "no cap was set on it", field="population")
    caps = ctx.ledger.population_caps(population)
    allocations = ctx.ledger.list_allocations(population=population)
    windows = sorted({w for w, _ in caps if w is not None} | {a.window for a in allocations if a.window is not None})
    last = max(windows, default=0)
    for name in ctx.store.names():  # every window of the population's datasets here
        try:
            data = ctx.dataset(name)
            grid = ctx.grid(data)
        except DpflowsError:
            continue
        if grid.population == population:
            last = max(last, ctx.ledger.population_of(name)[1] + data.metadata.window_count - 1)
    spent = [WindowSpent(w, ctx.ledger.population_spent(population, w)) for w in range(last + 1)]
    return PopulationBudget(record, [WindowCap(w, c) for w, c in caps], allocations,
                            [s for s in spent if s.spent.nanos > 0])


def set_horizon_cap(ctx: ServiceContext, population: str, windows: int | None, cap: PrivacyLoss | None, *,
                    by: Client | None = None) -> Population:
    """Bound a population's spend summed over any `windows` consecutive windows (None, None: no bound)."""
    record = ctx.ledger.set_horizon_cap(population, windows, cap)
    ctx.audit_admin(by, "admin.set_horizon_cap", population=population, windows=windows,
                    cap=None if cap is None else cap.to_json(), unit=None if cap is None else cap.unit)
    return record


def add_zoning(ctx: ServiceContext, dataset: str, name: str, csv_text: str, *, coarse: bool = False,
               min_cells_per_zone: int | None = None, geometry: dict[str, Any] | None = None,
               by: Client | None = None) -> Zoning:
    """Load a public zoning (cell_id,zone_id CSV); a name is never reused for different zones."""
    data = ctx.dataset(dataset)
    if min_cells_per_zone is None:
        min_cells_per_zone = ctx.policy.min_cells_coarse if coarse else 1
    if coarse and min_cells_per_zone < ctx.policy.min_cells_coarse:
        raise InvalidInput(
            f"min_cells_per_zone={min_cells_per_zone} is below the server's minimum of {ctx.policy.min_cells_coarse} "
            f"cells per zone for a coarse zoning; send min_cells_per_zone >= {ctx.policy.min_cells_coarse}, or "
            "load it as not coarse (analysts cannot query it then)",
            field="min_cells_per_zone",
        )
    if name in data.zonings or (data.path / "zonings" / f"{name}.json").exists():
        raise Conflict(
            f"name={name!r} is already a zoning of dataset {dataset!r}; stored answers refer to it, "
            "so choose a new name",
            field="name",
        )
    mapping = parse_zoning_csv(csv_text, source=f"zoning {name!r}")
    zoning = Zoning.from_mapping(name, mapping, data.catalog, coarse=coarse,
                                 min_cells_per_zone=min_cells_per_zone, geometry=geometry,
                                 source=f"zoning {name!r}")
    data.add_zoning(zoning)
    ctx.audit_admin(by, "admin.add_zoning", dataset=dataset, zoning=name, coarse=coarse)
    return zoning


def read_audit(ctx: ServiceContext, reader: Client, *, after_id: int = 0, limit: int = 100) -> list[AuditEntry]:
    """Audit rows for `reader`. What a police analyst asked and why (the query and its case reference) is
    readable by role oversight only; an admin sees who, when, what it cost and the outcome of those rows."""
    rows = ctx.ledger.read_audit(after_id=after_id, limit=limit)
    if reader.role == "oversight":
        return rows
    if reader.role != "admin":
        raise PolicyViolation(f"role {reader.role} may not read the audit log", field="role")
    analysts = {c.id for c in ctx.ledger.list_clients() if c.role == "analyst"}
    return [dataclasses.replace(r, query=None) if r.client_id in analysts and r.query is not None else r
            for r in rows]


def budget_status(ctx: ServiceContext, client: Client, dataset: str) -> list[WindowStatus]:
    data = ctx.dataset(dataset)
    return ctx.window_status(data, client, list(range(data.metadata.window_count)))


def readiness(ctx: ServiceContext) -> dict[str, Any]:
    """For a load balancer's readiness probe: the ledger answers and the data root can be read; and
    what this worker holds of each dataset (version, layout, windows mapped so far: public facts).

    Raises Unavailable (ledger) or DataUnavailable (data root); the message names no path.
    """
    ctx.ledger.list_clients()
    root = ctx.store.root
    if not root.is_dir() or not os.access(root, os.R_OK | os.X_OK):
        raise DataUnavailable("the data root is not a readable directory; check DPFLOWS_DATA_DIR")
    return {"ledger": "ok", "datasets": len(ctx.store.names()), "loaded": ctx.store.status()}


def retire_windows(ctx: ServiceContext, dataset: str, before: dt.date, *, by: Client | None = None) -> int:
    """Delete the counts of every window that ends before `before`, and the stored answers counting them.

    Their charges and audit rows stay (the ledger is append-only): the spending of those
    person-windows remains a fact. Queries touching them are refused from then on. Returns how
    many windows are retired (dpflows.retirement)."""
    data = ctx.dataset(dataset)
    meta = data.metadata
    count = (before - meta.first_day).days // meta.window_days
    if count < 1:
        raise InvalidInput(f"before={before.isoformat()}: no window of dataset {dataset!r} ends before it (the first "
                           f"ends {meta.window_start(1).isoformat()}); give a later date", field="before")
    retire_files(ctx.store.dataset_dir(dataset), count)
    try:
        keep = ctx.ledger.client_by_name(SYSTEM_CLIENT).id  # report charges hold no value: kept
    except NotFound:
        keep = None
    deleted = ctx.ledger.delete_answers(dataset, count, keep_client=keep)
    ctx.audit_admin(by, "admin.retire_windows", dataset=dataset, windows=count, answers_deleted=deleted)
    return count
