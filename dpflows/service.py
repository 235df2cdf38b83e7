"""The service: answer(query, client) and the admin tasks, over a store and a ledger.

A query is answered in this order (design §4): authorize and validate → price (ε, or ε
derived from a target error) → reuse a stored answer if the identical query was released →
if the client opted in (``derive=True``), sum a finer released answer at no cost
(dpflows.derive) → compute the noisy answer in memory → in one ledger transaction check
every cap, charge every window, store the answer and audit → respond. Any failure before the commit releases nothing
and charges nothing; every outcome, failures included, is audited without values.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import hmac
import logging
import os
import secrets
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dpflows.accounting import Accounting, RoleCaps, accounting
from dpflows.aggregates import AggregateStore, Dataset, DatasetMetadata
from dpflows.budget import MAX_EPSILON_NANOS, PURE_DP, Epsilon, PrivacyLoss, Rho
from dpflows.cells import CELL_ZONING, Zoning, parse_zoning_csv
from dpflows.contribution_report import ReportCharge, report_document
from dpflows.derive import Derivation, best_derivation, release_loss
from dpflows.errors import (
    AuthenticationFailed,
    BudgetExceeded,
    Conflict,
    DataUnavailable,
    DpflowsError,
    InvalidInput,
    NotFound,
    PolicyViolation,
)
from dpflows.ledger import AuditEntry, Client, DatasetGrid, Ledger, ReleaseRequest, StoredAnswer, WindowBudget
from dpflows.ledger._sql import check_grid_matches
from dpflows.mechanisms import (
    DEFAULT_CONFIDENCE,
    NoiseMechanism,
    NoisyRelease,
    mechanism_named,
)
from dpflows.postprocess import make_consistent, table_totals
from dpflows.queries import QuerySpec, prepare, touched_windows
from dpflows.relative import RelativeChange, baseline_spec, per_window_need, relative_change_from

log = logging.getLogger("dpflows.service")

KEY_PREFIX = "dpf_"
#: The reserved principal that pays for bounding reports (no key, no allowance of its own).
SYSTEM_CLIENT = "system:ingest"
REPORT_ACTION = "ingest.bounding_report"


@dataclass(frozen=True)
class Policy:
    """Per-role rules (design §5). Analysts: zone-to-zone flows on coarse zonings, a lower cap per query.

    Per-query caps on zCDP datasets default to ε²/2 of the ε caps: an ε-DP release is
    (ε²/2)-zCDP (Bun and Steinke 2016), so one query may cost as much either way.
    """

    planner_max_epsilon: Epsilon = field(default_factory=lambda: Epsilon.parse("1"))
    analyst_max_epsilon: Epsilon = field(default_factory=lambda: Epsilon.parse("0.25"))
    planner_max_rho: Rho = field(default_factory=lambda: Rho.parse("0.5"))
    analyst_max_rho: Rho = field(default_factory=lambda: Rho.parse("0.03125"))

    def max_epsilon(self, role: str) -> Epsilon:
        return self.analyst_max_epsilon if role == "analyst" else self.planner_max_epsilon

    def caps(self, unit: str) -> RoleCaps:
        """The per-query caps of every role in one measure ("epsilon" or "rho")."""
        by_unit = {"epsilon": RoleCaps(self.planner_max_epsilon, self.analyst_max_epsilon),
                   "rho": RoleCaps(self.planner_max_rho, self.analyst_max_rho)}
        return by_unit[unit]

    def max_loss(self, role: str, accounting_name: str) -> PrivacyLoss:
        """The per-query cap for this role, in the dataset's measure."""
        return self.caps(accounting(accounting_name).unit).for_role(role)

    def authorize(self, client: Client, spec: QuerySpec, zoning: Zoning) -> None:
        """Raise PolicyViolation naming the rule a query breaks for this client's role."""
        if client.role == "admin":
            raise PolicyViolation("role admin queries no data; use a planner or analyst key", field="role")
        if client.role == "analyst":
            if spec.kind != "flows":
                raise PolicyViolation(
                    f"role analyst may query flows only, not {spec.kind}; ask a planner", field="kind"
                )
            if spec.zoning == CELL_ZONING or not zoning.coarse:
                raise PolicyViolation(
                    f"role analyst may query coarse zonings only; zoning={spec.zoning!r} is not coarse",
                    field="zoning",
                )

    def check_loss(self, client: Client, loss: PrivacyLoss, accounting_name: str, *,
                   derived_from: float | None) -> None:
        cap = self.max_loss(client.role, accounting_name)
        if loss > cap:
            if derived_from is not None:
                raise PolicyViolation(
                    f"max_error={derived_from:g} needs {loss.unit}={loss}, above the per-query cap of {cap} for "
                    f"role {client.role}; ask for a larger max_error",
                    field="max_error",
                )
            raise PolicyViolation(
                f"{loss.unit}={loss} exceeds the per-query cap of {cap} for role {client.role}; "
                f"send a smaller {loss.unit}",
                field=loss.unit,
            )


