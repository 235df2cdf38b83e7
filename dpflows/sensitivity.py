"""What one person-window can add to an answer, per query kind: the ℓ1 bound, the per-key cap, the unit.

Every figure comes from public facts (the dataset's bounds and window grid, the zoning, the
query's dates, hours and weekdays), never from the data:

- trips (flows, in- and outflows, patterns of trips): ℓ1 = L_trips; a commuter can put all of
  them into one key, so the per-key cap is min(L_trips, C·rows) (`key_contribution_cap`);
- presence and patterns of presence: one place per person-hour makes ℓ1 = min(L_presence, S),
  S the day-hour slots the query covers in one window (`dpflows.slots`);
- residents and commuting: one home and one work cell per person-window, so ℓ1 = 1.

zCDP's ℓ2 follows from ℓ1 and the per-key cap (`mechanisms.l2_sensitivity`). The thresholded
mechanism of sparse answers takes the triple (ℓ0, ℓ1, ℓ∞): ℓ∞ is the per-key cap, and ℓ0, the keys
one person-window touches, is at most ℓ1 (each record lands in one key, each touched key gets at
least one) and at most the domain's size (`Sensitivity.contribution`).
"""

from __future__ import annotations

from dpflows.accounting import Sensitivity
from dpflows.aggregates import PLACE_MEASURES, Dataset
from dpflows.queries import QuerySpec, domain_size
from dpflows.slots import PEOPLE, key_contribution_cap, query_presence_sensitivity

TRIPS = "trips"
__all__ = ["TRIPS", "key_contribution_cap", "query_sensitivity"]


def query_sensitivity(spec: QuerySpec, data: Dataset) -> Sensitivity:
    """The sensitivity the noise of `spec` on `data` is calibrated to."""
    measure = spec.counted_measure
    size = domain_size(spec, data)
    if measure == "presence":
        presence = query_presence_sensitivity(spec, data)
        return Sensitivity(presence.l1, presence.key_cap, presence.count_unit, min(presence.l1, size))
    if measure in PLACE_MEASURES:
        return Sensitivity(1, 1, PEOPLE, 1)
    bound = data.metadata.bound_trips
    return Sensitivity(bound, key_contribution_cap(spec, data), TRIPS, min(bound, size))
