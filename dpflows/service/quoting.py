"""Use case: price a query without releasing anything.

A quote pays a dataset's pending bounding report first (to the system principal, against the
global cap), exactly as the query would: so the windows' remaining figures are those the query
will meet, and a quote is refused whenever the query would be.
"""

from __future__ import annotations

from dpflows.accounting import accounting
from dpflows.budget import PrivacyLoss, delta_text
from dpflows.errors import BudgetExceeded
from dpflows.ledger import Client
from dpflows.mechanisms import DISCRETE_LAPLACE_THRESHOLD, plan_threshold
from dpflows.queries import check_answerable, touched_windows
from dpflows.sensitivity import query_sensitivity
from dpflows.service.answering import check_postprocessing, find_derivation
from dpflows.service.context import ServiceContext
from dpflows.service.records import QueryRequest, Quote, WindowStatus
from dpflows.service.reports import charge_bounding_report
from dpflows.sparse import is_sparse


def quote(ctx: ServiceContext, request: QueryRequest, client: Client) -> Quote:
    """What a query would cost and how accurate it would be, without touching data or this client's budget; for
    a sparse answer also its threshold (the mechanism, threshold and (ε, δ) are fixed by public facts)."""
    spec = request.spec
    data = ctx.dataset(spec.dataset)
    charge_bounding_report(ctx, data)
    ctx.policy.authorize(client, spec, data.zoning(spec.zoning), request.case_ref)
    sparse = is_sparse(spec, data)
    check_answerable(spec, data, sparse=sparse)
    check_postprocessing(request, sparse=sparse)
    loss = ctx.price(client, request, data, sparse=sparse)
    windows = ctx.window_status(data, client, list(touched_windows(spec, data)))
    acc = accounting(data.metadata.accounting)
    # whether it would be reused: the stored answer's id, not its payload (no budgets: windows above)
    stored = ctx.ledger.find_reusable(spec.dataset, ctx.query_key(spec, data, loss, client), client.id, ())
    derivation = (find_derivation(ctx, spec, data, client, request, loss)
                  if stored is None and request.derive and not sparse else None)
    mechanism, threshold, contribution = acc.mechanism.name, None, None
    charged: PrivacyLoss
    if sparse:
        contribution = query_sensitivity(spec, data).contribution
        scale, threshold = plan_threshold(contribution, loss)
        mechanism, sensitivity = DISCRETE_LAPLACE_THRESHOLD, float(contribution.l1)
        bound = acc.mechanism.error_bound(scale, request.confidence)
        charged = type(loss).zero() if stored is not None else loss
    elif derivation is not None:
        bound, scale, charged = derivation.max_error_bound, float(derivation.payload["scale"]), type(loss).zero()
        sensitivity = acc.mechanism.parse_sensitivity(derivation.payload["sensitivity"])
    else:
        sensitivity = acc.sensitivity(query_sensitivity(spec, data))
        scale = acc.scale(sensitivity, loss)
        bound = acc.mechanism.error_bound(scale, request.confidence)
        charged = type(loss).zero() if stored is not None else loss
    _refuse_over_budget(spec.dataset, charged, windows)
    return Quote(loss=loss, loss_from_max_error=request.max_error is not None, confidence=request.confidence,
                 windows=windows, privacy_unit=data.metadata.privacy_unit, mechanism=mechanism,
                 accounting=acc.name, error_bound_95=bound, reused=stored is not None, charged=charged,
                 noise_scale=scale, sensitivity=sensitivity,
                 derived_from=None if derivation is None else derivation.source.answer_id,
                 count_unit=query_sensitivity(spec, data).count_unit, threshold=threshold,
                 contribution=None if contribution is None else contribution.to_json())


def _refuse_over_budget(dataset: str, charged: PrivacyLoss, windows: list[WindowStatus]) -> None:
    """A quote is refused whenever the query would be: the charge must fit what this client has left."""
    if charged.nanos == 0 and charged.delta_attos == 0:
        return
    for w in windows:
        if charged.delta_attos > w.remaining.delta_attos:
            left_delta = w.remaining.delta_attos
            raise BudgetExceeded(
                f"delta={delta_text(charged.delta_attos)} exceeds your remaining delta budget of "
                f"{delta_text(left_delta)} on dataset {dataset!r} window {w.window}; ask for a smaller delta or a "
                "dense answer, or wait for an admin to raise the cap",
                field="delta", details={"window": w.window, "delta_remaining": left_delta / 10**18},
            )
        if charged.nanos > w.remaining.nanos:
            left = type(charged)(w.remaining.nanos)  # the ε or ρ part
            charged = type(charged)(charged.nanos)
            raise BudgetExceeded(
                f"{charged.unit}={charged} exceeds your remaining budget of {left} on dataset {dataset!r} window "
                f"{w.window}; ask for less or wait for an admin to raise the cap",
                field=charged.unit, details={"window": w.window, "remaining": left.to_json()},
            )