@dataclass(frozen=True)
class QueryRequest:
    """A query spec and how to pay for it: an ε (pure-DP datasets), a ρ (zCDP datasets), or a target error."""

    spec: QuerySpec
    epsilon: Epsilon | None = None
    max_error: float | None = None
    rho: Rho | None = None
    confidence: float = DEFAULT_CONFIDENCE
    clamp_negative: bool = False
    #: Post-process to non-negative integers whose totals add up (dpflows.postprocess); free.
    consistent: bool = False
    #: Opt in to a free answer summed from a finer released answer (dpflows.derive). Off by
    #: default: a derived value sums several noisy values, so its error can be far larger than a
    #: fresh release at the requested ε, and its error bound differs per value.
    derive: bool = False

    def __post_init__(self) -> None:
        if sum(x is not None for x in (self.epsilon, self.rho, self.max_error)) != 1:
            raise InvalidInput(
                "send exactly one of epsilon (pure-DP datasets), rho (zCDP datasets) or max_error "
                "(95% absolute error per value)", field="epsilon"
            )


@dataclass(frozen=True)
class WindowStatus:
    window: int
    start: dt.date
    end: dt.date
    budget: WindowBudget
    #: zCDP datasets: this client's spent ρ shown as (ε, δ) (OpenDP's conversion), for display.
    spent_approx_dp: dict[str, float] | None = None


@dataclass(frozen=True)
class Answer:
    """A released answer with everything a client needs to use it honestly (rule 6)."""

    answer_id: str
    spec: QuerySpec
    key_fields: tuple[str, ...]
    values: list[dict[str, Any]]
    charged: PrivacyLoss  # ε or ρ (by the dataset's accounting) in each window below; zero when reused
    loss_of_release: PrivacyLoss  # the ε or ρ the stored answer was released at
    loss_from_max_error: bool  # the loss was derived from max_error
    windows: list[WindowStatus]
    privacy_unit: str
    mechanism: str
    noise_scale: float
    sensitivity: float  # ℓ1 (Laplace) or ℓ2 (Gaussian)
    error_bound_95: float
    confidence: float
    reused: bool
    postprocessing: list[str]
    released_at: str
    #: The unbiased noisy values in key order, when `values` were post-processed (clamped or
    #: made consistent): sum these, not the post-processed counts, to avoid clamping bias.
    raw_values: list[int] | None = None
    #: With consistent=True: row, column and grand totals of `values` (they agree exactly).
    totals: dict[str, Any] | None = None
    #: With consistent=True: the same totals summed from the raw values (unbiased), with the
    #: 95% bound of each kind of total (a sum of k independent noises, mechanisms.sum_error_bound).
    raw_totals: dict[str, Any] | None = None
    #: The id of the released answer this one was summed from at no cost (dpflows.derive).
    derived_from: str | None = None
    #: Per-value error bounds when they differ between values (derived answers).
    value_error_bounds: list[float] | None = None
    #: How many independent noise draws each value sums (derived answers; 1 otherwise).
    value_terms: list[int] | None = None
    accounting: str = PURE_DP
    #: zCDP datasets: the δ at which ε is shown, and the ε this release's ρ implies at it.
    delta: float | None = None
    approx_epsilon: float | None = None

    @property
    def budget_remaining(self) -> PrivacyLoss:
        """The least this client can still spend in any window this answer touched."""
        unit = accounting(self.accounting).loss_type
        return unit(min((w.budget.remaining.nanos for w in self.windows), default=0))


def hash_key(api_key: str) -> str:
    """Keys have ≥ 256 random bits, so a plain SHA-256 is a safe, fast one-way store."""
    return hashlib.sha256(api_key.encode()).hexdigest()


