"""Marshmallow schemas for every request and response; the OpenAPI document is built from them.

Request schemas only check shape and types; meaning (dates inside the data, hours, caps,
policies) is checked once, in `dpflows`, whose errors name the field, the value and the fix.
Unknown fields are rejected (marshmallow's RAISE), so a typo never silently changes a query.
"""

from __future__ import annotations

from typing import Any

import marshmallow as ma
from marshmallow import fields, validate

from api.account_schemas import (  # re-exported: views use `schemas.X` for every schema
    AllocationSchema,
    AuditEntrySchema,
    AuditPageSchema,
    AuditQuerySchema,
    BoundCandidateSchema,
    BoundingReportSchema,
    BudgetQuerySchema,
    BudgetSchema,
    CapSchema,
    ClientSchema,
    ClientWithKeysSchema,
    ContributionQuantileSchema,
    DatasetSchema,
    GroupSchema,
    HealthSchema,
    HistogramBinSchema,
    HorizonSchema,
    IssuedKeySchema,
    KeySchema,
    MeasureBoundingSchema,
    NearestCellSchema,
    NewClientSchema,
    PopulationBudgetSchema,
    PopulationQuerySchema,
    PopulationSchema,
    ReportMechanismSchema,
    TypicalQuerySchema,
    WindowBudgetSchema,
    WindowCapSchema,
    WindowSpentSchema,
    ZoneSchema,
    ZoningAddedSchema,
    ZoningSchema,
    ZoningSummarySchema,
    ZoningUploadSchema,
)
from api.fields import (
    ID_MAX,
    ApproxDpSchema,
    EpsilonField,
    Number,
    PassThroughList,
    WholeMatch,
    _positive_number,
    label_field,
    name_field,
)
from dpflows.query_kinds import QUERY_KINDS


class QueryBodySchema(ma.Schema):
    dataset = name_field(example="demo")
    zoning = name_field(description="a zoning of the dataset, or 'cell'", example="districts")
    start = fields.Date(required=True, metadata={"description": "first day (ISO date)", "example": "2024-03-04"})
    end = fields.Date(required=True, metadata={"description": "day after the last (exclusive)",
                                               "example": "2024-03-11"})
    hours = fields.List(fields.Integer(strict=True), validate=validate.Length(equal=2),
                        metadata={"description": "[from, to) hours of day; from > to wraps past midnight",
                                  "example": [7, 10]})
    weekdays = fields.List(fields.Integer(strict=True), validate=validate.Length(1, 7),
                           metadata={"description": "days of week to count, 0=Monday", "example": [0, 1, 2, 3, 4]})
    epsilon = _positive_number("pure-DP datasets: the ε to spend in each window the query touches")
    rho = _positive_number("zCDP datasets (accounting zcdp): the ρ to spend in each window the query touches")
    max_error = _positive_number("instead of epsilon or rho: the 95% absolute error per value wanted")
    confidence = Number(load_default=0.95, allow_nan=False, validate=validate.Range(0.5, 1, max_inclusive=False),
                        metadata={"description": "confidence of error bounds (default 0.95)"})
    clamp_negative = fields.Boolean(load_default=False,
                                    metadata={"description": "post-process negative noisy counts to 0"})
    consistent = fields.Boolean(load_default=False, metadata={
        "description": "post-process to non-negative integers whose row, column and grand totals agree "
                       "(least squares then rounding, from released values only); raw_values keeps the unbiased "
                       "noisy values. Free."})
    derive = fields.Boolean(load_default=False, metadata={
        "description": "allow a free answer summed exactly from a finer answer already released on this dataset "
                       "(derived_from names it; per-value error bounds are those of sums of noises)"})
    case_ref = label_field(128, metadata={"description": "required for role analyst: the case this query serves; "
                                                         "recorded in the audit log, readable by role oversight only"})

    @ma.validates_schema
    def _one_price(self, data: dict[str, Any], **kwargs: Any) -> None:
        if sum(k in data for k in ("epsilon", "rho", "max_error")) != 1:
            raise ma.ValidationError("send exactly one of epsilon (pure-DP datasets), rho (zCDP datasets) or "
                                     "max_error", field_name="epsilon")


class FlowsQuerySchema(QueryBodySchema):
    pass


class PresenceQuerySchema(QueryBodySchema):
    pass


class ZoneTotalsQuerySchema(QueryBodySchema):
    """inflows / outflows: the same filters as flows, one value per zone."""


