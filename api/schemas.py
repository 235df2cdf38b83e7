"""Marshmallow schemas for every request and response; the OpenAPI document is built from them.

Request schemas only check shape and types; meaning (dates inside the data, hours, caps,
policies) is checked once, in `dpflows`, whose errors name the field, the value and the fix.
Unknown fields are rejected (marshmallow's RAISE), so a typo never silently changes a query.
"""

from __future__ import annotations

import numbers
import re
from typing import Any

import marshmallow as ma
from marshmallow import fields, validate

from dpflows.budget import PrivacyLoss
from dpflows.cells import NAME_PATTERN, label_problem
from dpflows.query_kinds import QUERY_KINDS

# Ids are SQL BIGINTs: a larger integer cannot name anything, and SQLite raises OverflowError on it.
ID_MAX = 2**63 - 1


class EpsilonField(fields.Field):
    """Dumps an exact ε or ρ (`PrivacyLoss`) as a JSON number (exact for every value a client can send)."""

    def _serialize(self, value: Any, attr: str | None, obj: Any, **kwargs: Any) -> Any:
        if value is None:
            return None
        return value.to_json() if isinstance(value, PrivacyLoss) else value


class PassThroughList(fields.List):
    """Documented as a list of objects, dumped as is: the service already built plain dicts,
    and per-item field processing would cost milliseconds on answers with 10,000 keys."""

    def _serialize(self, value: Any, attr: str | None, obj: Any, **kwargs: Any) -> Any:
        return value


class Number(fields.Float):
    """A JSON number and nothing else: marshmallow's Float also takes the string "1" (and charged it
    as ε = 1), though the OpenAPI document says number. Refusing strings keeps one meaning per value."""

    default_error_messages = {  # noqa: RUF012 - marshmallow merges this class attribute up the MRO
        "not_a_number": "send a JSON number, not a string or another type (e.g. 0.5, not \"0.5\")"}

    def _validated(self, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise self.make_error("not_a_number")
        return super()._validated(value)


class WholeMatch(validate.Regexp):
    """A pattern the whole value must match: marshmallow's Regexp uses re.match, whose `$` also matches
    before a trailing newline ("demo\n"). OpenAPI shows the same pattern."""

    def __call__(self, value: str) -> str:
        if self.regex.fullmatch(value) is None:
            raise ma.ValidationError(self._format_error(value))
        return value


def _label(value: str) -> None:
    problem = label_problem(value)
    if problem is not None:
        raise ma.ValidationError(problem)


def name_field(**metadata: Any) -> fields.String:
    """A dataset or zoning name: it becomes a file name (dpflows.cells.check_name)."""
    return fields.String(required=True, validate=WholeMatch(
        re.compile(NAME_PATTERN), error="use 1-64 letters, digits, '_', '-' or '.', starting with a letter or digit"),
        metadata=metadata)


def label_field(max_length: int, **kwargs: Any) -> fields.String:
    """A zone id or client name: printable, no control characters, no surrounding whitespace."""
    return fields.String(validate=[validate.Length(1, max_length), _label], **kwargs)


def _positive_number(description: str) -> Number:
    return Number(allow_nan=False, validate=validate.Range(min=0, min_inclusive=False),
                  metadata={"description": description})


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


class ApproxDpSchema(ma.Schema):
    epsilon = fields.Float(metadata={"description": "the ε of (ε, δ)-DP that the ρ implies (OpenDP's conversion)"})
    delta = fields.Float()


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


class BudgetQuerySchema(ma.Schema):
    dataset = name_field()


class WindowBudgetSchema(ma.Schema):
    window = fields.Integer()
    start = fields.Date()
    end = fields.Date()
    cap = EpsilonField(allow_none=True, metadata={"description": "your cap; null means none set (nothing to spend)"})
    spent = EpsilonField()
    global_cap = EpsilonField(allow_none=True)
    global_spent = EpsilonField()
    remaining = EpsilonField()
    spent_approx_dp = fields.Nested(ApproxDpSchema, metadata={"description": "zCDP: your spent ρ as (ε, δ)"})


class BudgetSchema(ma.Schema):
    dataset = fields.String()
    client = fields.String()
    privacy_unit = fields.String()
    accounting = fields.String(metadata={"description": "pure_dp: amounts are ε; zcdp: amounts are ρ"})
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
    accounting = fields.Dict(metadata={"description": "measure: pure_dp or zcdp; for zcdp the per-key caps and "
                                                      "the δ at which ρ is shown as (ε, δ)"})
    privacy_unit = fields.String()
    missing_days = fields.List(fields.Date(), metadata={"description": "days inside [first_day, end_day) the "
                                                                       "admin declared the dataset does not hold"})
    zonings = fields.List(fields.Nested(ZoningSummarySchema))


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


class CapSchema(ma.Schema):
    dataset = name_field()
    epsilon = Number(allow_nan=False, validate=validate.Range(min=0),
                     metadata={"description": "the cap on a pure-DP dataset"})
    rho = Number(allow_nan=False, validate=validate.Range(min=0), metadata={"description": "the cap on a zCDP dataset"})
    client_id = fields.Integer(validate=validate.Range(max=ID_MAX),
                               metadata={"description": "omit for the global cap across all clients"})
    window = fields.Integer(validate=validate.Range(min=0), metadata={"description": "omit for every window"})

    @ma.validates_schema
    def _one_measure(self, data: dict[str, Any], **kwargs: Any) -> None:
        if ("epsilon" in data) == ("rho" in data):
            raise ma.ValidationError("send exactly one of epsilon (pure-DP datasets) or rho (zCDP datasets)",
                                     field_name="epsilon")


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
    epsilon = EpsilonField()
    answer_id = fields.String(allow_none=True)
    prev_hash = fields.String()
    row_hash = fields.String()


class AuditPageSchema(ma.Schema):
    entries = fields.List(fields.Nested(AuditEntrySchema))
    next_after_id = fields.Integer(allow_none=True, metadata={"description": "pass as after_id for the next page"})


class HealthSchema(ma.Schema):
    status = fields.String()
    checks = fields.Dict()
