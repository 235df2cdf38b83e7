"""The stored release: what the ledger keeps of a released answer, typed, with one owner.

Written once when an answer is released, read when it is reused, described or derived from.
Its JSON form is the ledger's ``answers.payload`` column, unchanged since the first release of
dpflows, so existing ledgers read (the loss is stored as ``epsilon_nanos`` or ``rho_nanos``,
named after its measure; an (ε, δ) release adds ``delta_attos``, and a sparse one its ``threshold``
and stores as ``sensitivity`` its (ℓ0, ℓ1, ℓ∞)). Imports neither Polars nor OpenDP.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dpflows.budget import ApproxDP, Epsilon, PrivacyLoss, Rho

_LOSS_TYPES: dict[str, type[PrivacyLoss]] = {"epsilon": Epsilon, "rho": Rho}


@dataclass(frozen=True)
class StoredRelease:
    """One released answer: noisy values in key order, its keys, and how it was released."""

    values: list[int]
    key_fields: list[str]
    keys: dict[str, list[Any]]
    windows: list[int]
    loss: PrivacyLoss  # ε or ρ, in the dataset's measure
    loss_from_max_error: bool
    mechanism: str
    scale: float
    sensitivity: Any  # ℓ1 (an integer) or ℓ2 (a float); a sparse answer's {"l0", "l1", "linf"}
    query: dict[str, Any]
    data_version: str
    #: derived answers: how many released values each value sums
    terms: list[int] = field(default_factory=list)
    #: sparse answers: the noisy count a key had to reach to be released (keys holds only those)
    threshold: int | None = None

    def to_payload(self) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "values": self.values,
            "key_fields": self.key_fields,
            "keys": self.keys,
            "windows": self.windows,
            f"{self.loss.unit}_nanos": self.loss.nanos,  # epsilon_nanos or rho_nanos
            "epsilon_derived": self.loss_from_max_error,
            "mechanism": self.mechanism,
            "scale": self.scale,
            "sensitivity": self.sensitivity,
            "query": self.query,
            "data_version": self.data_version,  # lets a later coarser query be derived from it
        }
        if self.terms:
            payload["terms"] = self.terms
        if isinstance(self.loss, ApproxDP):
            payload["delta_attos"] = self.loss.delta_attos
        if self.threshold is not None:
            payload["threshold"] = self.threshold
        return payload

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> StoredRelease:
        return cls(
            values=[int(v) for v in payload["values"]],
            key_fields=list(payload["key_fields"]),
            keys=payload["keys"],
            windows=[int(w) for w in payload["windows"]],
            loss=release_loss(payload),
            loss_from_max_error=bool(payload.get("epsilon_derived")),
            mechanism=str(payload["mechanism"]),
            scale=float(payload["scale"]),
            sensitivity=payload["sensitivity"],
            query=payload.get("query") or {},
            data_version=str(payload.get("data_version", "")),
            terms=[int(k) for k in payload.get("terms") or []],
            threshold=None if payload.get("threshold") is None else int(payload["threshold"]),
        )


def release_loss(payload: dict[str, Any]) -> PrivacyLoss:
    """The ε, ρ or (ε, δ) a stored payload was released at (the keys name the measure)."""
    if "delta_attos" in payload:
        return ApproxDP(int(payload["epsilon_nanos"]), int(payload["delta_attos"]))
    for unit, loss_type in _LOSS_TYPES.items():
        if f"{unit}_nanos" in payload:
            return loss_type(int(payload[f"{unit}_nanos"]))
    raise KeyError("epsilon_nanos")