def dataset_grid(data: Dataset) -> DatasetGrid:
    """What the ledger records of a dataset so that its window indices keep their meaning."""
    meta = data.metadata
    return DatasetGrid(meta.name, meta.first_day.isoformat(), meta.window_days, accounting(meta.accounting).unit)


class Service:
    """The library's front door: the API calls these methods and nothing below them."""

    def __init__(self, store: AggregateStore, ledger: Ledger, policy: Policy | None = None) -> None:
        self.store = store
        self.ledger = ledger
        self.policy = policy or Policy()
        self._reports_paid: set[str] = set()  # report-charge keys known to be in the ledger
        self._grids_checked: set[str] = set()  # dataset versions whose grid matches the ledger's record

    # -- authentication ---------------------------------------------------------------------

    def authenticate(self, api_key: str | None) -> Client:
        """The client holding this key; one message for missing, unknown and revoked keys."""
        if not api_key:
            raise AuthenticationFailed("missing API key; send 'Authorization: Bearer <key>'")
        digest = hash_key(api_key)
        client = self.ledger.client_for_key_hash(digest)
        # The lookup is by SHA-256 digest, so its timing says nothing about how much of a key
        # was right; compare_digest keeps the final check constant-time as well.
        expected = digest if client is not None else "0" * 64
        if client is None or not hmac.compare_digest(digest, expected):
            raise AuthenticationFailed("unknown or revoked API key; ask an admin for a valid key")
        return client

    def issue_key(self, client_id: int) -> str:
        """A new random key for a client: shown once, stored only as its hash."""
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        self.ledger.add_key(client_id, hash_key(key), key[: len(KEY_PREFIX) + 6])
        return key

    # -- queries ----------------------------------------------------------------------------

    def dataset(self, name: str) -> Dataset:
        """A loaded dataset whose window grid and measure agree with what the ledger recorded for it.

        Spending is kept per window index: a dataset re-ingested on another grid or in another
        measure would read old spending against other weeks or another unit, so it is refused
        here (reads) and again inside every charge's transaction (`ReleaseRequest.grid`).
        """
        data = self.store.get(name)
        if data.version not in self._grids_checked:
            recorded = self.ledger.dataset_grid(name)
            if recorded is not None:
                check_grid_matches(recorded, dataset_grid(data))
                self._grids_checked.add(data.version)
        return data

    def _price(self, client: Client, request: QueryRequest, data: Dataset) -> PrivacyLoss:
        """The ε (pure-DP dataset) or ρ (zCDP dataset) this query costs, checked against the role's cap."""
        meta = data.metadata
        acc = accounting(meta.accounting)
        loss = acc.loss_of(epsilon=request.epsilon, rho=request.rho, dataset=meta.name)
        if loss is None:
            assert request.max_error is not None
            loss = acc.loss_for_error(acc.sensitivity(request.spec, data), request.max_error, request.confidence)
        self.policy.check_loss(client, loss, acc.name, derived_from=request.max_error)
        return loss

    def _query_key(self, spec: QuerySpec, data: Dataset, loss: PrivacyLoss) -> str:
        """Reuse key: the normalized query, the dataset's ingestion, the mechanism and its ε or ρ."""
        mechanism = accounting(data.metadata.accounting).mechanism.name
        text = f"{spec.key()}|{data.version}|{mechanism}|{loss.nanos}"
        return hashlib.sha256(text.encode()).hexdigest()

    def _release(self, spec: QuerySpec, data: Dataset, true_counts: np.ndarray, loss: PrivacyLoss) -> NoisyRelease:
        acc = accounting(data.metadata.accounting)
        return acc.release(true_counts, acc.sensitivity(spec, data), loss)

    def answer(self, request: QueryRequest, client: Client) -> Answer:
        """Authorize, price, reuse or release, charge atomically, and describe the answer."""
        spec = request.spec
        audit_query = spec.canonical()
        try:
            data = self.dataset(spec.dataset)
            self.charge_bounding_report(data)
            self.policy.authorize(client, spec, data.zoning(spec.zoning))
            epsilon = self._price(client, request, data)
            audit_query[epsilon.unit] = epsilon.to_json()
            query_key = self._query_key(spec, data, epsilon)
            stored = self.ledger.find_answer(spec.dataset, query_key)
            if stored is not None:
                self.ledger.append_audit(AuditEntry(action=f"query.{spec.kind}", outcome="reused", client_id=client.id,
                                                    dataset=spec.dataset, query=audit_query,
                                                    answer_id=stored.answer_id))
                return self._describe(stored, spec, client, data, request, reused=True)
            if request.derive:
                derivation = self._derivation(spec, data, client, request)
                if derivation is not None:
                    self.ledger.append_audit(AuditEntry(action=f"query.{spec.kind}", outcome="derived",
                                                        client_id=client.id, dataset=spec.dataset,
                                                        query=audit_query, answer_id=derivation.source.answer_id))
                    return self._describe(derivation.source, spec, client, data, request, reused=False,
                                          derivation=derivation)
            prepared = prepare(spec, data)
            noisy = self._release(spec, data, prepared.true_counts, epsilon)
            answer_id = uuid.uuid4().hex
            payload = {
                "values": [int(v) for v in noisy.values],
                "key_fields": list(prepared.domain.fields),
                "keys": {f: prepared.domain.columns[f] for f in prepared.domain.fields},
                "windows": list(prepared.windows),
                f"{epsilon.unit}_nanos": epsilon.nanos,  # epsilon_nanos or rho_nanos
                "epsilon_derived": request.max_error is not None,
                "mechanism": noisy.mechanism,
                "scale": noisy.scale,
                "sensitivity": noisy.sensitivity,
                "query": spec.canonical(),
                "data_version": data.version,  # lets a later coarser query be derived from it
            }
            receipt = self.ledger.commit_release(ReleaseRequest(
                client_id=client.id, dataset=spec.dataset, query_key=query_key, windows=prepared.windows,
                epsilon=epsilon, answer_id=answer_id, payload=payload, grid=dataset_grid(data),
                audit=AuditEntry(action=f"query.{spec.kind}", outcome="released", client_id=client.id,
                                 dataset=spec.dataset, query=audit_query, epsilon=epsilon, answer_id=answer_id),
            ))
        except DpflowsError as exc:
            self._audit_failure(f"query.{spec.kind}", exc, client, spec.dataset, audit_query)
            raise
        return self._describe(receipt.answer, spec, client, data, request, reused=receipt.reused)

    def _audit_failure(self, action: str, exc: DpflowsError, client: Client | None, dataset: str | None,
                       query: dict[str, Any] | None) -> None:
        try:
            self.ledger.append_audit(AuditEntry(action=action, outcome=exc.code,
                                                client_id=None if client is None else client.id,
                                                dataset=dataset, query=query))
        except DpflowsError:
            log.error("audit row for a failed %s could not be written: ledger unavailable", action)

    def _window_status(self, data: Dataset, client: Client, windows: list[int]) -> list[WindowStatus]:
        meta = data.metadata
        acc = accounting(meta.accounting)
        budgets = self.ledger.window_budgets(meta.name, client.id, windows)
        return [
            WindowStatus(b.window, meta.window_start(b.window),
                         min(meta.window_start(b.window + 1), meta.end_day), b, _approx_dp(acc, b.client_spent, meta))
            for b in budgets
        ]

    def _derivation(self, spec: QuerySpec, data: Dataset, client: Client, request: QueryRequest) -> Derivation | None:
        """The most accurate free derivation of `spec` from this dataset's released answers."""
        return best_derivation(spec, data, self.ledger.list_answers(spec.dataset, spec.kind),
                               max_loss=self.policy.max_loss(client.role, data.metadata.accounting),
                               confidence=request.confidence, max_error=request.max_error)

    def _describe(self, stored: StoredAnswer, spec: QuerySpec, client: Client, data: Dataset,
                  request: QueryRequest, *, reused: bool, derivation: Derivation | None = None) -> Answer:
        p = stored.payload if derivation is None else derivation.payload
        raw = np.asarray(p["values"], dtype=np.int64)
        values = raw
        post: list[str] = []
        keys = p["keys"]
        fields = tuple(p["key_fields"])
        scale = float(p["scale"])
        terms = [int(k) for k in p.get("terms") or []]
        mechanism = mechanism_named(str(p["mechanism"]))
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
            table = make_consistent(fields, keys, raw)
            values = table.cells.reshape(-1)
            totals = table_totals(fields, keys, values)
            raw_totals = table_totals(fields, keys, raw)
            raw_totals["error_bound_95"] = self._total_bounds(fields, keys, terms or [1] * len(raw), scale,
                                                               request.confidence, mechanism)
            post.append("consistent: non-negative integers whose row, column and grand totals agree exactly; "
                        "totals are the sums of the raw noisy values (unbiased) wherever those are >= 0; cells are "
                        "the least-squares fit under those totals, rounded up or down (see dpflows.postprocess); "
                        "sum raw_values for unbiased custom totals"
                        + ("" if table.converged else "; the least-squares fit did not fully converge"))
        elif request.clamp_negative:
            values = np.maximum(raw, 0)
            post.append("clamp_negative: negative noisy counts set to 0 (biases sums upward)")
        rows = _value_rows(fields, [keys[f] for f in fields], values.tolist())
        epsilon = release_loss(p)
        meta = data.metadata
        approx = _approx_dp(accounting(meta.accounting), epsilon, meta)
        return Answer(
            answer_id=stored.answer_id if derivation is None else derivation.answer_id,
            spec=spec,
            key_fields=fields,
            values=rows,
            charged=type(epsilon).zero() if reused or derivation is not None else epsilon,
            loss_of_release=epsilon,
            loss_from_max_error=bool(p.get("epsilon_derived")),
            windows=self._window_status(data, client, list(p["windows"])),
            privacy_unit=data.metadata.privacy_unit,
            mechanism=p["mechanism"],
            noise_scale=scale,
            sensitivity=mechanism.parse_sensitivity(p["sensitivity"]),
            error_bound_95=bound,
            confidence=request.confidence,
            reused=reused,
            postprocessing=post,
            released_at=stored.created_at,
            raw_values=[int(v) for v in raw] if (request.consistent or request.clamp_negative) else None,
            totals=totals,
            raw_totals=raw_totals,
            derived_from=None if derivation is None else derivation.source.answer_id,
            value_error_bounds=value_bounds,
            value_terms=terms or None,
            accounting=meta.accounting,
            delta=None if approx is None else approx["delta"],
            approx_epsilon=None if approx is None else approx["epsilon"],
        )

    @staticmethod
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

    def quote(self, request: QueryRequest, client: Client) -> dict[str, Any]:
        """What a query would cost and how accurate it would be, without touching data or this client's budget.

        Keys "epsilon" and "epsilon_charged" hold the dataset's measure: ε, or ρ on zCDP datasets.
        A dataset's pending bounding report is charged first (to the system principal, against
        the global cap), exactly as the query would: so the windows' remaining figures are those
        the query will meet, and a quote is refused (409) whenever the query would be.
        """
        spec = request.spec
        data = self.dataset(spec.dataset)
        self.charge_bounding_report(data)
        self.policy.authorize(client, spec, data.zoning(spec.zoning))
        epsilon = self._price(client, request, data)
        windows = list(touched_windows(spec, data))
        acc = accounting(data.metadata.accounting)
        mechanism = acc.mechanism.name
        sensitivity = acc.sensitivity(spec, data)
        scale = acc.scale(sensitivity, epsilon)
        stored = self.ledger.find_answer(spec.dataset, self._query_key(spec, data, epsilon))
        derivation = None
        if stored is None and request.derive:
            derivation = self._derivation(spec, data, client, request)
        common = {
            "epsilon": epsilon,
            "epsilon_derived": request.max_error is not None,
            "confidence": request.confidence,
            "windows": self._window_status(data, client, windows),
            "privacy_unit": data.metadata.privacy_unit,
            "mechanism": mechanism,
            "accounting": data.metadata.accounting,
        }
        if derivation is not None:
            return {**common, "error_bound_95": derivation.max_error_bound, "reused": False,
                    "derived_from": derivation.source.answer_id, "epsilon_charged": type(epsilon).zero(),
                    "noise_scale": float(derivation.payload["scale"]),
                    "sensitivity": derivation.payload["sensitivity"]}
        return {**common, "error_bound_95": acc.mechanism.error_bound(scale, request.confidence),
                "reused": stored is not None,
                "epsilon_charged": type(epsilon).zero() if stored is not None else epsilon,
                "noise_scale": scale, "sensitivity": sensitivity}

    def relative_change(self, request: QueryRequest, baseline_start: dt.date, baseline_end: dt.date,
                        client: Client) -> RelativeChange:
        """% change in presence per zone versus the same weekdays and hours in a baseline period.

        Two presence answers, each charged, reused or derived exactly as `answer` would; their
        combined cost is checked against every window's remaining budget first, so a refusal
        charges nothing. (Between that check and the second charge another client can still
        spend; the first answer then stays released and is reused for free next time.)
        """
        self.charge_bounding_report(self.dataset(request.spec.dataset))  # before the combined need is checked
        base_request = dataclasses.replace(request, spec=baseline_spec(request.spec, baseline_start, baseline_end))
        # Quotes authorize and price both, and know which would be reused or derived for free.
        quotes = [self.quote(req, client) for req in (request, base_request)]
        need = per_window_need(quotes)
        unit = type(quotes[0]["epsilon"])
        for status in quotes[0]["windows"] + quotes[1]["windows"]:
            if need.get(status.window, 0) > status.budget.remaining.nanos:
                exc = BudgetExceeded(
                    f"the current and baseline answers need {unit.unit}={unit(need[status.window])} in window "
                    f"{status.window}, above the remaining {status.budget.remaining}; ask for less",
                    field="epsilon", details={"window": status.window},
                )
                self._audit_failure("query.relative_change", exc, client, request.spec.dataset,
                                    {"current": request.spec.canonical(), "baseline": base_request.spec.canonical()})
                raise exc
        current = self.answer(request, client)
        baseline = self.answer(base_request, client)
        return relative_change_from(current, baseline, request.confidence)

    def readiness(self) -> dict[str, Any]:
        """For a load balancer's readiness probe: the ledger answers and the data root can be read.

        Raises Unavailable (ledger) or DataUnavailable (data root); the message names no path.
        """
        self.ledger.list_clients()
        root = self.store.root
        if not root.is_dir() or not os.access(root, os.R_OK | os.X_OK):
            raise DataUnavailable("the data root is not a readable directory; check DPFLOWS_DATA_DIR")
        return {"ledger": "ok", "datasets": len(self.store.names())}

    def budget_status(self, client: Client, dataset: str) -> list[WindowStatus]:
        data = self.dataset(dataset)
        return self._window_status(data, client, list(range(data.metadata.window_count)))

    # -- bounding report (dpflows.contribution_report, dpflows.ingest.report) --------------------

    def charge_bounding_report(self, data: Dataset) -> None:
        """Charge, once, every bounding report an ingestion owes, before anything of it is served.

        Ingestion released the report (noisy) at its ε in every window; here that ε (on a zCDP
        dataset, the ρ OpenDP converts the release to: ε²/2) is charged against the dataset's
        global cap through `commit_release`, by the reserved principal
        SYSTEM_CLIENT, keyed by the ingestion's digest: one charge per ingestion, whichever
        worker or host comes first. Until it succeeds (no global cap yet, or too little left)
        the dataset serves nothing: no answer, no report.
        """
        for charge in data.report_charges:
            if charge.query_key in self._reports_paid:
                continue
            if self.ledger.find_answer(data.metadata.name, charge.query_key) is None:
                self._commit_report_charge(data.metadata.name, charge,
                                           accounting(data.metadata.accounting).report_loss(charge),
                                           dataset_grid(data))
            self._reports_paid.add(charge.query_key)

    def _commit_report_charge(self, dataset: str, charge: ReportCharge, loss: PrivacyLoss,
                              grid: DatasetGrid) -> None:
        """`loss`: the report's ε, or on a zCDP dataset the ρ OpenDP converts that release to."""
        system = self._system_client()
        # No allowance of its own: the global cap, shared with every client, is its only limit.
        self.ledger.set_cap(dataset, type(loss)(MAX_EPSILON_NANOS), client_id=system.id, window=None, grid=grid)
        answer_id = uuid.uuid4().hex
        query = {"kind": "bounding_report", "ingestion": charge.ingestion, "epsilon": charge.epsilon.to_json(),
                 loss.unit: loss.to_json()}
        try:
            self.ledger.commit_release(ReleaseRequest(
                client_id=system.id, dataset=dataset, query_key=charge.query_key,
                windows=tuple(range(charge.windows)), epsilon=loss, answer_id=answer_id, grid=grid,
                payload={"query": query, "loss_nanos": loss.nanos, "unit": loss.unit},
                audit=AuditEntry(action=REPORT_ACTION, outcome="released", client_id=system.id, dataset=dataset,
                                 query=query, epsilon=loss, answer_id=answer_id),
            ))
        except BudgetExceeded as exc:
            self._audit_failure(REPORT_ACTION, exc, system, dataset, query)
            raise BudgetExceeded(
                f"dataset {dataset!r} serves nothing until its bounding report ({loss.unit}={loss} in every "
                f"window) is charged to the global cap, and that failed: {exc.message.split('; ')[0]}; "
                "ask an admin to set or raise the global cap (dpflows admin set-cap --global)",
                field="dataset", details=exc.details,
            ) from exc

    def _system_client(self) -> Client:
        try:
            client = self.ledger.client_by_name(SYSTEM_CLIENT)
        except NotFound:
            try:
                client = self.ledger.create_client(SYSTEM_CLIENT, "admin")
            except Conflict:  # another worker or host created it meanwhile
                client = self.ledger.client_by_name(SYSTEM_CLIENT)
        if self.ledger.list_keys(client.id):
            raise Conflict(f"client {SYSTEM_CLIENT!r} is reserved for bounding-report charges but has API keys; "
                           "revoke them and rename that client", field="name")
        return client

    def bounding_report(self, dataset: str, client: Client) -> dict[str, Any]:
        """How much bounding drops, read from the dataset's noisy bounding report once it is paid for."""
        audit_query: dict[str, Any] = {"kind": "bounding_report"}
        try:
            data = self.dataset(dataset)
            report = data.bounding_report
            if report is None:
                raise NotFound(f"dataset {dataset!r} has no bounding report; re-ingest it with "
                               "--report-epsilon 0.05 (the default) to make one", field="dataset")
            self.charge_bounding_report(data)
        except DpflowsError as exc:
            self._audit_failure("query.bounding_report", exc, client, dataset, audit_query)
            raise
        # Reading a paid release again is free, as a reused answer is.
        self.ledger.append_audit(AuditEntry(action="query.bounding_report", outcome="reused", client_id=client.id,
                                            dataset=dataset, query=audit_query))
        zones = [data.zoning(z).zone_count for z in _zoning_names(data) if z != CELL_ZONING]
        meta = data.metadata
        doc = report_document(report, {"trips": meta.bound_trips, "presence": meta.bound_presence},
                              max(zones, default=None))
        # this ingestion's own report is the last
        charged = accounting(meta.accounting).report_loss(data.report_charges[-1])
        return {"dataset": dataset, "privacy_unit": meta.privacy_unit, "charged": charged,
                "charged_unit": charged.unit, **doc}

    # -- admin ------------------------------------------------------------------------------

    def _audit_admin(self, admin: Client | None, action: str, **details: Any) -> None:
        self.ledger.append_audit(AuditEntry(action=action, outcome="ok",
                                            client_id=None if admin is None else admin.id,
                                            dataset=details.pop("dataset", None), query=details or None))

    def create_client(self, name: str, role: str, *, by: Client | None = None) -> tuple[Client, str]:
        """Register a client and issue its first key (returned once, never stored)."""
        if name.startswith("system:"):
            raise InvalidInput(f"name={name!r} is reserved (names starting with 'system:' are dpflows' own); "
                               "choose another name", field="name")
        client = self.ledger.create_client(name, role)
        key = self.issue_key(client.id)
        self._audit_admin(by, "admin.create_client", client=name, role=role)
        return client, key

    def rotate_key(self, client_id: int, *, by: Client | None = None) -> str:
        key = self.issue_key(client_id)
        self._audit_admin(by, "admin.issue_key", client_id=client_id)
        return key

    def revoke_key(self, key_id: int, *, by: Client | None = None) -> None:
        self.ledger.revoke_key(key_id)
        self._audit_admin(by, "admin.revoke_key", key_id=key_id)

    def set_cap(self, dataset: str, cap: PrivacyLoss, *, client_id: int | None, window: int | None,
                by: Client | None = None) -> None:
        """A per-client cap (client_id) or the global cap (None), for one window or every window.

        The cap is in the dataset's measure: ε for pure-DP datasets, ρ for zCDP ones; the other
        is refused, so an ε can never be read as a ρ.
        """
        data = self.dataset(dataset)
        unit = accounting(data.metadata.accounting).loss_type
        if type(cap) is not unit:
            raise InvalidInput(
                f"dataset {dataset!r} is accounted in {unit.unit}; set its caps as {unit.unit}, not {cap.unit}",
                field=cap.unit,
            )
        if window is not None and not 0 <= window < data.metadata.window_count:
            raise InvalidInput(
                f"window={window} is not a window of dataset {dataset!r}; use 0..{data.metadata.window_count - 1} "
                "or omit it for every window",
                field="window",
            )
        self.ledger.set_cap(dataset, cap, client_id=client_id, window=window, grid=dataset_grid(data))
        self._audit_admin(by, "admin.set_cap", dataset=dataset, client_id=client_id, window=window,
                          cap=cap.to_json(), unit=cap.unit)

    def add_zoning(self, dataset: str, name: str, csv_text: str, *, coarse: bool = False,
                   min_cells_per_zone: int = 1, geometry: dict[str, Any] | None = None,
                   by: Client | None = None) -> Zoning:
        """Load a public zoning (cell_id,zone_id CSV); a name is never reused for different zones."""
        from dpflows.errors import Conflict

        data = self.dataset(dataset)
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
        self._audit_admin(by, "admin.add_zoning", dataset=dataset, zoning=name, coarse=coarse)
        return zoning


