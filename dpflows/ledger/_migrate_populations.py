"""Migration (issue 17, populations): budgets per dataset become budgets per population, losing nothing.

Before, each dataset had its own global cap, group allocations and spend. A dataset directory
without a population field belongs to the data root's default population, so every dataset the
ledger knows joins `DEFAULT_POPULATION`, at its window offset on that population's grid: the grid
of the dataset registered first, starting on the earliest first day of the datasets on it. A
dataset whose windows do not fall on that grid (another length, or an offset first day) cannot
share it and gets a population of its own, named after it (the service then reads its population
from the ledger: `population_of`). The default population's measure is the one all its datasets
convert into (accounting.common_measure: ρ when any is zCDP, else ε).

Each population starts with the figures its datasets had, converted into its measure (ε → ρ by
OpenDP's conversion, rounded up), so that it allows nothing the datasets' caps did not:

* its global cap in a window = the sum of its datasets' global caps in that window (a dataset counts
  only from its own window 0); each group's allocation likewise;
* its spend = the sum of its datasets' charges (each charge converted on its own), and each group's
  and the pool's spend the sum of the datasets' (converted as totals: never less than their charges).

The datasets' own global caps and allocations stay where they were and keep binding each dataset
as before (base.LegacyDatasetCaps), so after the migration a dataset can spend exactly what it
could, and a dataset added to the population later shares what remains of the sum: nothing can be
spent twice. One step of the versioned migration, in its transaction; a no-op where populations exist.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

from dpflows.budget import MAX_EPSILON_NANOS, PrivacyLoss
from dpflows.errors import InvalidInput
from dpflows.ledger._sql_base import EVERY_WINDOW, GLOBAL, Cursor, utc_now
from dpflows.ledger._sql_populations import TOTAL
from dpflows.ledger.budgets import DEFAULT_POPULATION


@dataclass(frozen=True)
class _Member:
    dataset: str
    offset: int
    measure: str | None  # None: a dataset capped before it was ever registered (no grid recorded)


def _plan(grids: list[tuple[str, str, int, str]], unregistered: list[str]) -> dict[str, tuple[str | None, list[_Member],
                                                                                            str | None, int | None]]:
    """population -> (first day, members, measure, window days), from (dataset, first_day, window_days,
    measure) in registration order."""
    from dpflows.accounting import accounting_of_unit, common_measure

    plan: dict[str, tuple[str | None, list[_Member], str | None, int | None]] = {}
    if grids:
        anchor = dt.date.fromisoformat(grids[0][1])
        days = grids[0][2]
        on_grid = [g for g in grids if g[2] == days and (dt.date.fromisoformat(g[1]) - anchor).days % days == 0]
        start = min(dt.date.fromisoformat(g[1]) for g in on_grid)
        members = [_Member(g[0], (dt.date.fromisoformat(g[1]) - start).days // days, g[3]) for g in on_grid]
        measure = common_measure([accounting_of_unit(g[3]) for g in on_grid])
        plan[DEFAULT_POPULATION] = (start.isoformat(), members, measure, days)
        taken = {DEFAULT_POPULATION, *(g[0] for g in grids)}
        for g in grids:
            if g not in on_grid:
                name = g[0] if g[0] != DEFAULT_POPULATION else _free_name(g[0], taken)
                taken.add(name)
                plan[name] = (g[1], [_Member(g[0], 0, g[3])], g[3], g[2])
    if unregistered:
        day, known, unit, length = plan.get(DEFAULT_POPULATION, (None, [], None, None))
        plan[DEFAULT_POPULATION] = (day, known + [_Member(d, 0, None) for d in unregistered], unit, length)
    return plan


def _free_name(name: str, taken: set[str]) -> str:
    n = 1
    while f"{name}.{n}" in taken:
        n += 1
    return f"{name}.{n}"


def migrate_to_populations(cur: Cursor) -> int:
    """Place every dataset the ledger knows in a population and give each population its datasets'
    figures (see the module docstring). Returns the number of datasets placed; 0 on a ledger whose
    populations exist already (made by this version: it keeps their figures as it charges)."""
    cur.execute("SELECT COUNT(*) FROM populations")
    if int(cur.fetchone()[0]) > 0:
        return 0
    cur.execute("SELECT dataset, first_day, window_days, measure FROM datasets ORDER BY registered_at, dataset")
    grids = [(str(r[0]), str(r[1]), int(r[2]), str(r[3])) for r in cur.fetchall()]
    cur.execute("SELECT dataset FROM caps WHERE client_id = ? UNION SELECT dataset FROM group_caps "
                "UNION SELECT dataset FROM spend", (GLOBAL,))
    registered = {g[0] for g in grids}
    unregistered = sorted({str(r[0]) for r in cur.fetchall()} - registered)
    placed = 0
    for name, (first_day, members, measure, days) in _plan(grids, unregistered).items():
        cur.execute("INSERT INTO populations (population, first_day, window_days, measure, registered_at) "
                    "VALUES (?, ?, ?, ?, ?)", (name, first_day, days, measure, utc_now()))
        caps: dict[int, dict[str, int]] = defaultdict(dict)  # win -> dataset -> nanos (win -1: every window)
        allocations: dict[str, dict[int, dict[str, int]]] = defaultdict(lambda: defaultdict(dict))
        spend: dict[tuple[int, str], int] = defaultdict(int)  # (population window, holder) -> nanos
        for m in members:
            convert = _converter(m.measure, measure)
            cur.execute("UPDATE datasets SET population = ?, window_offset = ? WHERE dataset = ?",
                        (name, m.offset, m.dataset))
            cur.execute("SELECT win, cap_nanos FROM caps WHERE client_id = ? AND dataset = ?", (GLOBAL, m.dataset))
            for win, nanos in cur.fetchall():
                caps[_shift(int(win), m.offset)][m.dataset] = convert(int(nanos))
            cur.execute("SELECT group_name, win, cap_nanos FROM group_caps WHERE dataset = ?", (m.dataset,))
            for group, win, nanos in cur.fetchall():
                allocations[str(group)][_shift(int(win), m.offset)][m.dataset] = convert(int(nanos))
            cur.execute("SELECT win, nanos, COUNT(*) FROM charges WHERE dataset = ? GROUP BY win, nanos", (m.dataset,))
            for win, nanos, count in cur.fetchall():
                spend[(int(win) + m.offset, TOTAL)] += convert(int(nanos)) * int(count)
            cur.execute("SELECT win, group_name, nanos FROM group_spend WHERE dataset = ?", (m.dataset,))
            for win, holder, nanos in cur.fetchall():
                spend[(int(win) + m.offset, str(holder))] += convert(int(nanos))
            placed += 1
        offsets = {m.dataset: m.offset for m in members}
        for win, nanos in _summed(caps, offsets).items():
            cur.execute("INSERT INTO population_caps (population, win, cap_nanos, updated_at) VALUES (?, ?, ?, ?)",
                        (name, win, nanos, utc_now()))
        for group, by_window in allocations.items():
            for win, nanos in _summed(by_window, offsets).items():
                cur.execute("INSERT INTO population_group_caps (group_name, population, win, cap_nanos, updated_at) "
                            "VALUES (?, ?, ?, ?, ?)", (group, name, win, nanos, utc_now()))
        for (win, holder), nanos in spend.items():
            cur.execute("INSERT INTO population_spend (population, win, holder, nanos) VALUES (?, ?, ?, ?)",
                        (name, win, holder, min(nanos, MAX_EPSILON_NANOS)))
    return placed


def _shift(win: int, offset: int) -> int:
    return EVERY_WINDOW if win == EVERY_WINDOW else win + offset


def _summed(rows: dict[int, dict[str, int]], offsets: dict[str, int]) -> dict[int, int]:
    """Per population window (-1: every window), the sum over datasets of each one's cap in force there:
    its own window's row, else its every-window row; a dataset counts only from its window 0 on. Windows
    before a dataset starts get rows of their own, so that its every-window cap is not counted there."""
    every = rows.get(EVERY_WINDOW, {})
    windows = {w for w in rows if w != EVERY_WINDOW} | {w for w in range(max(offsets.values(), default=0))}
    out = {EVERY_WINDOW: sum(every.values())} if every else {}
    for w in sorted(windows):
        out[w] = sum(rows.get(w, {}).get(d, every.get(d, 0)) for d in offsets if w >= offsets[d])
    # the hard limit on any figure (budget.MAX_EPSILON_NANOS): a cap above it would cap nothing more
    return {w: min(n, MAX_EPSILON_NANOS) for w, n in out.items()}


def _converter(measure: str | None, into: str | None) -> Callable[[int], int]:
    """nanos in `measure` -> nanos in `into`, by the dataset's accounting (OpenDP's conversion, rounded up)."""
    if measure is None or into is None or measure == into:
        return lambda nanos: nanos
    from dpflows.accounting import accounting_of_unit

    acc = accounting_of_unit(measure)

    def convert(nanos: int) -> int:
        try:
            return acc.convert(PrivacyLoss(nanos), into).nanos
        except InvalidInput:  # beyond the hard limit once converted: as much as any figure can be
            return MAX_EPSILON_NANOS

    return convert
