"""The SQL ledger's checks and data migrations: grids, cap units, budgets, answer shapes, group keys."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import orjson

from dpflows.budget import PrivacyLoss
from dpflows.errors import Conflict, InvalidInput
from dpflows.ledger._sql_base import Cursor
from dpflows.ledger.base import (
    AnswerShape,
    DatasetGrid,
    Population,
    ReleaseRequest,
    StoredAnswer,
    WindowBudget,
    check_window,
    shape_of,
)


def check_grid_matches(recorded: DatasetGrid, grid: DatasetGrid) -> None:
    """Window k of a dataset is one calendar span in one measure, drawn on one population, for life:
    anything else is refused."""
    if recorded.population != grid.population and (recorded.first_day, recorded.window_days, recorded.measure) == (
            grid.first_day, grid.window_days, grid.measure):
        raise Conflict(
            f"dataset {grid.dataset!r} has budgets recorded in population {recorded.population!r}, but its data now "
            f"says population {grid.population!r}; its spending would be read against another population's budget. "
            f"Re-ingest it with --population {recorded.population}, or ingest this data under a new dataset name",
            field="dataset",
        )
    if recorded != grid:
        raise Conflict(
            f"dataset {grid.dataset!r} has budgets recorded for {recorded.describe()}, but its data now has "
            f"{grid.describe()}; spent budget would be read against other weeks or another unit. Re-ingest with "
            f"--first-day {recorded.first_day} --window-days {recorded.window_days} and its first accounting, "
            "or ingest this data under a new dataset name",
            field="dataset",
        )


def check_cap_unit(recorded: DatasetGrid | None, cap: PrivacyLoss) -> None:
    """A cap is set in its dataset's measure: an ε cap never becomes a ρ cap, nor the reverse."""
    if recorded is not None and type(cap) is not PrivacyLoss and cap.unit != recorded.measure:
        raise InvalidInput(
            f"{cap.unit}={cap} cannot cap dataset {recorded.dataset!r}, whose budgets are in {recorded.measure}; "
            f"send the cap as {recorded.measure}",
            field=cap.unit,
        )


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
    """Raise BudgetExceeded naming the window and the cap (budgets.check_window)."""
    check_window(budget, request.dataset, request.loss, request.population_charge)


def check_charge_unit(population: Population | None, request: ReleaseRequest) -> None:
    """A charge reaches a population in its measure: one in another measure means the service did not
    convert it (or the population was recorded in another measure meanwhile), and is refused."""
    charge = request.population_charge
    if population is not None and population.measure is not None and type(charge) is not PrivacyLoss \
            and charge.unit != population.measure:
        raise Conflict(
            f"dataset {request.dataset!r} draws on population {population.name!r}, whose budgets are in "
            f"{population.measure}, but its charge came in {charge.unit}; nothing was charged. Restart the "
            "service so that it reads the population's measure again", field="dataset")


def _payload_text(payload: dict[str, Any]) -> str:
    """A stored answer's JSON text: orjson (a 10,000-key payload encodes ~10× faster), the same
    compact JSON as before; the stdlib for what orjson refuses (integers beyond 64 bits)."""
    try:
        return orjson.dumps(payload).decode()
    except TypeError:
        return json.dumps(payload, separators=(",", ":"))
