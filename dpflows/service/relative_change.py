"""Relative change of presence per zone: a period against the same weekdays in a baseline period.

Built from two presence answers (each charged or reused, or derived for free), so it is
post-processing and releases nothing beyond them. Per zone z:

- ``C`` = sum over the query's hours of the current answer's raw (unbiased) noisy values, and
  ``B`` the same for the baseline; their noise is a sum of ``k`` independent discrete Laplace
  draws (k = hours, times the terms of derived values), with a bound from
  `mechanisms.sum_error_bound`.
- Rates per counted day (days in the period falling on the asked weekdays): ``c = C/d_C``,
  ``b = B/d_B``; the change is ``100·(c/b − 1)`` percent.
- **Interval**: each sum's bound is taken at confidence ``1 − (1 − confidence)/2``; by a union
  bound both true sums lie within their bounds with probability ≥ ``confidence``, and then the
  true ratio lies in ``[max(C − e_C, 0)/d_C ÷ (B + e_B)/d_B, (C + e_C)/d_C ÷ (B − e_B)/d_B]``
  (interval arithmetic; true counts are ≥ 0). So the stated interval covers the true change with
  probability ≥ ``confidence`` **per zone** (not simultaneously over all zones). When the
  baseline's lower end is ≤ 0 the ratio has no upper bound (``None``): the baseline is too small
  for the noise at that ε.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass
from typing import Any

from dpflows.errors import BudgetExceeded, InvalidInput
from dpflows.ledger import Client
from dpflows.mechanisms import sum_error_bound
from dpflows.queries import QuerySpec
from dpflows.service.answering import answer
from dpflows.service.context import ServiceContext
from dpflows.service.quoting import quote as quote_query
from dpflows.service.records import Answer, QueryRequest, Quote
from dpflows.service.reports import charge_bounding_report


@dataclass(frozen=True)
class RelativeChange:
    """Per-zone % change with intervals, and the two answers it was computed from."""

    zones: list[dict[str, Any]]
    confidence: float  # per zone, for the interval [change_pct_low, change_pct_high]
    current_days: int
    baseline_days: int
    current: Answer
    baseline: Answer
    method: str


def counted_days(spec: QuerySpec) -> int:
    """Days in [start, end) that fall on the spec's weekdays."""
    days = (spec.end - spec.start).days
    return sum(1 for d in range(days) if (spec.start + dt.timedelta(days=d)).weekday() in spec.weekdays)


def _zone_sums(answer: Answer) -> dict[str, tuple[int, int]]:
    """zone -> (sum of raw values over hours, number of noise terms in that sum)."""
    if answer.key_fields != ("zone", "hour"):
        raise InvalidInput("relative change needs presence answers keyed by zone and hour", field="kind")
    content = answer.content
    raw = content.raw_values if content.raw_values is not None else content.counts
    terms = content.value_terms or [1] * len(raw)
    out: dict[str, tuple[int, int]] = {}
    for zone, value, k in zip(content.keys["zone"], raw, terms, strict=True):
        total, n = out.get(zone, (0, 0))
        out[zone] = (total + int(value), n + int(k))
    return out


