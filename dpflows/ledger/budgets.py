"""Budget figures the ledgers share: a window's caps and spending, allocations, populations and grids.

See dpflows.ledger.base for the model; these are its values and the pure checks every ledger runs
on them (the memory ledger directly, the SQL ledgers on rows they read in the charge's transaction).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from dpflows.budget import PrivacyLoss
from dpflows.errors import Conflict, InvalidInput

GROUP_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
#: The population of every dataset ingested without --population: all datasets of a data root (fail-safe).
DEFAULT_POPULATION = "default"


@dataclass(frozen=True)
class LegacyDatasetCaps:
    """A dataset's own global cap and group allocations from before populations (ledger schema 2), in one
    window and the dataset's measure: they still bind the dataset, exactly as they did (fail closed
    without a global cap), beside its population's caps. Nothing sets new ones."""

    cap: PrivacyLoss | None
    spent: PrivacyLoss
    group_cap: PrivacyLoss | None = None
    group_spent: PrivacyLoss = field(default_factory=PrivacyLoss.zero)
    pool_cap: PrivacyLoss | None = None
    pool_spent: PrivacyLoss = field(default_factory=PrivacyLoss.zero)
    group: str | None = None

    @property
    def holder(self) -> str:
        return self.group if self.group is not None and self.group_cap is not None else ""


@dataclass(frozen=True)
class WindowBudget:
    """One window's caps and spending for one client, its group's allocation, and the shared caps.

    A client is charged against its own cap (per dataset, in the dataset's measure) and, if its sharing
    group has an allocation in this window of the dataset's population, against that allocation (in the
    population's measure, `unit`); a client whose group has none (by default every client, alone) spends
    from the *unallocated pool*: the population's global cap less every allocation. The global cap
    stays as the backstop. Only `client_*` and `group_*` are the client's to see (`remaining`); the
    pool, the global and the population's figures are other groups' and datasets' spending and never
    leave the service (issue 17).
    """

    window: int
    client_cap: PrivacyLoss | None
    client_spent: PrivacyLoss
    #: the population's global cap and spend in `population_window` (population measure)
    global_cap: PrivacyLoss | None
    global_spent: PrivacyLoss
    #: the client's sharing group (None: alone)
    group: str | None = None
    #: its group's allocation in this window (None: none, the client spends from the pool)
    group_cap: PrivacyLoss | None = None
    group_spent: PrivacyLoss = field(default_factory=PrivacyLoss.zero)
    #: the unallocated pool: the global cap less all allocations (None without a global cap)
    pool_cap: PrivacyLoss | None = None
    pool_spent: PrivacyLoss = field(default_factory=PrivacyLoss.zero)
    population: str = DEFAULT_POPULATION
    #: this window's index on the population's grid (the dataset's window plus its offset)
    population_window: int | None = None
    #: the population's measure ("epsilon", "rho"; None: not yet known): the unit of the global and group figures
    unit: str | None = None
    #: the dataset's own caps from before populations, where it has any
    legacy: LegacyDatasetCaps | None = None

    @property
    def allocation_holder(self) -> str:
        """The population_spend row a charge here adds to: the group's allocation, or '' for the pool."""
        return self.group if self.group is not None and self.group_cap is not None else ""

    def group_left(self) -> PrivacyLoss | None:
        """What remains of the group's allocation, in the population's measure (None: no allocation)."""
        if self.group_cap is None:
            return None
        return PrivacyLoss(max(self.group_cap.nanos - self.group_spent.nanos, 0))

    def remaining_in(self, within: Callable[[PrivacyLoss], PrivacyLoss] | None = None) -> PrivacyLoss:
        """What this client may still spend here as far as it can know, in its dataset's measure: its own
        cap and its group's allocations. `within` turns what the group has left (in the population's
        measure) into the largest charge in the dataset's measure whose conversion fits (None: same measure)."""
        if self.client_cap is None or self.global_cap is None:
            return PrivacyLoss.zero()
        left = max(self.client_cap.nanos - self.client_spent.nanos, 0)
        group_left = self.group_left()
        if group_left is not None:
            left = min(left, (within(group_left) if within is not None else group_left).nanos)
        if self.legacy is not None and self.legacy.group_cap is not None:
            left = min(left, max(self.legacy.group_cap.nanos - self.legacy.group_spent.nanos, 0))
        return PrivacyLoss(left)

    @property
    def remaining(self) -> PrivacyLoss:
        """`remaining_in` where the dataset and its population share one measure."""
        return self.remaining_in(None)


