"""A client's budgets in some windows of a dataset, read in one SQL statement.

Every reuse reads them (with the answer's id), every charge reads them inside its transaction, and a
window's figures come from six tables: the client's cap and spend (caps, spend), its sharing group
(client_groups), the dataset's place on its population's grid (datasets), the population's measure,
global caps, allocations and running totals (populations, population_caps, population_group_caps,
population_spend). One statement of tagged rows (UNION ALL) brings them all, whatever the number of
windows: 26 statements for 4 windows before. Only a dataset that still has caps from before
populations reads those in a few more (rare: `_legacy_caps`).
"""

from __future__ import annotations

from typing import Any

from dpflows.budget import PrivacyLoss
from dpflows.ledger._sql_base import EVERY_WINDOW, GLOBAL, Cursor
from dpflows.ledger._sql_populations import TOTAL, PopulationStore
from dpflows.ledger.budgets import DEFAULT_POPULATION, WindowBudget, effective_allocations, sum_losses


def _statement(windows: int) -> str:
    """Rows of (tag, win, text, nanos, delta attos). Population windows are filtered by `win - off`, the
    dataset's window, and returned as stored (the population's window)."""
    wins = ", ".join("?" * windows)
    # only placeholders and the constant EVERY_WINDOW are interpolated
    return (
        "WITH d AS (SELECT COALESCE((SELECT population FROM datasets WHERE dataset = ?), ?) AS pop, "  # noqa: S608
        "COALESCE((SELECT window_offset FROM datasets WHERE dataset = ?), 0) AS off) "
        "SELECT 'group', 0, group_name, 0, 0 FROM client_groups WHERE client_id = ? "
        "UNION ALL SELECT 'place', off, pop, 0, 0 FROM d "
        "UNION ALL SELECT 'measure', 0, measure, 0, 0 FROM populations, d WHERE population = d.pop "
        "UNION ALL SELECT 'legacy', 0, '', 1, 0 FROM d WHERE EXISTS (SELECT 1 FROM caps WHERE client_id = ? "
        "AND dataset = ?) OR EXISTS (SELECT 1 FROM group_caps WHERE dataset = ?) "
        f"UNION ALL SELECT 'cap', win, '', cap_nanos, cap_delta_attos FROM caps WHERE client_id = ? AND dataset = ? "
        f"AND win IN ({wins}, {EVERY_WINDOW}) "
        f"UNION ALL SELECT 'spent', win, '', nanos, delta_attos FROM spend WHERE dataset = ? AND client_id = ? "
        f"AND win IN ({wins}) "
        "UNION ALL SELECT 'global', win, '', cap_nanos, cap_delta_attos FROM population_caps, d "
        f"WHERE population = d.pop AND (win = {EVERY_WINDOW} OR win - d.off IN ({wins})) "
        "UNION ALL SELECT 'spend', win, holder, nanos, delta_attos FROM population_spend, d "
        f"WHERE population = d.pop AND win - d.off IN ({wins}) "
        "UNION ALL SELECT 'alloc', win, group_name, cap_nanos, cap_delta_attos FROM population_group_caps, d "
        "WHERE population = d.pop"
    )


class BudgetReads(PopulationStore):
    """`_budgets` of SqlLedger (see the module docstring)."""

    def _budgets(self, cur: Cursor, dataset: str, client_id: int, windows: list[int]) -> list[WindowBudget]:
        if not windows:
            return []
        wins = tuple(windows)
        cur.execute(_statement(len(wins)), (dataset, DEFAULT_POPULATION, dataset, client_id, GLOBAL, dataset, dataset,
                                            client_id, dataset, *wins, dataset, client_id, *wins, *wins, *wins))
        group: str | None = None
        name, offset, unit, legacy = DEFAULT_POPULATION, 0, None, False
        # by window (cap, spent, global) or by (population window, holder) (spend)
        amounts: dict[str, dict[Any, PrivacyLoss]] = {tag: {} for tag in _AMOUNTS}
        caps, spent, global_caps, spends = (amounts[tag] for tag in ("cap", "spent", "global", "spend"))
        allocation_rows: list[tuple[str, int, PrivacyLoss]] = []
        for tag, win, text, nanos, delta in cur.fetchall():
            if tag in _AMOUNTS:
                where = int(win) if tag != "spend" else (int(win), str(text))
                amounts[tag][where] = PrivacyLoss(int(nanos), int(delta))
            elif tag == "alloc":
                allocation_rows.append((str(text), int(win), PrivacyLoss(int(nanos), int(delta))))
            elif tag == "group":
                group = str(text)
            elif tag == "place":
                name, offset = str(text), int(win)
            elif tag == "measure":
                unit = _text_or_none(text)
            else:
                legacy = True
        zero = PrivacyLoss.zero()
        out = []
        for w in windows:
            pw = w + offset
            global_cap = global_caps.get(pw, global_caps.get(EVERY_WINDOW))
            allocations = effective_allocations(allocation_rows, pw)
            group_cap = None if group is None or group not in allocations else allocations[group]
            allocated = sum_losses(allocations.values())
            unallocated = None if global_cap is None else PrivacyLoss(
                max(global_cap.nanos - allocated.nanos, 0), max(global_cap.delta_attos - allocated.delta_attos, 0))
            out.append(WindowBudget(
                window=w,
                client_cap=caps.get(w, caps.get(EVERY_WINDOW)),
                client_spent=spent.get(w, zero),
                global_cap=global_cap,
                global_spent=spends.get((pw, TOTAL), zero),
                group=group,
                group_cap=group_cap,
                group_spent=spends.get((pw, group), zero) if group is not None and group_cap is not None else zero,
                pool_cap=unallocated,
                pool_spent=spends.get((pw, ""), zero) if group_cap is None else zero,
                population=name, population_window=pw, unit=unit,
                legacy=self._legacy_caps(cur, dataset, w, group) if legacy else None,
            ))
        return out


_AMOUNTS = frozenset({"cap", "spent", "global", "spend"})


def _text_or_none(value: Any) -> str | None:
    return None if value is None else str(value)
