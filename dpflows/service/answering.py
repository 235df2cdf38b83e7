"""Use case: answer a query (design §4).

authorize and validate → price (ε or ρ, or derived from a target error) → reuse a stored
answer if the identical query was released → if the client opted in (``derive=True``), sum a
finer released answer at no cost (dpflows.derived_answers) → compute the noisy answer in memory → one
ledger transaction: check every cap, charge every window, store the answer and audit, and
read back this client's budgets → describe. Any failure before the commit releases nothing and
charges nothing; every outcome, failures included, is audited without values. A fresh answer
costs one read (the stored-answer lookup) and one transaction. A reused one costs one read when
this process has read that answer before (its id, date and the client's budgets; the values are
read only if no cached body serves them), and its audit row joins the ledger's next group commit:
a reuse charges nothing, so nothing about budgets waits on that row (docs/security.md).
"""

from __future__ import annotations

import dataclasses
import functools
import uuid
from typing import Any

import numpy as np

from dpflows.accounting import accounting
from dpflows.aggregates import Dataset
from dpflows.budget import PrivacyLoss
from dpflows.derived_answers import Derivation, best_derivation, shape_filter
from dpflows.errors import DpflowsError, InvalidInput, Unavailable
from dpflows.ledger import AuditEntry, Client, ReleaseRequest, StoredAnswer, WindowBudget
from dpflows.mechanisms import NoiseMechanism, mechanism_named
from dpflows.postprocess import make_consistent, table_totals
from dpflows.queries import QuerySpec, prepare, uncovered_days
from dpflows.query_kinds import KEY_FIELDS, TABLE_KINDS
from dpflows.release_record import StoredRelease
from dpflows.sensitivity import query_sensitivity
from dpflows.service.context import ServiceContext, approx_dp
from dpflows.service.records import Answer, AnswerContent, QueryRequest
from dpflows.service.reports import charge_bounding_report, zoning_names


def answer(ctx: ServiceContext, request: QueryRequest, client: Client) -> Answer:
    """Authorize, price, reuse or release, charge atomically, and describe the answer."""
    spec = request.spec
    action = f"query.{spec.kind}"
    audit_query = spec.canonical()
    if request.case_ref is not None:
        audit_query["case_ref"] = request.case_ref
    try:
        data = ctx.dataset(spec.dataset)
        charge_bounding_report(ctx, data)
        ctx.policy.authorize(client, spec, data.zoning(spec.zoning), request.case_ref)
        check_postprocessing(request)
        loss = ctx.price(client, request, data)
        audit_query[loss.unit] = loss.to_json()
        query_key = ctx.query_key(spec, data, loss, client)
        reused = reuse(ctx, query_key, AuditEntry(action=action, outcome="reused", client_id=client.id,
                                                  dataset=spec.dataset, query=audit_query), request, client, data)
        if reused is not None:
            return reused
        if request.derive:
            derivation = find_derivation(ctx, spec, data, client, request, loss)
            if derivation is not None:
                release = StoredRelease.from_payload(derivation.payload)
                budgets = ctx.ledger.audit_reuse(AuditEntry(action=action, outcome="derived", client_id=client.id,
                                                            dataset=spec.dataset, query=audit_query,
                                                            answer_id=derivation.source.answer_id),
                                                 tuple(release.windows))
                return describe(ctx, derivation.source, release, client, data, request, budgets,
                                reused=False, derivation=derivation)
        prepared = prepare(spec, data)
        acc = accounting(data.metadata.accounting)
        noisy = acc.release(prepared.true_counts, acc.sensitivity(query_sensitivity(spec, data)), loss)
        answer_id = uuid.uuid4().hex
        release = StoredRelease(
            values=noisy.values.tolist(),  # Python ints, as the payload holds them
            key_fields=list(prepared.domain.fields),
            keys={f: prepared.domain.columns[f] for f in prepared.domain.fields},
            windows=list(prepared.windows),
            loss=loss,
            loss_from_max_error=request.max_error is not None,
            mechanism=noisy.mechanism,
            scale=noisy.scale,
            sensitivity=noisy.sensitivity,
            query=spec.canonical(),
            data_version=data.data_version(prepared.windows),
        )
        receipt = ctx.ledger.commit_release(ReleaseRequest(
            client_id=client.id, dataset=spec.dataset, query_key=query_key, windows=prepared.windows,
            loss=loss, answer_id=answer_id, payload=release.to_payload(), grid=ctx.grid(data),
            share_group=client.share_group, population_loss=ctx.population_loss(data, loss),
            audit=AuditEntry(action=action, outcome="released", client_id=client.id,
                             dataset=spec.dataset, query=audit_query, loss=loss, answer_id=answer_id),
        ))
    except DpflowsError as exc:
        ctx.audit_failure(action, exc, client, spec.dataset, audit_query)
        raise
    if receipt.reused:  # an identical query committed meanwhile by another worker or host
        release = StoredRelease.from_payload(receipt.answer.payload)
    elif ctx.high_water is not None:
        ctx.high_water.note()
    ctx.reuse_index.remember(query_key, receipt.answer.answer_id, tuple(release.windows))
    return describe(ctx, receipt.answer, release, client, data, request, list(receipt.budgets),
                    reused=receipt.reused, query_key=query_key)