class WindowQuerySchema(QueryBodySchema):
    """residents / commuting: whole windows (start and end on the window grid), no hours or weekdays."""

    class Meta:
        exclude = ("hours", "weekdays")


class ResidentsQuerySchema(WindowQuerySchema):
    place = fields.String(required=True, validate=validate.OneOf(["home", "work"]), metadata={
        "description": "home (modal night cell) or work (modal weekday-daytime cell on enough days); one place per "
                       "answer: each person adds at most 1 per window"})


class CommutingQuerySchema(WindowQuerySchema):
    pass


class PatternsQuerySchema(QueryBodySchema):
    measure = fields.String(load_default="trips", validate=validate.OneOf(["trips", "presence"]),
                            metadata={"description": "trips (departures) or presence"})
    zone = label_field(128, metadata={"description": "one zone of the zoning; omit for the whole area"})


class QuoteQuerySchema(PatternsQuerySchema):
    query = fields.String(required=True, validate=validate.OneOf(list(QUERY_KINDS)))
    place = fields.String(validate=validate.OneOf(["home", "work"]), metadata={"description": "residents only"})


class WindowChargeSchema(ma.Schema):
    window = fields.Integer()
    start = fields.Date()
    end = fields.Date(metadata={"description": "exclusive"})
    epsilon_charged = EpsilonField(metadata={"description": "pure-DP datasets"})
    rho_charged = EpsilonField(metadata={"description": "zCDP datasets"})
    budget_remaining = EpsilonField(metadata={"description": "what you can still spend in this window (ε or ρ)"})


class MechanismSchema(ma.Schema):
    name = fields.String(metadata={"description": "discrete_laplace (pure DP) or discrete_gaussian (zCDP)"})
    noise_scale = fields.Float()
    sensitivity = fields.Float(metadata={"description": "ℓ1 (Laplace: the bound L of the counted measure) or ℓ2 "
                                                        "(Gaussian: from L and the per-key cap)"})


class AnswerSchema(ma.Schema):
    answer_id = fields.String()
    query = fields.Dict(metadata={"description": "the normalized query"})
    values = PassThroughList(fields.Dict(), metadata={"description": "one object per key: key fields and count"})
    accounting = fields.String(metadata={"description": "pure_dp (ε fields) or zcdp (ρ fields)"})
    epsilon_charged = EpsilonField(metadata={"description": "ε charged in each window below (0 when reused)"})
    epsilon = EpsilonField(metadata={"description": "ε the answer was released at"})
    rho_charged = EpsilonField(metadata={"description": "zCDP: ρ charged in each window below (0 when reused)"})
    rho = EpsilonField(metadata={"description": "zCDP: ρ the answer was released at"})
    approx_dp = fields.Nested(ApproxDpSchema, metadata={"description": "zCDP: the release's ρ as (ε, δ), for display"})
    epsilon_derived_from_max_error = fields.Boolean(metadata={"description": "the ε or ρ was derived from max_error"})
    windows = fields.List(fields.Nested(WindowChargeSchema))
    budget_remaining = EpsilonField(metadata={"description": "least remaining budget (ε or ρ) over the windows "
                                                             "touched"})
    privacy_unit = fields.String()
    count_unit = fields.String(metadata={"description": "what a count counts: trips, people (each key one day-hour, "
                                                        "or one window of homes), person-hours"})
    uncovered_days = fields.List(fields.String(), metadata={
        "description": "days asked that the dataset is declared not to hold: they count nothing"})
    mechanism = fields.Nested(MechanismSchema)
    error_bound_95 = fields.Float(metadata={"description": "absolute error per value at the stated confidence"})
    confidence = fields.Float()
    reused = fields.Boolean(metadata={"description": "true: a stored answer returned at no cost"})
    postprocessing = fields.List(fields.String())
    released_at = fields.String()
    raw_values = fields.List(fields.Integer(), metadata={
        "description": "with consistent or clamp_negative: the unbiased noisy values in key order; sum these"})
    totals = fields.Dict(metadata={"description": "with consistent: row, column and grand totals of values"})
    raw_totals = fields.Dict(metadata={"description": "with consistent: the same totals of raw_values, and the 95% "
                                                      "bound of each (error_bound_95)"})
    derived_from = fields.String(metadata={"description": "with derive: the released answer this one sums, free"})
    value_error_bounds = fields.List(fields.Float(), metadata={
        "description": "derived answers: each value's error bound, in key order (they differ)"})
    value_terms = fields.List(fields.Integer(), metadata={
        "description": "derived answers: how many released values each value sums"})


