"""The SQL ledger's checks and data migrations: grids, cap units, budgets, answer shapes, group keys, δ."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import orjson

from dpflows.budget import PrivacyLoss, delta_text
from dpflows.errors import BudgetExceeded, Conflict, InvalidInput
from dpflows.ledger._sql_base import Cursor
from dpflows.ledger.base import (
    AnswerShape,
    DatasetGrid,
    ReleaseRequest,
    StoredAnswer,
    WindowBudget,
    shape_of,
)


def check_grid_matches(recorded: DatasetGrid, grid: DatasetGrid) -> None:
    """Window k of a dataset is one calendar span in one measure for life: anything else is refused."""
    if recorded != grid:
        raise Conflict(
            f"dataset {grid.dataset!r} has budgets recorded for {recorded.describe()}, but its data now has "
            f"{grid.describe()}; spent budget would be read against other weeks or another unit. Re-ingest with "
            f"--first-day {recorded.first_day} --window-days {recorded.window_days} and its first accounting, "
            "or ingest this data under a new dataset name",
            field="dataset",
        )


def check_cap_unit(recorded: DatasetGrid | None, cap: PrivacyLoss) -> None:
    """A cap is set in its dataset's measure: an ε cap never becomes a ρ cap, nor an (ε, δ) one, nor the reverse."""
    if recorded is not None and type(cap) is not PrivacyLoss and cap.measure != recorded.measure:
        raise InvalidInput(
            f"{cap.unit}={cap} cannot cap dataset {recorded.dataset!r}, whose budgets are in {recorded.measure}; "
            f"send the cap as {recorded.measure}",
            field=cap.unit,
        )


def loss_from_row(nanos: Any, delta_attos: Any) -> PrivacyLoss:
    """A ledger amount from its two integer columns."""
    return PrivacyLoss(int(nanos), int(delta_attos))


#: (table, column) of the δ beside every amount (issue 15): caps and allocations, running totals, charges
DELTA_COLUMNS = (("caps", "cap_delta_attos"), ("group_caps", "cap_delta_attos"), ("spend", "delta_attos"),
                 ("group_spend", "delta_attos"), ("charges", "delta_attos"))


def add_delta_columns(cur: Cursor, present: Any, integer: str = "INTEGER") -> int:
    """Migration (issue 15, approximate DP): a δ column, in atto-units, beside every amount; 0 in every
    existing row, which is what pure-DP and zCDP charges cost in δ. Idempotent: `present(table)` gives
    the columns a table has. One step; renumber it freely. Returns the columns added."""
    added = 0
    for table, column in DELTA_COLUMNS:
        if column in present(table):
            continue
        cur.execute(f"ALTER TABLE {table} ADD COLUMN {column} {integer} NOT NULL DEFAULT 0 "
                    f"CHECK ({column} >= 0)")
        added += 1
    return added


_SHAPE_COLUMNS = ("answer_id, dataset, kind, data_version, mechanism, start_day, end_day, zoning, hours_mask, "
                  "weekdays_mask, measure, zone_id, unit, loss_nanos, noise_scale, created_at, share_group")


def _shape_from_row(row: Any) -> AnswerShape:
    return AnswerShape(row[0], row[1], row[2], row[3], row[4], row[5], row[6], row[7], int(row[8]), int(row[9]),
                       row[10], row[11], row[12], int(row[13]), float(row[14]), row[15], row[16])


def _insert_shape(cur: Cursor, answer: StoredAnswer, share_group: str | None) -> bool:
    """Index what `answer` asked (answer_shapes), in the sharing group it was released in; False for
    answers without a shape. share_group None: a migration step older than groups (the column is
    filled by `rekey_answers`, a later step)."""
    shape = shape_of(answer)
    if shape is None:
        return False
    group_column, group_value = ("", ()) if share_group is None else (", share_group", (share_group,))
    cur.execute(
        "INSERT INTO answer_shapes (answer_id, dataset, kind, data_version, mechanism, start_day, end_day, zoning, "  # noqa: S608 -- a constant column name and placeholders only
        f"hours_mask, weekdays_mask, measure, zone_id, unit, loss_nanos, noise_scale, created_at{group_column}) "
        f"VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?{', ?' * len(group_value)})",
        (shape.answer_id, shape.dataset, shape.kind, shape.data_version, shape.mechanism, shape.start, shape.end,
         shape.zoning, shape.hours_mask, shape.weekdays_mask, shape.measure, shape.zone, shape.unit,
         shape.loss_nanos, shape.scale, shape.created_at, *group_value),
    )
    return True


