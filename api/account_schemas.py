"""Schemas of budgets, datasets, bounding reports, zonings, clients, caps, the audit log and health."""

from __future__ import annotations

from typing import Any

import marshmallow as ma
from marshmallow import fields, validate

from api.fields import (
    ID_MAX,
    ApproxDpSchema,
    EpsilonField,
    Number,
    WholeMatch,
    label_field,
    name_field,
)
from dpflows.ledger.base import GROUP_NAME


class BudgetQuerySchema(ma.Schema):
    dataset = name_field()


class WindowBudgetSchema(ma.Schema):
    window = fields.Integer()
    start = fields.Date()
    end = fields.Date()
    cap = EpsilonField(allow_none=True, metadata={"description": "your cap; null means none set (nothing to spend)"})
    spent = EpsilonField()
    group = fields.String(allow_none=True, metadata={"description": "your sharing group; null: you are alone"})
    group_cap = EpsilonField(allow_none=True, metadata={
        "description": "your group's allocation of this window; null: none (you spend from the budget shared by "
                       "clients without an allocation, which is not shown)"})
    group_spent = EpsilonField(allow_none=True, metadata={"description": "what your group spent of its allocation"})
    group_unit = fields.String(allow_none=True, metadata={
        "description": "the measure of group_cap and group_spent: the dataset's population's (epsilon or rho), which "
                       "can differ from the dataset's own; a pure-DP charge then counts as OpenDP's rho of it"})
    remaining = EpsilonField(metadata={"description": "the smaller of what remains of your cap and of your group's "
                                                      "allocation; other groups' spending is never shown"})
    spent_approx_dp = fields.Nested(ApproxDpSchema, metadata={"description": "zCDP: your spent ρ as (ε, δ)"})
    delta_cap = fields.Float(allow_none=True, metadata={"description": "approximate DP: your δ cap in this window"})
    delta_spent = fields.Float(metadata={"description": "approximate DP: δ you spent (sparse answers only)"})
    delta_remaining = fields.Float(metadata={"description": "approximate DP: δ you can still spend"})
    group_delta_cap = fields.Float(metadata={"description": "approximate DP: your group's δ allocation"})
    group_delta_spent = fields.Float(metadata={"description": "approximate DP: what your group spent of it"})


class BudgetSchema(ma.Schema):
    dataset = fields.String()
    client = fields.String()
    privacy_unit = fields.String()
    accounting = fields.String(metadata={"description": "pure_dp: amounts are ε; zcdp: amounts are ρ; approx_dp: "
                                                        "amounts are ε, with δ beside them"})
    windows = fields.List(fields.Nested(WindowBudgetSchema))


class ZoningSummarySchema(ma.Schema):
    name = fields.String()
    zones = fields.Integer()
    coarse = fields.Boolean()


class DatasetSchema(ma.Schema):
    name = fields.String()
    first_day = fields.Date()
    end_day = fields.Date(metadata={"description": "exclusive"})
    window_days = fields.Integer()
    windows = fields.Integer()
    bounds = fields.Dict(keys=fields.String(), values=fields.Integer())
    accounting = fields.Dict(metadata={"description": "measure: pure_dp, zcdp or approx_dp; for zcdp the per-key "
                                                      "caps and the δ at which ρ is shown as (ε, δ); for approx_dp "
                                                      "the per-key caps"})
    dense_limit = fields.Integer(metadata={"description": "answers with more keys are released sparsely (approx_dp) "
                                                          "or refused"})
    privacy_unit = fields.String()
    missing_days = fields.List(fields.Date(), metadata={"description": "days inside [first_day, end_day) the "
                                                                       "admin declared the dataset does not hold"})
    zonings = fields.List(fields.Nested(ZoningSummarySchema))
    time_zone = fields.String(allow_none=True, metadata={
        "description": "IANA time zone of the dataset's dates and hours (local); null: not declared (hours as the "
                       "operator's timestamps gave them)"})
    retired_windows = fields.List(fields.Integer(), metadata={
        "description": "windows whose counts were deleted by the operator; queries touching them are refused"})
    population = fields.String(metadata={
        "description": "the people the dataset is drawn from: datasets of one population share its global budget "
                       "caps and group allocations, so a spend on one shows on the others"})


