"""The SQL ledger shared by SQLite and PostgreSQL: one set of statements, two ways to lock.

Subclasses provide a transaction (`_transaction`), the DDL, and `_lock_spend_rows`, which must
make the spend rows of the windows a release touches exclusive for the rest of the
transaction (SQLite: `BEGIN IMMEDIATE` already holds the write lock; PostgreSQL: `SELECT ...
FOR UPDATE` in a fixed order). Statements use `?` placeholders; subclasses translate.

Tables: datasets (each dataset's window grid, measure and population, recorded once, see
base.DatasetGrid), clients, api_keys, caps (per client; win -1 = every window; client_id 0: a
dataset's own global cap from before populations), spend (running totals per dataset, window,
client; client_id 0 = all clients), charges (append-only), the population tables
(_sql_populations.py); caps, spend and charges hold beside each amount its δ in atto-units
(cap_delta_attos, delta_attos: 0 but on datasets accounted in approximate DP),
answers (unique per dataset and query key; the key includes the releasing client's sharing group),
answer_shapes (what each answer asked, without its values, and the group it was released in: the
index of free derivations, one row written with the answer), audit (append-only, hash-chained),
client_groups (the sharing group of each client put in one; a client without a row is alone).
"""

from __future__ import annotations

from dpflows.budget import PrivacyLoss
from dpflows.errors import InvalidInput
from dpflows.ledger._sql_answers import AnswerStore
from dpflows.ledger._sql_audit import AuditLog, _with_reuse
from dpflows.ledger._sql_base import EVERY_WINDOW, GLOBAL, Cursor, utc_now
from dpflows.ledger._sql_budgets import BudgetReads
from dpflows.ledger._sql_clients import ClientRegistry
from dpflows.ledger._sql_populations import TOTAL
from dpflows.ledger._sql_rules import (
    _check_budget,
    _insert_shape,
    _payload_text,
    add_delta_columns,
    backfill_answer_shapes,
    check_cap_unit,
    check_charge_unit,
    check_grid_matches,
    group_query_key,
    loss_from_row,
    rekey_answers,
)
from dpflows.ledger.base import (
    DatasetGrid,
    ReleaseReceipt,
    ReleaseRequest,
    ReusableAnswer,
    StoredAnswer,
    WindowBudget,
    check_group_name,
    check_horizon,
    effective_allocations,
    horizon_runs,
)