def _value_rows(fields: tuple[str, ...], columns: list[list[Any]], counts: list[int]) -> list[dict[str, Any]]:
    """One {key fields..., count} object per key; the two-field case (every query kind) is a dict
    literal, about 4× faster than dict(zip()) on 10,000-key answers (benchmarks/bench_api.py)."""
    if len(fields) == 2:
        first, second = fields
        return [{first: a, second: b, "count": c} for a, b, c in zip(columns[0], columns[1], counts, strict=True)]
    names = (*fields, "count")
    return [dict(zip(names, row, strict=True)) for row in zip(*columns, counts, strict=True)]


def _zone_centroids(data: Dataset, zoning: Zoning) -> list[tuple[float, float]]:
    counts = np.bincount(zoning.zone_of_cell, minlength=zoning.zone_count)
    lat = np.bincount(zoning.zone_of_cell, weights=data.catalog.lat, minlength=zoning.zone_count)
    lon = np.bincount(zoning.zone_of_cell, weights=data.catalog.lon, minlength=zoning.zone_count)
    return [(float(a / n), float(o / n)) if n else (0.0, 0.0) for a, o, n in zip(lat, lon, counts, strict=True)]


def _approx_dp(acc: Accounting, loss: PrivacyLoss, meta: DatasetMetadata) -> dict[str, float] | None:
    """The (ε, δ) a loss implies, for display, where the accounting is not already in ε."""
    epsilon = acc.approx_dp(loss, meta.delta)
    return None if epsilon is None else {"epsilon": epsilon, "delta": meta.delta}


