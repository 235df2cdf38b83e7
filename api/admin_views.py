"""The admin routes (clients, keys, caps, groups, zonings, the audit log): registered on `views.admin_blp`."""

from __future__ import annotations

from typing import Any

import api.schemas as schemas
from api.auth import current_client, require
from api.views import BEARER, _document_errors, admin_blp, service, upload_limit

__all__ = ["admin_blp"]  # with its routes registered below
from dpflows import zoning_sources
from dpflows.budget import Epsilon, PrivacyLoss, Rho

# -- admin ------------------------------------------------------------------------------------------

@admin_blp.route("/clients", methods=["POST"])
@require("admin")
@admin_blp.arguments(schemas.NewClientSchema)
@admin_blp.response(201, schemas.IssuedKeySchema)
@_document_errors(admin_blp, 401, 403, 409, 422, 429, 503)
@admin_blp.doc(security=BEARER)
def create_client(body: dict[str, Any]) -> Any:
    """Register a client; its API key is in this response only."""
    client, key = service().create_client(body["name"], body["role"], by=current_client())
    return {"client": client, "api_key": key}


@admin_blp.route("/clients", methods=["GET"])
@require("admin")
@admin_blp.response(200, schemas.ClientWithKeysSchema(many=True))
@_document_errors(admin_blp, 401, 403, 429, 503)
@admin_blp.doc(security=BEARER)
def list_clients() -> Any:
    """Clients with their keys (prefixes only, never the keys)."""
    ledger = service().ledger
    return [{**vars(c), "keys": ledger.list_keys(c.id)} for c in ledger.list_clients()]


@admin_blp.route("/clients/<int(max=9223372036854775807):client_id>/keys", methods=["POST"])
@require("admin")
@admin_blp.response(201, schemas.IssuedKeySchema)
@_document_errors(admin_blp, 401, 403, 404, 429, 503)
@admin_blp.doc(security=BEARER)
def issue_key(client_id: int) -> Any:
    """Issue another key for a client (e.g. to rotate); shown once."""
    key = service().rotate_key(client_id, by=current_client())
    return {"client": service().ledger.get_client(client_id), "api_key": key}


@admin_blp.route("/keys/<int(max=9223372036854775807):key_id>", methods=["DELETE"])
@require("admin")
@admin_blp.response(200, schemas.KeySchema)
@_document_errors(admin_blp, 401, 403, 404, 429, 503)
@admin_blp.doc(security=BEARER)
def revoke_key(key_id: int) -> Any:
    """Revoke a key at once; requests with it get 401 from now on."""
    return service().revoke_key(key_id, by=current_client())


@admin_blp.route("/caps", methods=["PUT"])
@require("admin")
@admin_blp.arguments(schemas.CapSchema)
@admin_blp.response(200, schemas.CapSchema)
@_document_errors(admin_blp, 401, 403, 404, 409, 422, 429, 503)
@admin_blp.doc(security=BEARER)
def set_cap(body: dict[str, Any]) -> Any:
    """Set a client's cap on a dataset (client_id), or a population's global cap (neither) or a sharing group's
    allocation of it (group), per window or for every window. Named by dataset, the global cap and allocations
    are those of the dataset's population (issue 17), in its measure. Allocations never sum above the global
    cap: 422 if they would."""
    cap: PrivacyLoss = Epsilon.parse(body["epsilon"]) if "epsilon" in body else Rho.parse(body["rho"])
    service().set_cap(body.get("dataset"), cap, client_id=body.get("client_id"), window=body.get("window"),
                      by=current_client(), group=body.get("group"), population=body.get("population"))
    return body


@admin_blp.route("/allocations", methods=["GET"])
@require("admin")
@admin_blp.arguments(schemas.PopulationQuerySchema, location="query")
@admin_blp.response(200, schemas.PopulationBudgetSchema)
@_document_errors(admin_blp, 401, 403, 404, 409, 422, 429, 503)
@admin_blp.doc(security=BEARER)
def list_allocations(args: dict[str, Any]) -> Any:
    """A population's global caps, its sharing groups' allocations, its horizon cap and what was spent in each
    window, named by population or by one of its datasets (admins only: clients never see these figures)."""
    return service().population_budget(dataset=args.get("dataset"), population=args.get("population"))


@admin_blp.route("/populations/<string:population>/horizon", methods=["PUT"])
@require("admin")
@admin_blp.arguments(schemas.HorizonSchema)
@admin_blp.response(200, schemas.PopulationSchema)
@_document_errors(admin_blp, 401, 403, 422, 429, 503)
@admin_blp.doc(security=BEARER)
def set_horizon(body: dict[str, Any], population: str) -> Any:
    """Bound a population's spend summed over any `horizon_windows` consecutive windows (in its measure); null
    removes the bound. Checked in the same ledger transaction as every other cap."""
    cap: PrivacyLoss | None = (Epsilon.parse(body["epsilon"]) if "epsilon" in body
                               else Rho.parse(body["rho"]) if "rho" in body else None)
    return service().set_horizon_cap(population, body["horizon_windows"], cap, by=current_client())


@admin_blp.route("/groups", methods=["POST"])
@require("admin")
@admin_blp.arguments(schemas.GroupSchema)
@admin_blp.response(200, schemas.ClientSchema)
@_document_errors(admin_blp, 401, 403, 404, 422, 429, 503)
@admin_blp.doc(security=BEARER)
def set_group(body: dict[str, Any]) -> Any:
    """Put a client in a sharing group (null: alone again). A group's clients reuse and derive from each
    other's answers; nobody else sees them. A group is created by putting its first client in it."""
    return service().set_group(body["client_id"], body["group"], by=current_client())


@admin_blp.route("/datasets/<string:dataset>/zonings", methods=["POST"])
@require("admin")
@upload_limit
@admin_blp.arguments(schemas.ZoningUploadSchema)
@admin_blp.response(201, schemas.ZoningAddedSchema)
@_document_errors(admin_blp, 401, 403, 404, 409, 413, 422, 429, 503)
@admin_blp.doc(security=BEARER)
def add_zoning(body: dict[str, Any], dataset: str) -> Any:
    """Load a public zoning from `cell_id,zone_id` CSV, from GeoJSON polygons (`geojson` + `id_field`: each
    cell to the polygon covering it, else to the nearest, reported) or as a square grid (`grid_km`); coarse
    zonings are checked for zone size."""
    return zoning_sources.add_zoning(
        service(), dataset, body["name"], csv=body["csv"], geojson=body["geojson"], id_field=body["id_field"],
        grid_km=body["grid_km"], coarse=body["coarse"], min_cells_per_zone=body["min_cells_per_zone"],
        by=current_client())


@admin_blp.route("/audit", methods=["GET"])
@require("admin", "oversight")
@admin_blp.arguments(schemas.AuditQuerySchema, location="query")
@admin_blp.response(200, schemas.AuditPageSchema)
@_document_errors(admin_blp, 401, 403, 422, 429, 503)
@admin_blp.doc(security=BEARER)
def audit(args: dict[str, Any]) -> Any:
    """Audit rows in order, a page at a time: who asked what, when, at what ε, with what outcome.

    What police analysts asked and why (query and case reference) is shown to role oversight only;
    admins get those rows with `query` null.
    """
    rows = service().read_audit(current_client(), after_id=args["after_id"], limit=args["limit"])
    return {"entries": rows, "next_after_id": rows[-1].id if len(rows) == args["limit"] else None}