@dataclass(frozen=True)
class Allocation:
    """A sharing group's share of a population's global cap, in one population window (None: every window
    without its own)."""

    group: str
    window: int | None
    cap: PrivacyLoss


def effective_allocations(rows: list[tuple[str, int, int]], window: int) -> dict[str, int]:
    """Each group's allocation in `window` from (group, win, nanos) rows: its own window's, else its
    every-window (-1) row."""
    out: dict[str, int] = {}
    for group, win, nanos in sorted(rows, key=lambda r: r[1]):  # -1 first, the window's own row wins
        if win in (window, -1):
            out[group] = int(nanos)
    return out


def check_allocations(population: str, global_caps: dict[int, int], rows: list[tuple[str, int, int]]) -> None:
    """Refuse a configuration whose allocations sum above the global cap in any window.

    `global_caps`: win -> nanos (-1: every window); `rows`: (group, win, nanos) of every allocation
    of the population. Windows without a global cap have nothing to spend and are not checked: setting
    their global cap later is."""
    for window in sorted({-1, *global_caps, *(r[1] for r in rows)}):
        cap = global_caps.get(window, global_caps.get(-1))
        if cap is None:
            continue
        total = sum(effective_allocations(rows, window).values())
        if total > cap:
            where = "every window" if window == -1 else f"window {window}"
            raise InvalidInput(
                f"the group allocations in population {population!r} would sum to {PrivacyLoss(total)} in {where}, "
                f"above its global cap of {PrivacyLoss(cap)}; lower an allocation first or raise the global cap",
                field="group",
            )


@dataclass(frozen=True)
class DatasetGrid:
    """What a dataset's window indices and amounts mean, and whose budget they draw on: fixed for life."""

    dataset: str
    first_day: str  # ISO date: window k covers [first_day + k·window_days, + window_days)
    window_days: int
    measure: str  # the unit of its client caps and charges: "epsilon" or "rho"
    #: the population it is drawn from (whose global cap, allocations and horizon cap it spends)
    population: str = DEFAULT_POPULATION
    #: the population's measure, proposed for a population this dataset is the first to register in
    #: (None: the dataset's own measure); the ledger's record wins after that. Not part of equality.
    population_measure: str | None = field(default=None, compare=False)

    def describe(self) -> str:
        return f"windows of {self.window_days} days from {self.first_day}, budgets in {self.measure}"


@dataclass(frozen=True)
class Population:
    """People that datasets are drawn from: one grid of windows, one measure, one budget (issue 17).

    The grid and measure are those of its first dataset (or proposed for it, `DatasetGrid.population_measure`)
    and are kept for life; None until a dataset registers. A horizon cap bounds the population's
    spend summed over any `horizon_windows` consecutive windows: a home repeats every window, and
    this is what bounds a person's loss over a year."""

    name: str
    first_day: str | None = None
    window_days: int | None = None
    measure: str | None = None
    horizon_windows: int | None = None
    horizon_cap: PrivacyLoss | None = None

    def describe(self) -> str:
        return f"windows of {self.window_days} days from {self.first_day}"


def check_population_name(name: str) -> str:
    """A population's name: 1-64 letters, digits, '_', '.', '-', as a group's or a dataset's."""
    if not isinstance(name, str) or GROUP_NAME.fullmatch(name) is None:
        raise InvalidInput(
            f"population={name!r} is not a population name; use 1-64 letters, digits, '_', '.' or '-', starting "
            "with a letter or digit", field="population")
    return name