class Catalog:
    """Public facts about datasets and zonings, for any authenticated client."""

    def __init__(self, store: AggregateStore) -> None:
        self.store = store

    def datasets(self) -> list[dict[str, Any]]:
        out = []
        for name in self.store.names():
            data = self.store.get(name)
            meta = data.metadata
            zonings = [data.zoning(z) for z in sorted(_zoning_names(data))]
            out.append({
                "name": name, "first_day": meta.first_day, "end_day": meta.end_day,
                "window_days": meta.window_days, "windows": meta.window_count,
                "bounds": {"trips": meta.bound_trips, "presence": meta.bound_presence},
                "accounting": meta.accounting_json(),
                "privacy_unit": meta.privacy_unit,
                "zonings": [{"name": z.name, "zones": z.zone_count, "coarse": z.coarse} for z in zonings],
            })
        return out

    def zoning(self, dataset: str, name: str) -> dict[str, Any]:
        data = self.store.get(dataset)
        zoning = data.zoning(name)
        sizes = zoning.cells_per_zone()
        centroids = _zone_centroids(data, zoning)
        return {
            "name": zoning.name, "coarse": zoning.coarse, "min_cells_per_zone": zoning.min_cells_per_zone,
            "zones": [{"zone_id": z, "cells": int(sizes[i]), "centroid": list(centroids[i])}
                      for i, z in enumerate(zoning.zone_ids)],
            "cells": [{"cell_id": c, "lat": float(data.catalog.lat[i]), "lon": float(data.catalog.lon[i]),
                       "zone_id": zoning.zone_ids[zoning.zone_of_cell[i]]}
                      for i, c in enumerate(data.catalog.cell_ids)],
            "geometry": zoning.geometry,
        }


def _zoning_names(data: Dataset) -> set[str]:
    """Zonings loaded here plus any another worker or host saved since this process loaded the dataset."""
    names = set(data.zonings)
    zdir = data.path / "zonings"
    if zdir.is_dir():
        names |= {p.stem for p in zdir.glob("*.json")}
    return names
