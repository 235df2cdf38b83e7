"""Populations in SQL (issue 17): each population's record, where each dataset sits on its grid, the
population's caps, allocations and spend, and the dataset caps kept from before populations.

Tables: populations (grid, measure, horizon cap: see budgets.Population), population_caps (global
cap per population window; win -1 every window), population_group_caps (sharing groups'
allocations), population_spend (running totals per population window and holder: '*' all, '' the
unallocated pool, else a group's allocation). Amounts are nanos of the population's measure; a
second component (δ, for approximate DP) would be a second column of the same rows. datasets
gains each dataset's population and window_offset (its window 0 on the population's grid).
"""

from __future__ import annotations

from dpflows.budget import PrivacyLoss
from dpflows.errors import Conflict, InvalidInput
from dpflows.ledger._sql_base import EVERY_WINDOW, GLOBAL, Cursor, SqlBase, utc_now
from dpflows.ledger.budgets import (
    DEFAULT_POPULATION,
    Allocation,
    DatasetGrid,
    LegacyDatasetCaps,
    Population,
    check_allocations,
    check_population_name,
    effective_allocations,
    population_offset,
)

#: population_spend holder of a population window's total (never a group name: GROUP_NAME refuses '*')
TOTAL = "*"
_POPULATION_SELECT = ("SELECT population, first_day, window_days, measure, horizon_windows, horizon_cap_nanos "
                      "FROM populations WHERE population = ?")