def check_postprocessing(request: QueryRequest) -> None:
    """Refuse, before anything is charged, post-processing an answer's shape does not allow."""
    if request.consistent and request.spec.kind not in TABLE_KINDS:
        raise InvalidInput(f"consistent totals need a two-way table; {request.spec.kind} answers have one value per "
                           f"key of {list(KEY_FIELDS[request.spec.kind])}: leave consistent out", field="consistent")


def find_derivation(ctx: ServiceContext, spec: QuerySpec, data: Dataset, client: Client,
                    request: QueryRequest, loss: PrivacyLoss) -> Derivation | None:
    """The most accurate free derivation of `spec` from this dataset's released answers, if it is
    at least as accurate as what was asked: the requested max_error, or else the error bound a
    fresh release at the requested ε or ρ would have. A derived answer never trades the accuracy
    the client paid for (and asked for) for a free one far noisier."""
    acc = accounting(data.metadata.accounting)
    scale = acc.scale(acc.sensitivity(query_sensitivity(spec, data)), loss)
    fresh_bound = acc.mechanism.error_bound(scale, request.confidence)
    wanted = fresh_bound if request.max_error is None else min(request.max_error, fresh_bound)
    # Candidates by shape, in the ledger (at most Policy.derive_candidates), released in this client's
    # sharing group only; one payload is read.
    where, terms = shape_filter(spec, data, zoning_names(data),
                                max_loss=ctx.policy.max_loss(client.role, data.metadata.accounting),
                                limit=ctx.policy.derive_candidates)
    where = dataclasses.replace(where, group=client.share_group)
    return best_derivation(spec, data, ctx.ledger.find_answer_shapes(spec.dataset, where), terms,
                           ctx.ledger.get_answer, confidence=request.confidence, max_error=wanted)


def reuse(ctx: ServiceContext, query_key: str, audit: AuditEntry, request: QueryRequest, client: Client,
          data: Dataset) -> Answer | None:
    """The identical query's answer stored in this client's sharing group (the key holds the group), or None.

    Its audit row is queued for the ledger's next group commit. When this process has read the
    answer before, one read gives its id and this client's budgets in its windows, and the
    values stay in the ledger until something reads them (a cached body usually answers);
    otherwise the stored answer is read and described, and remembered.
    """
    spec = request.spec
    known = ctx.reuse_index.get(query_key)
    if known is not None:
        found = ctx.ledger.find_reusable(spec.dataset, query_key, client.id, known.windows)
        if found is not None and found.answer_id == known.answer_id:
            ctx.ledger.queue_audit(dataclasses.replace(audit, answer_id=found.answer_id))
            loss_type = accounting(data.metadata.accounting).loss_type
            return Answer(
                answer_id=found.answer_id, spec=spec, charged=loss_type.zero(),
                windows=ctx.window_status(data, client, list(known.windows), list(found.budgets)),
                confidence=request.confidence, reused=True, released_at=found.created_at,
                accounting=data.metadata.accounting, body_key=body_key(client, query_key, found.answer_id, request),
                source=functools.partial(load_content, ctx, found.answer_id, data, request),
            )
        ctx.reuse_index.forget(query_key)  # a ledger that changed under this process: read it all again
    stored = ctx.ledger.find_answer(spec.dataset, query_key)
    if stored is None:
        return None
    release = StoredRelease.from_payload(stored.payload)
    budgets = ctx.ledger.audit_reuse(dataclasses.replace(audit, answer_id=stored.answer_id), tuple(release.windows))
    ctx.reuse_index.remember(query_key, stored.answer_id, tuple(release.windows))
    return describe(ctx, stored, release, client, data, request, budgets, reused=True, query_key=query_key)


def body_key(client: Client, query_key: str, answer_id: str, request: QueryRequest) -> tuple[Any, ...]:
    """What a rendered body of this answer depends on, besides the per-request fields: the sharing
    group first, so that a body is never served to another group, then the answer and the options."""
    return (client.share_group, query_key, answer_id, request.confidence, request.clamp_negative, request.consistent)


def load_content(ctx: ServiceContext, answer_id: str, data: Dataset, request: QueryRequest) -> AnswerContent:
    """A reused answer's content, read from the ledger when first needed."""
    stored = ctx.ledger.get_answer(answer_id)
    if stored is None:
        raise Unavailable(f"stored answer {answer_id} is no longer in the ledger; retry the query")
    return describe_content(StoredRelease.from_payload(stored.payload), request, data)