class TypicalQuerySchema(ma.Schema):
    keys = fields.Integer()
    epsilon = fields.Float()
    description = fields.String()


class ContributionQuantileSchema(ma.Schema):
    q = fields.Float()
    lower = fields.Integer(metadata={"description": "the quantile lies in [lower, upper] records per person-window"})
    upper = fields.Integer(allow_none=True, metadata={"description": "null: above the last finite bin"})
    rank_error_95 = fields.Float(metadata={"description": "95% bound on the error of the share at or below upper"})


class BoundCandidateSchema(ma.Schema):
    bound = fields.Integer()
    share_dropped = fields.Float(metadata={"description": "estimated share of records dropped at this bound"})
    share_over = fields.Float(metadata={"description": "estimated share of person-windows above this bound"})
    mae_bound = fields.Float(metadata={"description": "upper bound on the typical query's mean absolute error"})


class HistogramBinSchema(ma.Schema):
    lower = fields.Integer()
    upper = fields.Integer(allow_none=True, metadata={"description": "null: open-ended last bin"})
    noisy_count = fields.Integer(metadata={"description": "person-windows, pooled over windows, with noise"})


class MeasureBoundingSchema(ma.Schema):
    measure = fields.String()
    bound = fields.Integer(metadata={"description": "the dataset's bound L (the sensitivity)"})
    person_windows = fields.Float(metadata={"description": "estimated person-windows, pooled over windows"})
    share_dropped = fields.Float(metadata={"description": "estimated share of records dropped at the bound"})
    share_over_bound = fields.Float()
    suggested_bound = fields.Integer()
    typical_query = fields.Nested(TypicalQuerySchema)
    quantiles = fields.List(fields.Nested(ContributionQuantileSchema))
    candidates = fields.List(fields.Nested(BoundCandidateSchema))
    histogram = fields.List(fields.Nested(HistogramBinSchema))


class ReportMechanismSchema(ma.Schema):
    name = fields.String()
    noise_scale = fields.Float()
    sensitivity = fields.Integer(metadata={"description": "ℓ1 over the measures' histograms: one bin each per "
                                                          "person-window"})


class BoundingReportSchema(ma.Schema):
    dataset = fields.String()
    privacy_unit = fields.String()
    epsilon = EpsilonField(metadata={"description": "ε of the report's release (pure DP, discrete Laplace)"})
    charged = EpsilonField(metadata={"description": "what the report costs once in every window of the global cap: "
                                                    "its ε, or on a zCDP dataset the ρ of that release (ε²/2)"})
    charged_unit = fields.String(metadata={"description": "epsilon or rho"})
    windows = fields.Integer()
    mechanism = fields.Nested(ReportMechanismSchema)
    error_bound_95 = fields.Float(metadata={"description": "absolute error of each noisy bin at 95%"})
    confidence = fields.Float()
    detection_thresholds = fields.List(fields.Float(), metadata={
        "description": "a run of k adjacent bins all reaching the k-th value is data; bins after the last such "
                       "run read as empty"})
    measures = fields.List(fields.Nested(MeasureBoundingSchema))
    notes = fields.List(fields.String())


class ZoneSchema(ma.Schema):
    zone_id = fields.String()
    cells = fields.Integer()
    centroid = fields.List(fields.Float(), metadata={"description": "[lat, lon] mean of the zone's cells"})


class ZoningSchema(ma.Schema):
    name = fields.String()
    coarse = fields.Boolean()
    min_cells_per_zone = fields.Integer()
    zones = fields.List(fields.Nested(ZoneSchema))
    cells = fields.List(fields.Dict(), metadata={"description": "public cell catalog: cell_id, lat, lon, zone_id"})
    geometry = fields.Dict(allow_none=True, metadata={"description": "GeoJSON of the zones, when loaded"})


