"""What crosses the service's boundary: a query request, a window's budget status, an answer."""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dpflows.accounting import accounting
from dpflows.budget import Epsilon, PrivacyLoss, Rho
from dpflows.errors import InvalidInput
from dpflows.ledger import WindowBudget
from dpflows.mechanisms import DEFAULT_CONFIDENCE
from dpflows.queries import QuerySpec


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
    #: Opt in to a free answer summed from a finer released answer (dpflows.derived_answers). Off by
    #: default: a derived value sums several noisy values, so its error can be far larger than a
    #: fresh release at the requested ε, and its error bound differs per value.
    derive: bool = False
    #: The case an analyst's query serves: audited, readable by role oversight only, never part of the reuse key.
    case_ref: str | None = None

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
    #: what this client may still spend here, in the dataset's measure: its cap and its group's allocation
    #: (converted back from the population's measure where they differ: WindowBudget.remaining_in)
    remaining: PrivacyLoss = field(default_factory=PrivacyLoss.zero)


@dataclass(frozen=True)
class AnswerContent:
    """What an answer says, the same for every client who reads it with the same options: the values
    as columns in key order (never one dict per key: renderers write them from these), how they were
    released, their error bounds and post-processing. Reused answers are rendered from this once and
    then served as cached bytes (api/body_cache.py)."""

    key_fields: tuple[str, ...]
    #: one column per key field, in key order
    keys: dict[str, list[Any]]
    #: the released values in key order, post-processed as asked
    counts: list[int]
    loss_of_release: PrivacyLoss  # the ε or ρ the stored answer was released at
    loss_from_max_error: bool  # the loss was derived from max_error
    privacy_unit: str
    mechanism: str
    noise_scale: float
    sensitivity: float  # ℓ1 (Laplace) or ℓ2 (Gaussian)
    error_bound_95: float
    postprocessing: list[str]
    #: the windows the stored release touched (its budgets are this client's in these)
    release_windows: tuple[int, ...]
    #: The unbiased noisy values in key order, when `counts` were post-processed (clamped or
    #: made consistent): sum these, not the post-processed counts, to avoid clamping bias.
    raw_values: list[int] | None = None
    #: With consistent=True: row, column and grand totals of `counts` (they agree exactly).
    totals: dict[str, Any] | None = None
    #: With consistent=True: the same totals summed from the raw values (unbiased), with the
    #: 95% bound of each kind of total (a sum of k independent noises, mechanisms.sum_error_bound).
    raw_totals: dict[str, Any] | None = None
    #: The id of the released answer this one was summed from at no cost (dpflows.derived_answers).
    derived_from: str | None = None
    #: Per-value error bounds when they differ between values (derived answers).
    value_error_bounds: list[float] | None = None
    #: How many independent noise draws each value sums (derived answers; 1 otherwise).
    value_terms: list[int] | None = None
    #: What each count counts: "trips", "people" (each key one day-hour, or one window of homes), "person-hours"
    count_unit: str = "trips"
    #: Days asked that the dataset is declared not to hold: they count nothing (coverage is declared, not measured)
    uncovered_days: list[str] | None = None
    #: zCDP datasets: the δ at which ε is shown, and the ε this release's ρ implies at it.
    delta: float | None = None
    approx_epsilon: float | None = None

    def rows(self) -> list[dict[str, Any]]:
        """One {key fields..., count} dict per key, for callers that want rows (never the renderers)."""
        names = (*self.key_fields, "count")
        columns = [self.keys[f] for f in self.key_fields]
        return [dict(zip(names, row, strict=True)) for row in zip(*columns, self.counts, strict=True)]


@dataclass(frozen=True)
class Answer:
    """A released answer with everything a client needs to use it honestly (rule 6).

    Two parts: what this request got (charged, this client's windows and budgets, reused) and
    `content`, what the answer says to anyone with the same options. A reused answer's content is
    loaded from the ledger only when something reads it: a renderer serving cached bytes never does.
    """

    answer_id: str
    spec: QuerySpec
    charged: PrivacyLoss  # ε or ρ (by the dataset's accounting) in each window below; zero when reused
    windows: list[WindowStatus]
    confidence: float
    reused: bool
    released_at: str
    accounting: str
    #: the content, or what loads it (a reused answer read from the ledger on first use)
    source: AnswerContent | Callable[[], AnswerContent] = field(repr=False, compare=False)
    #: What identifies this answer's rendered bodies: the sharing group it was served in (a body
    #: never crosses groups), the answer, the query and its options; None: never cached (derived).
    body_key: tuple[Any, ...] | None = None

    @functools.cached_property
    def content(self) -> AnswerContent:
        return self.source if isinstance(self.source, AnswerContent) else self.source()

    @property
    def budget_remaining(self) -> PrivacyLoss:
        """The least this client can still spend in any window this answer touched."""
        unit = accounting(self.accounting).loss_type
        return unit(min((w.remaining.nanos for w in self.windows), default=0))

    # What the content says, read through the answer (the library's and the tests' view of it).
    @property
    def key_fields(self) -> tuple[str, ...]:
        return self.content.key_fields

    @property
    def values(self) -> list[dict[str, Any]]:
        """One dict per key (built on each call: renderers use `content.keys` and `content.counts`)."""
        return self.content.rows()

    @property
    def loss_of_release(self) -> PrivacyLoss:
        return self.content.loss_of_release

    @property
    def loss_from_max_error(self) -> bool:
        return self.content.loss_from_max_error

    @property
    def privacy_unit(self) -> str:
        return self.content.privacy_unit

    @property
    def mechanism(self) -> str:
        return self.content.mechanism

    @property
    def noise_scale(self) -> float:
        return self.content.noise_scale

    @property
    def sensitivity(self) -> float:
        return self.content.sensitivity

    @property
    def error_bound_95(self) -> float:
        return self.content.error_bound_95

    @property
    def postprocessing(self) -> list[str]:
        return self.content.postprocessing

    @property
    def raw_values(self) -> list[int] | None:
        return self.content.raw_values

    @property
    def totals(self) -> dict[str, Any] | None:
        return self.content.totals

    @property
    def raw_totals(self) -> dict[str, Any] | None:
        return self.content.raw_totals

    @property
    def derived_from(self) -> str | None:
        return self.content.derived_from

    @property
    def value_error_bounds(self) -> list[float] | None:
        return self.content.value_error_bounds

    @property
    def value_terms(self) -> list[int] | None:
        return self.content.value_terms

    @property
    def count_unit(self) -> str:
        return self.content.count_unit

    @property
    def uncovered_days(self) -> list[str] | None:
        return self.content.uncovered_days

    @property
    def delta(self) -> float | None:
        return self.content.delta

    @property
    def approx_epsilon(self) -> float | None:
        return self.content.approx_epsilon


@dataclass(frozen=True)
class Quote:
    """What a query would cost and how accurate it would be; nothing charged, nothing released."""

    loss: PrivacyLoss  # ε or ρ, in the dataset's measure
    loss_from_max_error: bool
    confidence: float
    windows: list[WindowStatus]
    privacy_unit: str
    mechanism: str
    accounting: str
    error_bound_95: float
    reused: bool
    charged: PrivacyLoss  # per window; zero when reused or derived
    noise_scale: float
    sensitivity: float
    derived_from: str | None = None
    count_unit: str = "trips"