def describe(ctx: ServiceContext, stored: StoredAnswer, release: StoredRelease, client: Client, data: Dataset,
             request: QueryRequest, budgets: list[WindowBudget], *, reused: bool,
             derivation: Derivation | None = None, query_key: str | None = None) -> Answer:
    """The answer a client gets: its content, with what it cost this client and the budgets left."""
    loss = release.loss
    answer_id = stored.answer_id if derivation is None else derivation.answer_id
    return Answer(
        answer_id=answer_id,
        spec=request.spec,
        charged=type(loss).zero() if reused or derivation is not None else loss,
        windows=ctx.window_status(data, client, release.windows, budgets),
        confidence=request.confidence,
        reused=reused,
        released_at=stored.created_at,
        accounting=data.metadata.accounting,
        source=describe_content(release, request, data, derivation),
        body_key=None if query_key is None or derivation is not None else body_key(client, query_key, answer_id,
                                                                                    request),
    )


def describe_content(release: StoredRelease, request: QueryRequest, data: Dataset,
                     derivation: Derivation | None = None) -> AnswerContent:
    """What the answer says: values post-processed as asked, as columns, with their error bounds."""
    spec = request.spec
    counts = release.values  # as released, unless post-processed below
    post: list[str] = []
    keys = release.keys
    fields = tuple(release.key_fields)
    scale = release.scale
    terms = release.terms
    mechanism = mechanism_named(release.mechanism)
    bound = mechanism.error_bound(scale, request.confidence)
    value_bounds: list[float] | None = None
    if derivation is not None:
        by_terms = {k: mechanism.sum_error_bound(scale, k, request.confidence) for k in set(terms)}
        value_bounds = [by_terms[k] for k in terms]
        bound = max(value_bounds)
        post.append(f"derived: each value is the exact sum of released values of answer "
                    f"{derivation.source.answer_id} (from {min(terms)} to {max(terms)} values each); "
                    "no budget charged; error bounds are those of sums of independent "
                    f"{mechanism.name.replace('_', ' ')} noises")
    totals = raw_totals = None
    if request.consistent:
        raw = np.asarray(release.values, dtype=np.int64)
        table = make_consistent(fields, keys, raw)
        values = table.cells.reshape(-1)
        counts = values.tolist()
        totals = table_totals(fields, keys, values)
        raw_totals = table_totals(fields, keys, raw)
        raw_totals["error_bound_95"] = _total_bounds(fields, keys, terms or [1] * len(raw), scale,
                                                     request.confidence, mechanism)
        post.append("consistent: non-negative integers whose row, column and grand totals agree exactly; "
                    "totals are the sums of the raw noisy values (unbiased) wherever those are >= 0; cells are "
                    "the least-squares fit under those totals, rounded up or down (see dpflows.postprocess); "
                    "sum raw_values for unbiased custom totals"
                    + ("" if table.converged else "; the least-squares fit did not fully converge"))
    elif request.clamp_negative:
        counts = np.maximum(np.asarray(release.values, dtype=np.int64), 0).tolist()
        post.append("clamp_negative: negative noisy counts set to 0 (biases sums upward)")
    loss = release.loss
    meta = data.metadata
    approx = approx_dp(accounting(meta.accounting), loss, meta)
    return AnswerContent(
        key_fields=fields,
        keys={f: keys[f] for f in fields},
        counts=counts,
        loss_of_release=loss,
        loss_from_max_error=release.loss_from_max_error,
        privacy_unit=meta.privacy_unit,
        mechanism=mechanism.name,
        noise_scale=scale,
        sensitivity=mechanism.parse_sensitivity(release.sensitivity),
        error_bound_95=bound,
        postprocessing=post,
        release_windows=tuple(release.windows),
        raw_values=release.values if (request.consistent or request.clamp_negative) else None,
        totals=totals,
        raw_totals=raw_totals,
        derived_from=None if derivation is None else derivation.source.answer_id,
        value_error_bounds=value_bounds,
        value_terms=terms or None,
        count_unit=query_sensitivity(spec, data).count_unit,
        uncovered_days=[d.isoformat() for d in uncovered_days(spec, data)] or None,
        delta=None if approx is None else approx["delta"],
        approx_epsilon=None if approx is None else approx["epsilon"],
    )


def _total_bounds(fields: tuple[str, ...], keys: dict[str, list[Any]], terms: list[int], scale: float,
                  confidence: float, mechanism: NoiseMechanism) -> dict[str, Any]:
    """Bounds of raw totals: a total over values summing k noises in all has sum_error_bound(k)."""
    k = table_totals(fields, keys, np.asarray(terms, dtype=np.int64))
    cache: dict[int, float] = {}

    def bound(n: int) -> float:
        if n not in cache:
            cache[n] = mechanism.sum_error_bound(scale, n, confidence)
        return cache[n]

    return {name: ({label: bound(n) for label, n in part.items()} if isinstance(part, dict) else bound(part))
            for name, part in k.items()}