def population_offset(population: Population, grid: DatasetGrid) -> int:
    """The population window of the dataset's window 0: its first day must start one of the population's
    windows, of the same length, so that window k of the dataset is window k + offset of every other
    dataset of the population (one person-week, one budget). Refused otherwise, with the fix."""
    if population.first_day is None or population.window_days is None:
        return 0
    days = (dt.date.fromisoformat(grid.first_day) - dt.date.fromisoformat(population.first_day)).days
    if grid.window_days == population.window_days and days >= 0 and days % population.window_days == 0:
        return days // population.window_days
    start = dt.date.fromisoformat(population.first_day)
    later = max(0, -(-days // population.window_days))  # the population's next window start on or after the day
    fix_day = start + dt.timedelta(days=later * population.window_days)
    raise Conflict(
        f"dataset {grid.dataset!r} has {grid.describe().split(', budgets')[0]}, but its population "
        f"{population.name!r} has {population.describe()}: its windows would straddle the population's and one "
        f"person-week could be spent twice. Re-ingest it with --window-days {population.window_days} and a first "
        f"day that starts a window of the population (--first-day {fix_day.isoformat()}, or any day "
        f"{population.window_days}·k days after {population.first_day}), or with --population NAME for another "
        "population",
        field="dataset",
    )


def _charge_text(loss: PrivacyLoss, charge: PrivacyLoss, unit: str | None) -> str:
    """"epsilon=0.5", or with a charge converted into the population's measure "epsilon=0.5 (rho=0.125 in
    its population's measure)"."""
    text = f"{loss.unit}={loss}"
    if unit is not None and unit != loss.unit and type(loss) is not PrivacyLoss:
        text += f" ({unit}={charge} in its population's measure)"
    return text


def check_window(budget: WindowBudget, dataset: str, loss: PrivacyLoss, charge: PrivacyLoss) -> None:
    """Raise BudgetExceeded naming the window and the cap; exact integer comparison. `loss` is the
    charge in the dataset's measure, `charge` the same in its population's.

    Order: the client's own cap, then its group's allocation (both the client's to know, with
    figures), then the dataset's own caps from before populations, if any, then the population's
    global cap and, for a client without an allocation, the unallocated pool: those hold other
    groups' and datasets' spending, so their refusals say what happened and what to do but give no
    figure (issue 17)."""
    from dpflows.errors import BudgetExceeded

    w = budget.window
    if budget.client_cap is None:
        raise BudgetExceeded(
            f"no budget cap is set for this client on dataset {dataset!r} window {w}; "
            "ask an admin to set one (dpflows admin set-cap)",
            field="dataset",
        )
    if budget.global_cap is None:
        raise BudgetExceeded(
            f"no global cap is set on dataset {dataset!r} window {w} (its population {budget.population!r}); ask "
            f"an admin to set one (dpflows admin set-cap --global --dataset {dataset})",
            field="dataset",
        )
    x, px = loss.nanos, charge.nanos
    asked = _charge_text(loss, charge, budget.unit)
    if budget.client_spent.nanos + x > budget.client_cap.nanos:
        left = PrivacyLoss(max(budget.client_cap.nanos - budget.client_spent.nanos, 0))
        raise BudgetExceeded(
            f"{loss.unit}={loss} exceeds your remaining budget of {left} "
            f"(cap {budget.client_cap}) on dataset {dataset!r} window {w}; ask for less or wait for an "
            "admin to raise the cap",
            field=loss.unit,
            details={"window": w, "remaining": left.to_json()},
        )
    group_left = budget.group_left()
    if group_left is not None and px > group_left.nanos:
        raise BudgetExceeded(
            f"{asked} exceeds the remaining allocation of {group_left} of your group {budget.group!r} (allocation "
            f"{budget.group_cap}) on dataset {dataset!r} window {w}; ask for less or ask an admin to raise the "
            "allocation",
            field=loss.unit,
            details={"window": w, "remaining": group_left.to_json()},
        )
    if budget.legacy is not None:
        _check_legacy(budget.legacy, w, dataset, loss)
    if budget.global_spent.nanos + px > budget.global_cap.nanos:
        raise BudgetExceeded(
            f"{asked} does not fit in what remains of the global budget on dataset {dataset!r} window {w}, shared "
            f"by all clients and every dataset of its population {budget.population!r}; ask for less",
            field=loss.unit,
            details={"window": w},
        )
    pool_over = budget.pool_cap is not None and budget.pool_spent.nanos + px > budget.pool_cap.nanos
    if budget.group_cap is None and pool_over:
        raise BudgetExceeded(
            f"{asked} does not fit in what remains of the budget shared by clients without a group allocation "
            f"on dataset {dataset!r} window {w}; ask for less, or ask an admin for a group allocation "
            "(dpflows admin set-cap --group)",
            field=loss.unit,
            details={"window": w},
        )


def _check_legacy(legacy: LegacyDatasetCaps, w: int, dataset: str, loss: PrivacyLoss) -> None:
    """The checks of ledger schema 2, on the dataset's own caps (its measure), as they were."""
    from dpflows.errors import BudgetExceeded

    x = loss.nanos
    if legacy.cap is None:
        raise BudgetExceeded(
            f"no global cap is set on dataset {dataset!r} window {w}, which has caps of its own from before "
            "populations; ask an admin to set one", field="dataset")
    if legacy.group_cap is not None and legacy.group_spent.nanos + x > legacy.group_cap.nanos:
        left = PrivacyLoss(max(legacy.group_cap.nanos - legacy.group_spent.nanos, 0))
        raise BudgetExceeded(
            f"{loss.unit}={loss} exceeds the remaining allocation of {left} of your group {legacy.group!r} "
            f"(allocation {legacy.group_cap}) on dataset {dataset!r} window {w}; ask for less",
            field=loss.unit, details={"window": w, "remaining": left.to_json()})
    pool_over = legacy.pool_cap is not None and legacy.pool_spent.nanos + x > legacy.pool_cap.nanos
    if legacy.spent.nanos + x > legacy.cap.nanos or (legacy.group_cap is None and pool_over):
        raise BudgetExceeded(
            f"{loss.unit}={loss} does not fit in what remains of the global budget of dataset {dataset!r} window "
            f"{w}, shared by all clients; ask for less",
            field=loss.unit, details={"window": w})


def horizon_runs(population: Population, windows: list[int]) -> tuple[int, int] | None:
    """The population windows whose spend a charge in `windows` must read for the horizon check (lo, hi),
    or None without a horizon cap."""
    if population.horizon_windows is None or population.horizon_cap is None or not windows:
        return None
    h = population.horizon_windows
    return max(0, min(windows) - h + 1), max(windows) + h - 1


def check_horizon(population: Population, spent: dict[int, int], windows: list[int], charge: PrivacyLoss,
                  dataset: str) -> None:
    """Refuse a charge (`charge` in every population window of `windows`) that would take the population's
    spend over any run of `horizon_windows` consecutive windows above its horizon cap. `spent`: the
    population's spend per window over `horizon_runs`. No figure: it is everyone's spending."""
    from dpflows.errors import BudgetExceeded

    span = horizon_runs(population, windows)
    if span is None or charge.nanos == 0:
        return
    assert population.horizon_windows is not None and population.horizon_cap is not None
    h, cap = population.horizon_windows, population.horizon_cap.nanos
    touched = set(windows)
    for start in range(span[0], max(windows) + 1):
        run = range(start, start + h)
        hits = sum(1 for w in run if w in touched)
        if hits and sum(spent.get(w, 0) for w in run) + hits * charge.nanos > cap:
            raise BudgetExceeded(
                f"{charge.unit}={charge} does not fit in what remains of the horizon cap of population "
                f"{population.name!r} (on dataset {dataset!r}): it bounds the population's spend over any "
                f"{h} consecutive windows, shared by all clients and datasets; ask for less or for fewer windows",
                field="population", details={})