class ClientSchema(ma.Schema):
    id = fields.Integer()
    name = fields.String()
    role = fields.String()
    created_at = fields.String()
    group = fields.String(allow_none=True, metadata={"description": "sharing group; null: alone"})


class GroupSchema(ma.Schema):
    client_id = fields.Integer(required=True, validate=validate.Range(min=1, max=ID_MAX))
    group = fields.String(required=True, allow_none=True, validate=WholeMatch(GROUP_NAME), metadata={
        "description": "the sharing group (1-64 letters, digits, '_', '.', '-'); null puts the client alone again"})


class NewClientSchema(ma.Schema):
    name = label_field(128, required=True)
    role = fields.String(required=True, validate=validate.OneOf(["admin", "planner", "analyst", "oversight"]))


class IssuedKeySchema(ma.Schema):
    client = fields.Nested(ClientSchema)
    api_key = fields.String(metadata={"description": "shown once; stored only as a hash"})


class KeySchema(ma.Schema):
    id = fields.Integer()
    client_id = fields.Integer()
    prefix = fields.String()
    created_at = fields.String()
    revoked_at = fields.String(allow_none=True)


class ClientWithKeysSchema(ClientSchema):
    keys = fields.List(fields.Nested(KeySchema))


def _population_field(description: str) -> fields.String:
    return fields.String(validate=WholeMatch(GROUP_NAME, error="use 1-64 letters, digits, '_', '.' or '-', starting "
                                                                "with a letter or digit"),
                         metadata={"description": description})


class CapSchema(ma.Schema):
    dataset = name_field(required=False, description=(
        "a client's cap is on a dataset; without client_id, the global cap (or a group's allocation) of the "
        "dataset's population, window the dataset's"))
    population = _population_field("without dataset: the global cap (or a group's allocation) of this population, "
                                   "window the population's")
    epsilon = Number(allow_nan=False, validate=validate.Range(min=0),
                     metadata={"description": "a client's cap on a pure-DP dataset, or a population's cap in epsilon"})
    rho = Number(allow_nan=False, validate=validate.Range(min=0),
                 metadata={"description": "a client's cap on a zCDP dataset, or a cap of a population in rho"})
    delta = Number(allow_nan=False, validate=validate.Range(min=0, max=1, max_inclusive=False), metadata={
        "description": "with epsilon, on approx_dp datasets and populations in (ε, δ) (required there): the δ of the "
                       "cap; 0 allows dense answers only"})
    client_id = fields.Integer(validate=validate.Range(max=ID_MAX),
                               metadata={"description": "omit (and omit group) for the global cap across all clients"})
    group = fields.String(validate=WholeMatch(GROUP_NAME), metadata={
        "description": "a sharing group's allocation of the global cap (allocations never sum above it)"})
    window = fields.Integer(validate=validate.Range(min=0), metadata={"description": "omit for every window"})

    @ma.validates_schema
    def _one_measure(self, data: dict[str, Any], **kwargs: Any) -> None:
        if ("epsilon" in data) == ("rho" in data):
            raise ma.ValidationError("send exactly one of epsilon (pure-DP and approx_dp datasets) or rho (zCDP "
                                     "datasets)", field_name="epsilon")
        if "delta" in data and "rho" in data:
            raise ma.ValidationError("delta goes with epsilon, on approx_dp datasets", field_name="delta")
        if "client_id" in data and "group" in data:
            raise ma.ValidationError("send client_id (a client's cap) or group (a group's allocation), not both",
                                     field_name="group")
        if "dataset" not in data and ("population" not in data or "client_id" in data):
            raise ma.ValidationError("send dataset (a client's cap, or the global cap of its population), or "
                                     "population without client_id (its global cap or an allocation)",
                                     field_name="dataset")