class RelativeChangeQuerySchema(PresenceQuerySchema):
    baseline_start = fields.Date(required=True, metadata={"description": "first day of the baseline period",
                                                          "example": "2024-03-04"})
    baseline_end = fields.Date(required=True, metadata={"description": "day after the baseline's last (exclusive)",
                                                        "example": "2024-03-11"})


class ZoneChangeSchema(ma.Schema):
    zone = fields.String()
    current_per_day = fields.Float(metadata={"description": "noisy presence per counted day, current period"})
    baseline_per_day = fields.Float()
    change_pct = fields.Float(allow_none=True, metadata={"description": "null where the baseline estimate is <= 0"})
    change_pct_low = fields.Float(metadata={"description": "lower end of the interval at `confidence`"})
    change_pct_high = fields.Float(allow_none=True, metadata={
        "description": "upper end; null where the baseline's lower bound is not positive (too noisy)"})
    current_error_bound = fields.Float()
    baseline_error_bound = fields.Float()


class RelativeChangeSchema(ma.Schema):
    zones = fields.List(fields.Nested(ZoneChangeSchema))
    confidence = fields.Float(metadata={"description": "per zone (not simultaneous over zones)"})
    current_days = fields.Integer()
    baseline_days = fields.Integer()
    method = fields.String()
    accounting = fields.String()
    windows = fields.List(fields.Nested(WindowChargeSchema), metadata={
        "description": "what the pair cost in each window touched (0 for reused or derived answers)"})
    budget_remaining = EpsilonField(metadata={"description": "least remaining budget over the windows touched"})
    privacy_unit = fields.String()
    current = fields.Nested(AnswerSchema, metadata={"description": "the current period's presence answer"})
    baseline = fields.Nested(AnswerSchema, metadata={"description": "the baseline period's presence answer"})


class QuoteSchema(ma.Schema):
    accounting = fields.String(metadata={"description": "pure_dp (ε fields) or zcdp (ρ fields)"})
    epsilon = EpsilonField()
    epsilon_charged = EpsilonField(metadata={"description": "0 when the answer would be reused"})
    rho = EpsilonField()
    rho_charged = EpsilonField(metadata={"description": "0 when the answer would be reused"})
    derived_from = fields.String(metadata={"description": "with derive: the released answer it would be summed "
                                                          "from, at no cost"})
    epsilon_derived_from_max_error = fields.Boolean()
    error_bound_95 = fields.Float()
    confidence = fields.Float()
    windows = fields.List(fields.Nested(WindowChargeSchema))
    reused = fields.Boolean()
    privacy_unit = fields.String()
    count_unit = fields.String()
    mechanism = fields.Nested(MechanismSchema)


__all__ = [
    "ID_MAX",
    "AllocationSchema",
    "AnswerSchema",
    "ApproxDpSchema",
    "AuditEntrySchema",
    "AuditPageSchema",
    "AuditQuerySchema",
    "BoundCandidateSchema",
    "BoundingReportSchema",
    "BudgetQuerySchema",
    "BudgetSchema",
    "CapSchema",
    "ClientSchema",
    "ClientWithKeysSchema",
    "CommutingQuerySchema",
    "ContributionQuantileSchema",
    "DatasetSchema",
    "EpsilonField",
    "FlowsQuerySchema",
    "GroupSchema",
    "HealthSchema",
    "HistogramBinSchema",
    "HorizonSchema",
    "IssuedKeySchema",
    "KeySchema",
    "MeasureBoundingSchema",
    "MechanismSchema",
    "NearestCellSchema",
    "NewClientSchema",
    "Number",
    "PassThroughList",
    "PatternsQuerySchema",
    "PopulationBudgetSchema",
    "PopulationQuerySchema",
    "PopulationSchema",
    "PresenceQuerySchema",
    "QueryBodySchema",
    "QuoteQuerySchema",
    "QuoteSchema",
    "RelativeChangeQuerySchema",
    "RelativeChangeSchema",
    "ReportMechanismSchema",
    "ResidentsQuerySchema",
    "TypicalQuerySchema",
    "WholeMatch",
    "WindowBudgetSchema",
    "WindowCapSchema",
    "WindowChargeSchema",
    "WindowQuerySchema",
    "WindowSpentSchema",
    "ZoneChangeSchema",
    "ZoneSchema",
    "ZoneTotalsQuerySchema",
    "ZoningAddedSchema",
    "ZoningSchema",
    "ZoningSummarySchema",
    "ZoningUploadSchema",
    "label_field",
    "name_field",
]