class PopulationStore(SqlBase):
    """The population half of SqlLedger (see the module docstring)."""

    # -- records ------------------------------------------------------------------------------

    def _population(self, cur: Cursor, name: str) -> Population | None:
        cur.execute(_POPULATION_SELECT, (name,))
        row = cur.fetchone()
        if row is None:
            return None
        return Population(row[0], row[1], None if row[2] is None else int(row[2]), row[3],
                          None if row[4] is None else int(row[4]),
                          None if row[5] is None else PrivacyLoss(int(row[5])))

    def _ensure_population(self, cur: Cursor, name: str) -> Population:
        cur.execute("INSERT INTO populations (population, registered_at) VALUES (?, ?) ON CONFLICT (population) "
                    "DO NOTHING", (name, utc_now()))
        found = self._population(cur, name)
        assert found is not None  # inserted above or already there
        return found

    def _join_population(self, cur: Cursor, grid: DatasetGrid) -> int:
        """Record the population's grid and measure if this is its first dataset; return the dataset's
        window offset on it, refusing a dataset off its grid or a measure other than the one recorded."""
        check_population_name(grid.population)
        self._ensure_population(cur, grid.population)
        cur.execute("UPDATE populations SET first_day = ?, window_days = ? WHERE population = ? AND first_day IS NULL",
                    (grid.first_day, grid.window_days, grid.population))
        cur.execute("UPDATE populations SET measure = ? WHERE population = ? AND measure IS NULL",
                    (grid.population_measure or grid.measure, grid.population))
        population = self._population(cur, grid.population)
        assert population is not None
        if grid.population_measure is not None and population.measure != grid.population_measure:
            raise Conflict(
                f"population {population.name!r} has budgets in {population.measure}, not {grid.population_measure}; "
                f"dataset {grid.dataset!r} can join it only if its charges convert into {population.measure}",
                field="population")
        return population_offset(population, grid)

    def _placement(self, cur: Cursor, dataset: str) -> tuple[str, int]:
        """(population, window offset) of a dataset; one never registered sits at window 0 of the default."""
        cur.execute("SELECT population, window_offset FROM datasets WHERE dataset = ?", (dataset,))
        row = cur.fetchone()
        return (DEFAULT_POPULATION, 0) if row is None else (str(row[0]), int(row[1]))

    def population(self, name: str) -> Population | None:
        with self._transaction(write=False) as cur:
            return self._population(cur, name)

    def population_of(self, dataset: str) -> tuple[str, int]:
        """The population a dataset draws on and the population window of its window 0."""
        with self._transaction(write=False) as cur:
            return self._placement(cur, dataset)

    def set_horizon_cap(self, name: str, windows: int | None, cap: PrivacyLoss | None) -> Population:
        """Bound the population's spend over any `windows` consecutive windows by `cap` (both None: no bound).

        Lowering it below what was already spent is allowed: it then refuses every further charge in
        the runs it covers, as a cap lowered below its spend does."""
        check_population_name(name)
        if (windows is None) != (cap is None) or (windows is not None and windows < 1):
            raise InvalidInput(f"horizon windows={windows} must be 1 or more, sent with its cap (or both omitted to "
                               "remove the horizon cap)", field="horizon_windows")
        with self._transaction(write=True) as cur:
            self._lock_allocations(cur, exclusive=True)
            population = self._ensure_population(cur, name)
            _check_unit(population, cap)
            cur.execute("UPDATE populations SET horizon_windows = ?, horizon_cap_nanos = ? WHERE population = ?",
                        (windows, None if cap is None else cap.nanos, name))
            found = self._population(cur, name)
            assert found is not None
            return found

    # -- caps and allocations -----------------------------------------------------------------

    def _set_population_cap(self, cur: Cursor, name: str, win: int, cap: PrivacyLoss, group: str | None) -> None:
        """The population's global cap (group None) or a group's allocation of it, checked together."""
        check_population_name(name)
        population = self._ensure_population(cur, name)
        _check_unit(population, cap)
        if population.measure is None and type(cap) is not PrivacyLoss:
            cur.execute("UPDATE populations SET measure = ? WHERE population = ?", (cap.unit, name))
        if group is not None:
            cur.execute(
                "INSERT INTO population_group_caps (group_name, population, win, cap_nanos, updated_at) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (group_name, population, win) DO UPDATE SET "
                "cap_nanos = excluded.cap_nanos, updated_at = excluded.updated_at",
                (group, name, win, cap.nanos, utc_now()))
        else:
            cur.execute(
                "INSERT INTO population_caps (population, win, cap_nanos, updated_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (population, win) DO UPDATE SET cap_nanos = excluded.cap_nanos, "
                "updated_at = excluded.updated_at",
                (name, win, cap.nanos, utc_now()))
        check_allocations(name, self._global_cap_rows(cur, name), self._allocation_rows(cur, name))

    def _global_cap_rows(self, cur: Cursor, name: str) -> dict[int, int]:
        cur.execute("SELECT win, cap_nanos FROM population_caps WHERE population = ?", (name,))
        return {int(w): int(n) for w, n in cur.fetchall()}

    def _allocation_rows(self, cur: Cursor, name: str) -> list[tuple[str, int, int]]:
        """(group, win, nanos) of every allocation of the population."""
        cur.execute("SELECT group_name, win, cap_nanos FROM population_group_caps WHERE population = ?", (name,))
        return [(r[0], int(r[1]), int(r[2])) for r in cur.fetchall()]

    def list_allocations(self, dataset: str | None = None, *, population: str | None = None) -> list[Allocation]:
        """Every group allocation of a population (or of a dataset's population), by group then window (admins)."""
        with self._transaction(write=False) as cur:
            name = population if population is not None else self._placement(cur, dataset or "")[0]
            rows = self._allocation_rows(cur, name)
        return [Allocation(g, None if w == EVERY_WINDOW else w, PrivacyLoss(n)) for g, w, n in sorted(rows)]

    def population_caps(self, name: str) -> list[tuple[int | None, PrivacyLoss]]:
        """The population's global caps: (window or None for every window, cap), by window (admins)."""
        with self._transaction(write=False) as cur:
            rows = self._global_cap_rows(cur, name)
        return [(None if w == EVERY_WINDOW else w, PrivacyLoss(n)) for w, n in sorted(rows.items())]

    def population_spent(self, name: str, window: int) -> PrivacyLoss:
        """What every client spent in one population window, over all datasets, in the population's measure."""
        with self._transaction(write=False) as cur:
            return PrivacyLoss(self._population_spend(cur, name, window, TOTAL))

    # -- reading a window ---------------------------------------------------------------------

    def _population_cap(self, cur: Cursor, name: str, window: int) -> PrivacyLoss | None:
        cur.execute("SELECT cap_nanos FROM population_caps WHERE population = ? AND win IN (?, ?) "
                    "ORDER BY win DESC LIMIT 1", (name, window, EVERY_WINDOW))
        row = cur.fetchone()
        return None if row is None else PrivacyLoss(int(row[0]))

    def _population_spend(self, cur: Cursor, name: str, window: int, holder: str) -> int:
        cur.execute("SELECT nanos FROM population_spend WHERE population = ? AND win = ? AND holder = ?",
                    (name, window, holder))
        row = cur.fetchone()
        return 0 if row is None else int(row[0])

    def _population_spend_range(self, cur: Cursor, name: str, lo: int, hi: int) -> dict[int, int]:
        """The population's total spend per window in [lo, hi] (the horizon check's runs)."""
        cur.execute("SELECT win, nanos FROM population_spend WHERE population = ? AND holder = ? "
                    "AND win BETWEEN ? AND ?", (name, TOTAL, lo, hi))
        return {int(w): int(n) for w, n in cur.fetchall()}

    def _add_population_spend(self, cur: Cursor, name: str, window: int, holder: str, nanos: int) -> None:
        cur.execute("INSERT INTO population_spend (population, win, holder, nanos) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (population, win, holder) DO UPDATE SET "
                    "nanos = population_spend.nanos + excluded.nanos",
                    (name, window, holder, nanos))

    # -- dataset caps from before populations ---------------------------------------------------

    def _has_legacy_caps(self, cur: Cursor, dataset: str) -> bool:
        cur.execute("SELECT EXISTS (SELECT 1 FROM caps WHERE client_id = ? AND dataset = ?) "
                    "OR EXISTS (SELECT 1 FROM group_caps WHERE dataset = ?)", (GLOBAL, dataset, dataset))
        return bool(cur.fetchone()[0])

    def _legacy_caps(self, cur: Cursor, dataset: str, window: int, group: str | None) -> LegacyDatasetCaps:
        """The dataset's own global cap, allocations and pool in one window, as ledger schema 2 checked them."""
        cur.execute("SELECT cap_nanos FROM caps WHERE client_id = ? AND dataset = ? AND win IN (?, ?) "
                    "ORDER BY win DESC LIMIT 1", (GLOBAL, dataset, window, EVERY_WINDOW))
        row = cur.fetchone()
        cap = None if row is None else PrivacyLoss(int(row[0]))
        cur.execute("SELECT group_name, win, cap_nanos FROM group_caps WHERE dataset = ? AND win IN (?, ?)",
                    (dataset, window, EVERY_WINDOW))
        allocations = effective_allocations([(r[0], int(r[1]), int(r[2])) for r in cur.fetchall()], window)
        group_cap = None if group is None or group not in allocations else PrivacyLoss(allocations[group])
        holder = group if group_cap is not None and group is not None else ""
        cur.execute("SELECT nanos FROM group_spend WHERE dataset = ? AND win = ? AND group_name = ?",
                    (dataset, window, holder))
        row = cur.fetchone()
        held = PrivacyLoss(0 if row is None else int(row[0]))
        cur.execute("SELECT nanos FROM spend WHERE dataset = ? AND win = ? AND client_id = ?",
                    (dataset, window, GLOBAL))
        row = cur.fetchone()
        return LegacyDatasetCaps(
            cap=cap, spent=PrivacyLoss(0 if row is None else int(row[0])), group=group,
            group_cap=group_cap, group_spent=held if group_cap is not None else PrivacyLoss.zero(),
            pool_cap=None if cap is None else PrivacyLoss(max(cap.nanos - sum(allocations.values()), 0)),
            pool_spent=held if group_cap is None else PrivacyLoss.zero())


def _check_unit(population: Population, cap: PrivacyLoss | None) -> None:
    """A population's caps are in its measure: an ε cap never becomes a ρ cap, nor the reverse."""
    if cap is not None and population.measure is not None and type(cap) is not PrivacyLoss \
            and cap.unit != population.measure:
        raise InvalidInput(
            f"{cap.unit}={cap} cannot cap population {population.name!r}, whose budgets are in {population.measure}; "
            f"send the cap as {population.measure}", field=cap.unit)