class PopulationQuerySchema(ma.Schema):
    dataset = name_field(required=False, description="the population of this dataset")
    population = _population_field("a population by name (default: the one every dataset without one shares)")

    @ma.validates_schema
    def _one(self, data: dict[str, Any], **kwargs: Any) -> None:
        if ("dataset" in data) == ("population" in data):
            raise ma.ValidationError("send one of dataset or population", field_name="dataset")


class HorizonSchema(ma.Schema):
    horizon_windows = fields.Integer(required=True, allow_none=True, validate=validate.Range(min=1, max=10_000),
                                     metadata={"description": "H: the cap bounds the population's spend summed "
                                                              "over any H consecutive windows (e.g. 52 weeks); null "
                                                              "removes it"})
    epsilon = Number(allow_nan=False, validate=validate.Range(min=0),
                     metadata={"description": "the horizon cap of a population in epsilon"})
    rho = Number(allow_nan=False, validate=validate.Range(min=0),
                 metadata={"description": "the horizon cap of a population in rho"})
    delta = Number(allow_nan=False, validate=validate.Range(min=0, max=1, max_inclusive=False),
                   metadata={"description": "with epsilon: the δ of the horizon cap of a population in (ε, δ)"})

    @ma.validates_schema
    def _one_measure(self, data: dict[str, Any], **kwargs: Any) -> None:
        sent = ("epsilon" in data) + ("rho" in data)
        if (data.get("horizon_windows") is None) != (sent == 0) or sent > 1:
            raise ma.ValidationError("send horizon_windows with exactly one of epsilon or rho (the population's "
                                     "measure), or horizon_windows null alone to remove the horizon cap",
                                     field_name="horizon_windows")


class PopulationSchema(ma.Schema):
    name = fields.String()
    measure = fields.String(allow_none=True, metadata={"description": "epsilon, rho or epsilon_delta ((ε, δ): each "
                                                                      "figure has a delta beside it): the unit of "
                                                                      "every figure"})
    first_day = fields.String(allow_none=True, metadata={"description": "its window 0 starts on this day"})
    window_days = fields.Integer(allow_none=True)
    horizon_windows = fields.Integer(allow_none=True)
    horizon_cap = EpsilonField(allow_none=True)
    horizon_cap_delta = fields.Function(lambda p: None if p.horizon_cap is None else p.horizon_cap.delta_as_float(),
                                        allow_none=True,
                                        metadata={"type": "number", "description": "epsilon_delta: its δ; null "
                                                                                   "without a horizon cap"})


class WindowCapSchema(ma.Schema):
    window = fields.Integer(allow_none=True, metadata={"description": "a window of the population; null: every "
                                                                      "window without its own"})
    cap = EpsilonField()
    delta = fields.Function(lambda c: c.cap.delta_as_float(), metadata={"type": "number",
                                                                        "description": "epsilon_delta: the cap's δ"})


class AllocationSchema(WindowCapSchema):
    group = fields.String()


class WindowSpentSchema(ma.Schema):
    window = fields.Integer()
    spent = EpsilonField()
    delta = fields.Function(lambda s: s.spent.delta_as_float(), metadata={"type": "number",
                                                                          "description": "epsilon_delta: δ spent"})