class SqlLedger(ClientRegistry, AuditLog, BudgetReads, AnswerStore):
    """Ledger logic in portable SQL; see the module docstring for what subclasses add."""

    #: whether `_lock_spend_rows` locks rows (and so needs each window's allocation holder) or the
    #: transaction already holds the only write lock (SQLite)
    _locks_rows = True

    def _lock_spend_rows(self, cur: Cursor, place: tuple[str, int], dataset: str, windows: tuple[int, ...],
                         client_id: int, holders: dict[int, str], legacy_holders: dict[int, str] | None,
                         horizon: bool) -> None:
        raise NotImplementedError

    def _allocation_holders(self, cur: Cursor, population: str, pwindows: list[int],
                            client_id: int) -> dict[int, str]:
        """Per population window, the population_spend row a charge by this client adds to: its group's (if
        allocated there) or '' (the pool)."""
        group = self._client_group(cur, client_id)
        if group is None:
            return dict.fromkeys(pwindows, "")
        rows = self._allocation_rows(cur, population)
        return {w: group if group in effective_allocations(rows, w) else "" for w in pwindows}

    # -- datasets ---------------------------------------------------------------------------

    def _grid(self, cur: Cursor, dataset: str) -> DatasetGrid | None:
        cur.execute("SELECT d.dataset, d.first_day, d.window_days, d.measure, d.population, p.measure FROM datasets d "
                    "LEFT JOIN populations p ON p.population = d.population WHERE d.dataset = ?", (dataset,))
        row = cur.fetchone()
        return None if row is None else DatasetGrid(row[0], row[1], int(row[2]), row[3], row[4], row[5])

    def _check_grid(self, cur: Cursor, grid: DatasetGrid) -> DatasetGrid:
        """Record the grid and population on first use; refuse any other grid, measure or population for the
        same dataset, and a dataset off its population's grid or measure (`_join_population`)."""
        recorded = self._grid(cur, grid.dataset)
        if recorded is None:
            offset = self._join_population(cur, grid)
            cur.execute(
                "INSERT INTO datasets (dataset, first_day, window_days, measure, registered_at, population, "
                "window_offset) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (dataset) DO NOTHING",
                (grid.dataset, grid.first_day, grid.window_days, grid.measure, utc_now(), grid.population, offset),
            )
            recorded = self._grid(cur, grid.dataset)
            assert recorded is not None  # inserted above or by a transaction that committed meanwhile
        check_grid_matches(recorded, grid)
        return recorded

    def register_dataset(self, grid: DatasetGrid) -> DatasetGrid:
        with self._transaction(write=True) as cur:
            return self._check_grid(cur, grid)

    def dataset_grid(self, dataset: str) -> DatasetGrid | None:
        with self._transaction(write=False) as cur:
            return self._grid(cur, dataset)

    # -- caps and spending ------------------------------------------------------------------

    def set_cap(self, dataset: str | None, cap: PrivacyLoss, *, client_id: int | None, window: int | None,
                grid: DatasetGrid | None = None, group: str | None = None, population: str | None = None) -> None:
        """A client's cap on a dataset (client_id), or a population's global cap (neither) or a sharing group's
        allocation of it (group): of `population`, windows on its grid; or of the dataset's population, windows
        of the dataset (window k is the population's k + the dataset's offset; None: every window).

        Allocations and the global cap are checked together, in the same transaction as the change:
        the allocations of any window never sum above its global cap (`check_allocations`)."""
        if client_id is not None and group is not None:
            raise InvalidInput("send client_id (a client's cap) or group (a group's allocation), not both",
                               field="group")
        if client_id is not None and dataset is None:
            raise InvalidInput("a client's cap is on a dataset: send dataset", field="dataset")
        if dataset is None and population is None:
            raise InvalidInput("send dataset or population", field="dataset")
        if group is not None:
            check_group_name(group)
        if client_id is not None:
            self.get_client(client_id)
        if window is not None and window < 0:
            raise InvalidInput(f"window={window} must be 0 or more (or omitted for every window)", field="window")
        with self._transaction(write=True) as cur:
            if client_id is None:  # before the grid: a first registration locks the population's row
                self._lock_allocations(cur, exclusive=True)
            recorded = (self._check_grid(cur, grid) if grid is not None
                        else None if dataset is None else self._grid(cur, dataset))
            if client_id is not None:
                assert dataset is not None
                check_cap_unit(recorded, cap)
                cur.execute(
                    "INSERT INTO caps (client_id, dataset, win, cap_nanos, cap_delta_attos, updated_at) "
                    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (client_id, dataset, win) DO UPDATE SET "
                    "cap_nanos = excluded.cap_nanos, cap_delta_attos = excluded.cap_delta_attos, "
                    "updated_at = excluded.updated_at",
                    (client_id, dataset, EVERY_WINDOW if window is None else window, cap.nanos, cap.delta_attos,
                     utc_now()),
                )
                return
            if population is not None:
                name, offset = population, 0
            else:
                assert dataset is not None
                name, offset = self._placement(cur, dataset)
            self._set_population_cap(cur, name, EVERY_WINDOW if window is None else window + offset, cap, group)

    def _lock_allocations(self, cur: Cursor, *, exclusive: bool) -> None:
        """Hold the allocations, global caps, horizon caps and group memberships still for the transaction:
        exclusive to change them, shared to charge. SQLite's write lock already does; PostgreSQL takes an
        advisory lock."""

    def _client_group(self, cur: Cursor, client_id: int) -> str | None:
        cur.execute("SELECT group_name FROM client_groups WHERE client_id = ?", (client_id,))
        row = cur.fetchone()
        return None if row is None else str(row[0])

    def window_budgets(self, dataset: str, client_id: int, windows: list[int]) -> list[WindowBudget]:
        with self._transaction(write=False) as cur:
            return self._budgets(cur, dataset, client_id, windows)

    def high_water(self) -> tuple[int, int]:
        """(charge rows, audit rows): both only ever grow, so a ledger holding fewer was restored from the past."""
        with self._transaction(write=False) as cur:
            cur.execute("SELECT (SELECT COUNT(*) FROM charges), (SELECT COUNT(*) FROM audit)")
            charges, audit = cur.fetchone()
        return int(charges), int(audit)

    def total_charged(self, dataset: str, window: int, client_id: int | None = None) -> PrivacyLoss:
        """Sum of the append-only charge rows (not the running totals): the audit of spending."""
        with self._transaction(write=False) as cur:
            if client_id is None:
                cur.execute(
                    "SELECT COALESCE(SUM(nanos), 0), COALESCE(SUM(delta_attos), 0) FROM charges "
                    "WHERE dataset = ? AND win = ?", (dataset, window)
                )
            else:
                cur.execute(
                    "SELECT COALESCE(SUM(nanos), 0), COALESCE(SUM(delta_attos), 0) FROM charges "
                    "WHERE dataset = ? AND win = ? AND client_id = ?",
                    (dataset, window, client_id),
                )
            row = cur.fetchone()
            return loss_from_row(row[0], row[1])

    # -- releases ---------------------------------------------------------------------------

    def find_reusable(self, dataset: str, query_key: str, client_id: int,
                      windows: tuple[int, ...]) -> ReusableAnswer | None:
        """The stored answer's id and date (not its payload) and this client's budgets in `windows`: one read."""
        with self._transaction(write=False) as cur:
            cur.execute("SELECT answer_id, created_at FROM answers WHERE dataset = ? AND query_key = ?",
                        (dataset, query_key))
            row = cur.fetchone()
            if row is None:
                return None
            return ReusableAnswer(row[0], row[1], tuple(self._budgets(cur, dataset, client_id,
                                                                      sorted(set(windows)))))

    def commit_release(self, request: ReleaseRequest) -> ReleaseReceipt:
        """Check every cap, then charge, store and audit in one transaction; or do nothing.

        The client's cap takes `request.loss` (the dataset's measure); the population's allocation, pool,
        global cap and horizon cap take `request.population_charge` (its measure), in the population
        windows the dataset's windows sit on."""
        windows = tuple(sorted(set(request.windows)))
        charge = request.population_charge
        with self._queued_audit(), self._transaction(write=True) as cur:  # queued audit rows ride along
            self._lock_allocations(cur, exclusive=False)  # first: a first registration locks the population's row
            if request.grid is not None:
                self._check_grid(cur, request.grid)
            name, offset = self._placement(cur, request.dataset)
            population = self._population(cur, name)
            check_charge_unit(population, request)
            horizon = population is not None and horizon_runs(population, [w + offset for w in windows]) is not None
            if self._locks_rows:
                legacy = self._has_legacy_caps(cur, request.dataset)
                holders = self._allocation_holders(cur, name, [w + offset for w in windows], request.client_id)
                legacy_holders = ({w: self._legacy_caps(cur, request.dataset, w, self._client_group(
                    cur, request.client_id)).holder for w in windows} if legacy else None)
                self._lock_spend_rows(cur, (name, offset), request.dataset, windows, request.client_id, holders,
                                      legacy_holders, horizon)
            # An identical query released meanwhile (another worker or host) wins: reuse it.
            existing = self._find_answer(cur, request.dataset, request.query_key)
            if existing is not None:
                self._append_audit(cur, _with_reuse(request.audit, existing.answer_id))
                return ReleaseReceipt(existing, reused=True, charged=PrivacyLoss.zero(),
                                      budgets=tuple(self._budgets(cur, request.dataset, request.client_id,
                                                                  list(windows))))
            # Check, without changing anything ...
            budgets = self._budgets(cur, request.dataset, request.client_id, list(windows))
            for budget in budgets:
                _check_budget(budget, request)
            if horizon:
                assert population is not None
                pwindows = [w + offset for w in windows]
                span = horizon_runs(population, pwindows)
                assert span is not None
                check_horizon(population, self._population_spend_range(cur, name, *span), pwindows, charge,
                              request.dataset)
            # ... then commit: charge rows, running totals, the answer, the audit row.
            at = utc_now()
            for budget in budgets:
                pw = budget.window + offset
                self._add_population_spend(cur, name, pw, budget.allocation_holder, charge)
                self._add_population_spend(cur, name, pw, TOTAL, charge)
                if budget.legacy is not None:
                    cur.execute(
                        "INSERT INTO group_spend (dataset, win, group_name, nanos) VALUES (?, ?, ?, ?) "
                        "ON CONFLICT (dataset, win, group_name) DO UPDATE SET "
                        "nanos = group_spend.nanos + excluded.nanos",
                        (request.dataset, budget.window, budget.legacy.holder, request.loss.nanos),
                    )
            nanos, delta = request.loss.nanos, request.loss.delta_attos
            for w in windows:
                cur.execute(
                    "INSERT INTO charges (client_id, dataset, win, nanos, delta_attos, answer_id, at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (request.client_id, request.dataset, w, nanos, delta, request.answer_id, at),
                )
                for cid in (request.client_id, GLOBAL):
                    cur.execute(
                        "INSERT INTO spend (dataset, win, client_id, nanos, delta_attos) VALUES (?, ?, ?, ?, ?) "
                        "ON CONFLICT (dataset, win, client_id) DO UPDATE SET nanos = spend.nanos + excluded.nanos, "
                        "delta_attos = spend.delta_attos + excluded.delta_attos",
                        (request.dataset, w, cid, nanos, delta),
                    )
            cur.execute(
                "INSERT INTO answers (answer_id, dataset, query_key, client_id, payload, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (request.answer_id, request.dataset, request.query_key, request.client_id,
                 _payload_text(request.payload), at),
            )
            self._append_audit(cur, request.audit)
            answer = StoredAnswer(request.answer_id, request.dataset, request.query_key, request.client_id,
                                  request.payload, at)
            _insert_shape(cur, answer, request.share_group)
            budgets = self._budgets(cur, request.dataset, request.client_id, list(windows))
            return ReleaseReceipt(answer, reused=False, charged=request.loss, budgets=tuple(budgets))


__all__ = [  # the ledgers, the service and the tests import these from here
    "EVERY_WINDOW", "GLOBAL", "Cursor", "SqlLedger", "_check_budget", "_with_reuse", "add_delta_columns",
    "backfill_answer_shapes", "check_cap_unit", "check_grid_matches", "group_query_key", "rekey_answers", "utc_now",
]
