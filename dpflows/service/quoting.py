"""Use case: price a query without releasing anything.

A quote pays a dataset's pending bounding report first (to the system principal, against the
global cap), exactly as the query would: so the windows' remaining figures are those the query
will meet, and a quote is refused whenever the query would be.
"""

from __future__ import annotations

from dpflows.accounting import accounting
from dpflows.budget import PrivacyLoss
from dpflows.errors import BudgetExceeded
from dpflows.ledger import Client
from dpflows.queries import check_answerable, touched_windows
from dpflows.sensitivity import query_sensitivity
from dpflows.service.answering import check_postprocessing, find_derivation
from dpflows.service.context import ServiceContext
from dpflows.service.records import QueryRequest, Quote, WindowStatus
from dpflows.service.reports import charge_bounding_report


def quote(ctx: ServiceContext, request: QueryRequest, client: Client) -> Quote:
    """What a query would cost and how accurate it would be, without touching data or this client's budget."""
    spec = request.spec
    data = ctx.dataset(spec.dataset)
    charge_bounding_report(ctx, data)
    ctx.policy.authorize(client, spec, data.zoning(spec.zoning), request.case_ref)
    check_answerable(spec, data)
    check_postprocessing(request)
    loss = ctx.price(client, request, data)
    windows = ctx.window_status(data, client, list(touched_windows(spec, data)))
    acc = accounting(data.metadata.accounting)
    # whether it would be reused: the stored answer's id, not its payload (no budgets: windows above)
    stored = ctx.ledger.find_reusable(spec.dataset, ctx.query_key(spec, data, loss, client), client.id, ())
    derivation = find_derivation(ctx, spec, data, client, request, loss) if stored is None and request.derive else None
    if derivation is not None:
        bound, scale, charged = derivation.max_error_bound, float(derivation.payload["scale"]), type(loss).zero()
        sensitivity = acc.mechanism.parse_sensitivity(derivation.payload["sensitivity"])
    else:
        sensitivity = acc.sensitivity(query_sensitivity(spec, data))
        scale = acc.scale(sensitivity, loss)
        bound = acc.mechanism.error_bound(scale, request.confidence)
        charged = type(loss).zero() if stored is not None else loss
    _refuse_over_budget(spec.dataset, charged, windows)
    return Quote(loss=loss, loss_from_max_error=request.max_error is not None, confidence=request.confidence,
                 windows=windows, privacy_unit=data.metadata.privacy_unit, mechanism=acc.mechanism.name,
                 accounting=acc.name, error_bound_95=bound, reused=stored is not None, charged=charged,
                 noise_scale=scale, sensitivity=sensitivity,
                 derived_from=None if derivation is None else derivation.source.answer_id,
                 count_unit=query_sensitivity(spec, data).count_unit)


def _refuse_over_budget(dataset: str, charged: PrivacyLoss, windows: list[WindowStatus]) -> None:
    """A quote is refused whenever the query would be: the charge must fit what this client has left."""
    if charged.nanos == 0:
        return
    for w in windows:
        if charged.nanos > w.remaining.nanos:
            left = type(charged)(w.remaining.nanos)
            raise BudgetExceeded(
                f"{charged.unit}={charged} exceeds your remaining budget of {left} on dataset {dataset!r} window "
                f"{w.window}; ask for less or wait for an admin to raise the cap",
                field=charged.unit, details={"window": w.window, "remaining": left.to_json()},
            )