class PopulationBudgetSchema(ma.Schema):
    population = fields.Nested(PopulationSchema)
    global_caps = fields.List(fields.Nested(WindowCapSchema))
    allocations = fields.List(fields.Nested(AllocationSchema))
    spent = fields.List(fields.Nested(WindowSpentSchema), metadata={
        "description": "what all clients spent, over every dataset of the population, in each window with spending"})

    @ma.post_dump
    def _delta_where_measured(self, data: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        """δ figures only for a population in (ε, δ): elsewhere they are 0 by construction and would mislead."""
        if (data.get("population") or {}).get("measure") != "epsilon_delta":
            data.get("population", {}).pop("horizon_cap_delta", None)
            for part in ("global_caps", "allocations", "spent"):
                for row in data.get(part) or []:
                    row.pop("delta", None)
        return data


class ZoningUploadSchema(ma.Schema):
    """Three forms: `csv` (with `geojson` optional, for maps), `geojson` + `id_field` (cells assigned
    from the polygons), or `grid_km` (a square grid over the cell catalog's extent)."""

    name = name_field()
    csv = fields.String(load_default=None, metadata={"description": "cell_id,zone_id rows with a header"})
    coarse = fields.Boolean(load_default=False)
    min_cells_per_zone = fields.Integer(load_default=None, validate=validate.Range(min=1), metadata={
        "description": "coarse zonings: the fewest cells any zone may hold (default and minimum: the server's "
                       "DPFLOWS_MIN_CELLS_PER_COARSE_ZONE, 10)"})
    geojson = fields.Dict(load_default=None, allow_none=True, metadata={
        "description": "a GeoJSON FeatureCollection of Polygon/MultiPolygon zones in WGS 84. Without csv, each "
                       "cell goes to the polygon covering it, else to the nearest (reported); with csv, the "
                       "polygons are only drawn on maps"})
    id_field = label_field(128, load_default=None, metadata={
        "description": "with geojson and no csv: the feature property holding each zone's id", "example": "GEOID"})
    grid_km = Number(load_default=None, allow_nan=False, validate=validate.Range(min=0, min_inclusive=False),
                     metadata={"description": "side of a square grid's squares in km; zones G{row}_{col}, only "
                                              "squares holding a cell"})

    @ma.validates_schema
    def _one_source(self, data: dict[str, Any], **kwargs: Any) -> None:
        given = [k for k in ("csv", "grid_km") if data.get(k) is not None]
        if not given and data.get("geojson") is None:
            raise ma.ValidationError("send csv (cell_id,zone_id rows), geojson with id_field (polygons), or grid_km",
                                     field_name="csv")
        if len(given) > 1:
            raise ma.ValidationError("send only one of csv and grid_km", field_name="grid_km")


class NearestCellSchema(ma.Schema):
    cell_id = fields.String()
    zone_id = fields.String()
    distance_km = fields.Float(metadata={"description": "from the cell to the polygon it was assigned to"})


class ZoningAddedSchema(ZoningSummarySchema):
    method = fields.String(metadata={"description": "csv, geojson or grid: how cells were assigned to zones"})
    assigned_to_nearest = fields.List(fields.Nested(NearestCellSchema), metadata={
        "description": "cells outside every polygon, assigned to the nearest (cells are public)"})
    empty_polygons = fields.List(fields.String(), metadata={
        "description": "ids of polygons holding no cell: they are not zones"})


class AuditQuerySchema(ma.Schema):
    after_id = fields.Integer(load_default=0, validate=validate.Range(min=0, max=ID_MAX))
    limit = fields.Integer(load_default=100, validate=validate.Range(1, 1000))


class AuditEntrySchema(ma.Schema):
    id = fields.Integer()
    at = fields.String()
    client_id = fields.Integer(allow_none=True)
    action = fields.String()
    outcome = fields.String()
    dataset = fields.String(allow_none=True)
    query = fields.Dict(allow_none=True)
    loss = EpsilonField(metadata={"description": "what was charged, in the dataset's measure (ε, or ρ on zCDP "
                                                 "datasets: the query names which)"})
    epsilon = fields.Function(lambda entry: entry.loss.to_json(), metadata={
        "type": "number", "description": "deprecated: the same as loss (it holds ρ on zCDP datasets); read loss"})
    answer_id = fields.String(allow_none=True)
    prev_hash = fields.String()
    row_hash = fields.String()


class AuditPageSchema(ma.Schema):
    entries = fields.List(fields.Nested(AuditEntrySchema))
    next_after_id = fields.Integer(allow_none=True, metadata={"description": "pass as after_id for the next page"})


class HealthSchema(ma.Schema):
    status = fields.String()
    checks = fields.Dict()