def relative_change_from(current: Answer, baseline: Answer, confidence: float = 0.95) -> RelativeChange:
    """Per-zone relative change of presence per counted day, with a per-zone interval at `confidence`."""
    each = 1.0 - (1.0 - confidence) / 2.0  # union bound over the two sums
    d_c, d_b = counted_days(current.spec), counted_days(baseline.spec)
    cur, base = _zone_sums(current), _zone_sums(baseline)
    if set(cur) != set(base):
        raise InvalidInput("the two presence answers must use the same zoning", field="zoning")
    rows: list[dict[str, Any]] = []
    for zone, (c_sum, c_k) in cur.items():
        b_sum, b_k = base[zone]
        e_c = sum_error_bound(current.noise_scale, c_k, each, current.mechanism)
        e_b = sum_error_bound(baseline.noise_scale, b_k, each, baseline.mechanism)
        c_rate, b_rate = c_sum / d_c, b_sum / d_b
        low_b, high_b = (b_sum - e_b) / d_b, (b_sum + e_b) / d_b
        low_c, high_c = max(c_sum - e_c, 0.0) / d_c, (c_sum + e_c) / d_c
        rows.append({
            "zone": zone,
            "current_per_day": c_rate,
            "baseline_per_day": b_rate,
            # A true count is never negative, so the estimate is clamped at -100%.
            "change_pct": None if b_rate <= 0 else 100.0 * (max(c_rate, 0.0) / b_rate - 1.0),
            # A baseline whose upper end is not positive leaves only the trivial lower end -100%.
            "change_pct_low": 100.0 * (low_c / high_b - 1.0) if high_b > 0 else -100.0,
            "change_pct_high": 100.0 * (high_c / low_b - 1.0) if low_b > 0 else None,
            "current_error_bound": e_c,
            "baseline_error_bound": e_b,
        })
    method = (
        f"per zone: sums of raw noisy presence over the asked hours, per counted day ({d_c} current, {d_b} "
        f"baseline days); each sum's bound at {each:.4g} confidence, combined by interval arithmetic and a "
        f"union bound into a {confidence:.4g} interval per zone (not simultaneous across zones); "
        "change_pct_high is None where the baseline's lower bound is not positive"
    )
    return RelativeChange(rows, confidence, d_c, d_b, current, baseline, method)


def baseline_spec(spec: QuerySpec, start: dt.date, end: dt.date) -> QuerySpec:
    """The same presence query over the baseline dates."""
    if spec.kind != "presence":
        raise InvalidInput(f"kind={spec.kind!r}: relative change is offered for presence only", field="kind")
    if end <= start:
        raise InvalidInput(
            f"baseline_end={end.isoformat()} must be after baseline_start={start.isoformat()} (end is exclusive)",
            field="baseline_end",
        )
    return QuerySpec(spec.kind, spec.dataset, spec.zoning, start, end, spec.hours, spec.weekdays, spec.measure,
                     spec.zone)


def per_window_need(quotes: list[Quote]) -> dict[int, int]:
    """nano-ε (or nano-ρ) the quoted releases would charge per window (zero for reused or derived ones)."""
    need: dict[int, int] = {}
    for quote in quotes:
        for w in quote.windows:
            need[w.window] = need.get(w.window, 0) + quote.charged.nanos
    return need


def relative_change(ctx: ServiceContext, request: QueryRequest, baseline_start: dt.date, baseline_end: dt.date,
                    client: Client) -> RelativeChange:
    """% change in presence per zone versus the same weekdays and hours in a baseline period.

    Two presence answers, each charged, reused or derived exactly as `answer` would; their
    combined cost is checked against every window's remaining budget first, so a refusal
    charges nothing. (Between that check and the second charge another client can still
    spend; the first answer then stays released and is reused for free next time.)
    """
    charge_bounding_report(ctx, ctx.dataset(request.spec.dataset))  # before the combined need is checked
    base_request = dataclasses.replace(request, spec=baseline_spec(request.spec, baseline_start, baseline_end))
    # Quotes authorize and price both, and know which would be reused or derived for free.
    quotes = [quote_query(ctx, req, client) for req in (request, base_request)]
    need = per_window_need(quotes)
    unit = type(quotes[0].loss)
    for status in quotes[0].windows + quotes[1].windows:
        if need.get(status.window, 0) > status.remaining.nanos:
            exc = BudgetExceeded(
                f"the current and baseline answers need {unit.unit}={unit(need[status.window])} in window "
                f"{status.window}, above the remaining {status.remaining}; ask for less",
                field=unit.unit, details={"window": status.window},
            )
            ctx.audit_failure("query.relative_change", exc, client, request.spec.dataset,
                              {"current": request.spec.canonical(), "baseline": base_request.spec.canonical()})
            raise exc
    current = answer(ctx, request, client)
    baseline = answer(ctx, base_request, client)
    return relative_change_from(current, baseline, request.confidence)