def group_query_key(query_key: str, share_group: str) -> str:
    """The reuse key of a query within one sharing group: an answer is found again only by its group.

    A function of the group-free key so that a migration can re-key stored answers (`rekey_answers`)."""
    return hashlib.sha256(f"{query_key}|{share_group}".encode()).hexdigest()


def rekey_answers(cur: Cursor, batch: int = 500) -> int:
    """Migration (issue 17): before sharing groups every answer was reused by everyone. Each stored answer
    is moved into the group of the client who released it, then alone (`client:<id>`): its reuse key
    becomes `group_query_key(key, group)` and its shape row names the group. Answers of dpflows' own
    principals (`system:`, the bounding-report charges, keyed by ingestion) keep their keys. Returns
    answers re-keyed."""
    done, after = 0, ""
    while True:
        cur.execute("SELECT a.answer_id, a.query_key, a.client_id FROM answers a JOIN clients c ON c.id = a.client_id "
                    "WHERE a.answer_id > ? AND c.name NOT LIKE 'system:%' ORDER BY a.answer_id LIMIT ?",
                    (after, batch))
        rows = cur.fetchall()
        if not rows:
            return done
        for answer_id, key, client_id in rows:
            group = f"client:{int(client_id)}"
            cur.execute("UPDATE answers SET query_key = ? WHERE answer_id = ?",
                        (group_query_key(key, group), answer_id))
            cur.execute("UPDATE answer_shapes SET share_group = ? WHERE answer_id = ?", (group, answer_id))
            done += 1
        after = rows[-1][0]


def backfill_answer_shapes(cur: Cursor, batch: int = 500) -> int:
    """Migration: index answers stored before answer_shapes existed, parsing each payload once, in
    batches (a large ledger never sits in memory at once). Returns how many rows were added."""
    added, after = 0, ""
    while True:
        cur.execute(
            "SELECT a.answer_id, a.dataset, a.query_key, a.client_id, a.payload, a.created_at FROM answers a "
            "LEFT JOIN answer_shapes s ON s.answer_id = a.answer_id "
            "WHERE s.answer_id IS NULL AND a.answer_id > ? ORDER BY a.answer_id LIMIT ?",
            (after, batch),
        )
        rows = cur.fetchall()
        if not rows:
            return added
        for row in rows:
            added += _insert_shape(cur, StoredAnswer(row[0], row[1], row[2], int(row[3]), orjson.loads(row[4]),
                                                     row[5]), None)
        after = rows[-1][0]


def _check_budget(budget: WindowBudget, request: ReleaseRequest) -> None:
    """Raise BudgetExceeded naming the window and the cap; exact integer comparison.

    Order: the client's own cap, then its group's allocation (both the client's to know, with
    figures), then the global cap and, for a client without an allocation, the unallocated pool:
    those hold other groups' spending, so their refusals say what happened and what to do but give
    no figure (issue 17)."""
    w = budget.window
    if budget.client_cap is None:
        raise BudgetExceeded(
            f"no budget cap is set for this client on dataset {request.dataset!r} window {w}; "
            "ask an admin to set one (dpflows admin set-cap)",
            field="dataset",
        )
    if budget.global_cap is None:
        raise BudgetExceeded(
            f"no global cap is set on dataset {request.dataset!r} window {w}; ask an admin to set one "
            "(dpflows admin set-cap --global)",
            field="dataset",
        )
    x = request.loss.nanos
    if budget.client_spent.nanos + x > budget.client_cap.nanos:
        left = PrivacyLoss(max(budget.client_cap.nanos - budget.client_spent.nanos, 0))
        raise BudgetExceeded(
            f"{request.loss.unit}={request.loss} exceeds your remaining budget of {left} "
            f"(cap {budget.client_cap}) on dataset {request.dataset!r} window {w}; ask for less or wait for an "
            "admin to raise the cap",
            field=request.loss.unit,
            details={"window": w, "remaining": left.to_json()},
        )
    if budget.group_cap is not None:
        if budget.group_spent.nanos + x > budget.group_cap.nanos:
            left = PrivacyLoss(max(budget.group_cap.nanos - budget.group_spent.nanos, 0))
            raise BudgetExceeded(
                f"{request.loss.unit}={request.loss} exceeds the remaining allocation of {left} of your group "
                f"{budget.group!r} (allocation {budget.group_cap}) on dataset {request.dataset!r} window {w}; ask "
                "for less or ask an admin to raise the allocation",
                field=request.loss.unit,
                details={"window": w, "remaining": left.to_json()},
            )
    if budget.global_spent.nanos + x > budget.global_cap.nanos:
        raise BudgetExceeded(
            f"{request.loss.unit}={request.loss} does not fit in what remains of the global budget on "
            f"dataset {request.dataset!r} window {w}, shared by all clients; ask for less",
            field=request.loss.unit,
            details={"window": w},
        )
    if budget.group_cap is None and budget.pool_cap is not None and budget.pool_spent.nanos + x > budget.pool_cap.nanos:
        raise BudgetExceeded(
            f"{request.loss.unit}={request.loss} does not fit in what remains of the budget shared by "
            f"clients without a group allocation on dataset {request.dataset!r} window {w}; ask for less, or ask "
            "an admin for a group allocation (dpflows admin set-cap --group)",
            field=request.loss.unit,
            details={"window": w},
        )
    if request.loss.delta_attos:
        _check_delta(budget, request)


def _check_delta(budget: WindowBudget, request: ReleaseRequest) -> None:
    """The δ of an (ε, δ) charge against the same caps, in the same order and with the same rule on figures
    as `_check_budget` (whose ε checks it follows): exact integer comparison in atto-units."""
    w, d = budget.window, request.loss.delta_attos
    assert budget.client_cap is not None and budget.global_cap is not None  # _check_budget refused otherwise
    if budget.client_spent.delta_attos + d > budget.client_cap.delta_attos:
        left = max(budget.client_cap.delta_attos - budget.client_spent.delta_attos, 0)
        raise BudgetExceeded(
            f"delta={delta_text(d)} exceeds your remaining delta budget of {delta_text(left)} (cap "
            f"{delta_text(budget.client_cap.delta_attos)}) on dataset {request.dataset!r} window {w}; ask for a "
            "smaller delta, or for a dense answer (a coarser zoning, no delta), or ask an admin to raise the cap "
            "(dpflows admin set-cap --delta)",
            field="delta", details={"window": w, "delta_remaining": left / 10**18},
        )
    if budget.group_cap is not None and budget.group_spent.delta_attos + d > budget.group_cap.delta_attos:
        left = max(budget.group_cap.delta_attos - budget.group_spent.delta_attos, 0)
        raise BudgetExceeded(
            f"delta={delta_text(d)} exceeds the remaining delta allocation of {delta_text(left)} of your group "
            f"{budget.group!r} on dataset {request.dataset!r} window {w}; ask for a smaller delta or ask an admin "
            "to raise the allocation",
            field="delta", details={"window": w, "delta_remaining": left / 10**18},
        )
    if budget.global_spent.delta_attos + d > budget.global_cap.delta_attos:
        raise BudgetExceeded(
            f"delta={delta_text(d)} does not fit in what remains of the global delta budget on dataset "
            f"{request.dataset!r} window {w}, shared by all clients; ask for a smaller delta or a dense answer",
            field="delta", details={"window": w},
        )
    if budget.group_cap is None and budget.pool_cap is not None \
            and budget.pool_spent.delta_attos + d > budget.pool_cap.delta_attos:
        raise BudgetExceeded(
            f"delta={delta_text(d)} does not fit in what remains of the delta budget shared by clients without a "
            f"group allocation on dataset {request.dataset!r} window {w}; ask for a smaller delta, or ask an "
            "admin for a group allocation",
            field="delta", details={"window": w},
        )


def _payload_text(payload: dict[str, Any]) -> str:
    """A stored answer's JSON text: orjson (a 10,000-key payload encodes ~10× faster), the same
    compact JSON as before; the stdlib for what orjson refuses (integers beyond 64 bits)."""
    try:
        return orjson.dumps(payload).decode()
    except TypeError:
        return json.dumps(payload, separators=(",", ":"))
