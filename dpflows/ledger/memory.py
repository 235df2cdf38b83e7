"""In-memory ledger: the protocol's reference semantics, for tests and benchmarks.

One lock makes `commit_release` atomic within a process. Nothing is durable: never serve with it.
"""

from __future__ import annotations

import dataclasses
import threading

from dpflows.budget import PrivacyLoss
from dpflows.errors import Conflict, InvalidInput, NotFound
from dpflows.ledger._sql import (
    EVERY_WINDOW,
    GLOBAL,
    _check_budget,
    _with_reuse,
    check_cap_unit,
    check_charge_unit,
    check_grid_matches,
    utc_now,
)
from dpflows.ledger._sql_populations import TOTAL, _check_unit
from dpflows.ledger.base import (
    DEFAULT_POPULATION,
    GENESIS_HASH,
    ROLES,
    Allocation,
    AnswerShape,
    ApiKeyRecord,
    AuditEntry,
    Client,
    DatasetGrid,
    Population,
    ReleaseReceipt,
    ReleaseRequest,
    ReusableAnswer,
    ShapeFilter,
    StoredAnswer,
    WindowBudget,
    check_allocations,
    check_group_name,
    check_horizon,
    check_population_name,
    effective_allocations,
    horizon_runs,
    population_offset,
    rank_shapes,
    shape_of,
    sum_losses,
)


class MemoryLedger:
    """Dictionaries behind one lock; same behaviour as the SQL ledgers, checked by one contract suite."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._clients: dict[int, Client] = {}
        self._keys: dict[int, ApiKeyRecord] = {}
        self._key_hash: dict[str, int] = {}
        self._caps: dict[tuple[int, str, int], PrivacyLoss] = {}
        self._spend: dict[tuple[str, int, int], PrivacyLoss] = {}
        self._charges: list[tuple[int, str, int, PrivacyLoss, str]] = []
        self._answers: dict[str, StoredAnswer] = {}
        self._answer_by_key: dict[tuple[str, str], str] = {}
        self._shapes: dict[str, AnswerShape] = {}
        self._audit: list[AuditEntry] = []
        self._grids: dict[str, DatasetGrid] = {}
        self._groups: dict[int, str] = {}
        self._offsets: dict[str, int] = {}  # dataset -> population window of its window 0
        self._populations: dict[str, Population] = {}
        self._pop_caps: dict[tuple[str, int], PrivacyLoss] = {}  # (population, win) -> cap
        self._allocations: dict[tuple[str, str, int], PrivacyLoss] = {}  # (group, population, win) -> cap
        self._pop_spend: dict[tuple[str, int, str], PrivacyLoss] = {}  # (population, win, holder: group, '' or '*')

    def create_client(self, name: str, role: str) -> Client:
        if role not in ROLES:
            raise InvalidInput(f"role={role!r} is not a role; use one of {list(ROLES)}", field="role")
        if not name or len(name) > 128:
            raise InvalidInput(f"name={name!r} must be 1-128 characters", field="name")
        with self._lock:
            if any(c.name == name for c in self._clients.values()):
                raise Conflict(f"name={name!r} is taken by another client; choose another name", field="name")
            client = Client(len(self._clients) + 1, name, role, utc_now())
            self._clients[client.id] = client
            return client

    def _grouped(self, client: Client) -> Client:
        return dataclasses.replace(client, group=self._groups.get(client.id))

    def get_client(self, client_id: int) -> Client:
        try:
            return self._grouped(self._clients[client_id])
        except KeyError:
            raise NotFound(f"client id={client_id} does not exist", field="client_id") from None

    def client_by_name(self, name: str) -> Client:
        for client in self._clients.values():
            if client.name == name:
                return self._grouped(client)
        raise NotFound(f"client name={name!r} does not exist", field="name")

    def list_clients(self) -> list[Client]:
        return [self._grouped(c) for c in sorted(self._clients.values(), key=lambda c: c.id)]

    def set_group(self, client_id: int, group: str | None) -> Client:
        if group is not None:
            check_group_name(group)
        self.get_client(client_id)
        with self._lock:
            if group is None:
                self._groups.pop(client_id, None)
            else:
                self._groups[client_id] = group
        return self.get_client(client_id)

    def add_key(self, client_id: int, key_hash: str, prefix: str) -> ApiKeyRecord:
        self.get_client(client_id)
        with self._lock:
            record = ApiKeyRecord(len(self._keys) + 1, client_id, prefix, utc_now(), None)
            self._keys[record.id] = record
            self._key_hash[key_hash] = record.id
            return record

    def client_for_key_hash(self, key_hash: str) -> Client | None:
        key_id = self._key_hash.get(key_hash)
        if key_id is None or self._keys[key_id].revoked_at is not None:
            return None
        return self._grouped(self._clients[self._keys[key_id].client_id])

    def list_keys(self, client_id: int) -> list[ApiKeyRecord]:
        return [k for k in self._keys.values() if k.client_id == client_id]

    def revoke_key(self, key_id: int) -> ApiKeyRecord:
        with self._lock:
            if key_id not in self._keys:
                raise NotFound(f"key id={key_id} does not exist", field="key_id")
            if self._keys[key_id].revoked_at is None:
                self._keys[key_id] = dataclasses.replace(self._keys[key_id], revoked_at=utc_now())
            return self._keys[key_id]

    def register_dataset(self, grid: DatasetGrid) -> DatasetGrid:
        with self._lock:
            recorded = self._grids.get(grid.dataset)
            if recorded is None:
                check_population_name(grid.population)
                found = self._populations.get(grid.population, Population(grid.population))
                if found.first_day is None:
                    found = dataclasses.replace(found, first_day=grid.first_day, window_days=grid.window_days)
                if found.measure is None:
                    found = dataclasses.replace(found, measure=grid.population_measure or grid.measure)
                if grid.population_measure is not None and found.measure != grid.population_measure:
                    raise Conflict(f"population {found.name!r} has budgets in {found.measure}, not "
                                   f"{grid.population_measure}", field="population")
                offset = population_offset(found, grid)
                self._populations[grid.population] = found
                recorded = dataclasses.replace(grid, population_measure=found.measure)
                self._grids[grid.dataset], self._offsets[grid.dataset] = recorded, offset
            check_grid_matches(recorded, grid)
            return dataclasses.replace(recorded, population_measure=self._populations[recorded.population].measure)

    def dataset_grid(self, dataset: str) -> DatasetGrid | None:
        recorded = self._grids.get(dataset)
        if recorded is None:
            return None
        return dataclasses.replace(recorded, population_measure=self._populations[recorded.population].measure)

    def _placement(self, dataset: str) -> tuple[str, int]:
        grid = self._grids.get(dataset)
        return (DEFAULT_POPULATION, 0) if grid is None else (grid.population, self._offsets[dataset])

    def population_of(self, dataset: str) -> tuple[str, int]:
        return self._placement(dataset)

    def population(self, name: str) -> Population | None:
        return self._populations.get(name)

    def set_horizon_cap(self, name: str, windows: int | None, cap: PrivacyLoss | None) -> Population:
        check_population_name(name)
        if (windows is None) != (cap is None) or (windows is not None and windows < 1):
            raise InvalidInput(f"horizon windows={windows} must be 1 or more, sent with its cap (or both omitted to "
                               "remove the horizon cap)", field="horizon_windows")
        with self._lock:
            found = self._populations.get(name, Population(name))
            _check_unit(found, cap)
            self._populations[name] = dataclasses.replace(found, horizon_windows=windows, horizon_cap=cap)
            return self._populations[name]

    def set_cap(self, dataset: str | None, cap: PrivacyLoss, *, client_id: int | None, window: int | None,
                grid: DatasetGrid | None = None, group: str | None = None, population: str | None = None) -> None:
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
        with self._lock:
            recorded = (self.register_dataset(grid) if grid is not None
                        else None if dataset is None else self.dataset_grid(dataset))
            if client_id is not None:
                assert dataset is not None
                check_cap_unit(recorded, cap)
                self._caps[(client_id, dataset, EVERY_WINDOW if window is None else window)] = PrivacyLoss(
                    cap.nanos, cap.delta_attos)
                return
            name, offset = (population, 0) if population is not None else self._placement(dataset or "")
            check_population_name(name)
            found = self._populations.get(name, Population(name))
            _check_unit(found, cap)
            if found.measure is None and type(cap) is not PrivacyLoss:
                found = dataclasses.replace(found, measure=cap.measure)
            win = EVERY_WINDOW if window is None else window + offset
            caps, allocations = dict(self._pop_caps), dict(self._allocations)
            amount = PrivacyLoss(cap.nanos, cap.delta_attos)
            if group is not None:
                allocations[(group, name, win)] = amount
            else:
                caps[(name, win)] = amount
            check_allocations(name, {w: c for (p, w), c in caps.items() if p == name},
                              self._allocation_rows(name, allocations))
            self._pop_caps, self._allocations, self._populations[name] = caps, allocations, found

    @staticmethod
    def _allocation_rows(population: str, allocations: dict[tuple[str, str, int], PrivacyLoss]
                         ) -> list[tuple[str, int, PrivacyLoss]]:
        return [(g, w, n) for (g, p, w), n in allocations.items() if p == population]

    def list_allocations(self, dataset: str | None = None, *, population: str | None = None) -> list[Allocation]:
        name = population if population is not None else self._placement(dataset or "")[0]
        rows = sorted(self._allocation_rows(name, self._allocations), key=lambda r: (r[0], r[1]))
        return [Allocation(g, None if w == EVERY_WINDOW else w, n) for g, w, n in rows]

    def population_caps(self, name: str) -> list[tuple[int | None, PrivacyLoss]]:
        rows = sorted(((w, n) for (p, w), n in self._pop_caps.items() if p == name), key=lambda r: r[0])
        return [(None if w == EVERY_WINDOW else w, n) for w, n in rows]

    def population_spent(self, name: str, window: int) -> PrivacyLoss:
        return self._pop_spend.get((name, window, TOTAL), PrivacyLoss.zero())

    def _cap(self, dataset: str, window: int, client_id: int) -> PrivacyLoss | None:
        cap = self._caps.get((client_id, dataset, window))
        return cap if cap is not None else self._caps.get((client_id, dataset, EVERY_WINDOW))

    def _population_cap(self, name: str, window: int) -> PrivacyLoss | None:
        return self._pop_caps.get((name, window), self._pop_caps.get((name, EVERY_WINDOW)))

    def window_budgets(self, dataset: str, client_id: int, windows: list[int]) -> list[WindowBudget]:
        with self._lock:
            group = self._groups.get(client_id)
            name, offset = self._placement(dataset)
            found = self._populations.get(name)
            rows = self._allocation_rows(name, self._allocations)
            out = []
            for w in windows:
                pw = w + offset
                global_cap = self._population_cap(name, pw)
                allocations = effective_allocations(rows, pw)
                group_cap = None if group is None or group not in allocations else allocations[group]
                allocated, zero = sum_losses(allocations.values()), PrivacyLoss.zero()
                out.append(WindowBudget(
                    w, self._cap(dataset, w, client_id), self._spend.get((dataset, w, client_id), zero),
                    global_cap, self._pop_spend.get((name, pw, TOTAL), zero),
                    group=group, group_cap=group_cap,
                    group_spent=(self._pop_spend.get((name, pw, group), zero)
                                 if group is not None and group_cap is not None else zero),
                    pool_cap=(None if global_cap is None
                              else PrivacyLoss(max(global_cap.nanos - allocated.nanos, 0),
                                               max(global_cap.delta_attos - allocated.delta_attos, 0))),
                    pool_spent=self._pop_spend.get((name, pw, ""), zero) if group_cap is None else zero,
                    population=name, population_window=pw, unit=None if found is None else found.measure,
                ))
            return out

    def high_water(self) -> tuple[int, int]:
        return len(self._charges), len(self._audit)

    def total_charged(self, dataset: str, window: int, client_id: int | None = None) -> PrivacyLoss:
        return sum_losses(n for (c, d, w, n, _) in self._charges
                          if d == dataset and w == window and (client_id is None or c == client_id))

    def find_answer(self, dataset: str, query_key: str) -> StoredAnswer | None:
        answer_id = self._answer_by_key.get((dataset, query_key))
        return None if answer_id is None else self._answers[answer_id]

    def find_reusable(self, dataset: str, query_key: str, client_id: int,
                      windows: tuple[int, ...]) -> ReusableAnswer | None:
        with self._lock:
            answer = self.find_answer(dataset, query_key)
            if answer is None:
                return None
            return ReusableAnswer(answer.answer_id, answer.created_at,
                                  tuple(self.window_budgets(dataset, client_id, sorted(set(windows)))))

    def get_answer(self, answer_id: str) -> StoredAnswer | None:
        return self._answers.get(answer_id)

    def list_answers(self, dataset: str, kind: str | None = None) -> list[StoredAnswer]:
        with self._lock:
            answers = [a for a in self._answers.values() if a.dataset == dataset]
        answers.sort(key=lambda a: (a.created_at, a.answer_id))
        return [a for a in answers if kind is None or (a.payload.get("query") or {}).get("kind") == kind]

    def delete_answers(self, dataset: str, before_window: int, *, keep_client: int | None = None) -> int:
        with self._lock:
            ids = {a for (c, d, w, _, a) in self._charges if d == dataset and w < before_window and c != keep_client}
            deleted = 0
            for answer_id in ids:
                answer = self._answers.pop(answer_id, None)
                if answer is not None:
                    self._answer_by_key.pop((answer.dataset, answer.query_key), None)
                    deleted += 1
                self._shapes.pop(answer_id, None)
        return deleted

    def find_answer_shapes(self, dataset: str, where: ShapeFilter) -> list[AnswerShape]:
        with self._lock:
            shapes = [s for s in self._shapes.values() if s.dataset == dataset and where.admits(s)]
        return rank_shapes(shapes, where)

    def commit_release(self, request: ReleaseRequest) -> ReleaseReceipt:
        windows = sorted(set(request.windows))
        charge = request.population_charge
        with self._lock:
            if request.grid is not None:
                self.register_dataset(request.grid)
            name, offset = self._placement(request.dataset)
            found = self._populations.get(name)
            check_charge_unit(found, request)
            existing = self.find_answer(request.dataset, request.query_key)
            if existing is not None:
                self.append_audit(_with_reuse(request.audit, existing.answer_id))
                return ReleaseReceipt(existing, reused=True, charged=PrivacyLoss.zero(),
                                      budgets=tuple(self.window_budgets(request.dataset, request.client_id, windows)))
            budgets = self.window_budgets(request.dataset, request.client_id, windows)
            for budget in budgets:
                _check_budget(budget, request)
            pwindows = [w + offset for w in windows]
            span = None if found is None else horizon_runs(found, pwindows)
            if found is not None and span is not None:
                spent = {w: self._pop_spend.get((name, w, TOTAL), PrivacyLoss.zero())
                         for w in range(span[0], span[1] + 1)}
                check_horizon(found, spent, pwindows, charge, request.dataset)
            zero = PrivacyLoss.zero()
            population_amount = PrivacyLoss(charge.nanos, charge.delta_attos)
            amount = PrivacyLoss(request.loss.nanos, request.loss.delta_attos)
            for budget in budgets:
                for holder in (budget.allocation_holder, TOTAL):
                    key3 = (name, budget.window + offset, holder)
                    self._pop_spend[key3] = self._pop_spend.get(key3, zero) + population_amount
            for w in windows:
                self._charges.append((request.client_id, request.dataset, w, amount, request.answer_id))
                for cid in (request.client_id, GLOBAL):
                    key = (request.dataset, w, cid)
                    self._spend[key] = self._spend.get(key, zero) + amount
            answer = StoredAnswer(request.answer_id, request.dataset, request.query_key, request.client_id,
                                  request.payload, utc_now())
            self._answers[answer.answer_id] = answer
            self._answer_by_key[(request.dataset, request.query_key)] = answer.answer_id
            shape = shape_of(answer)
            if shape is not None:
                self._shapes[answer.answer_id] = dataclasses.replace(shape, share_group=request.share_group)
            self.append_audit(request.audit)
            return ReleaseReceipt(answer, reused=False, charged=request.loss,
                                  budgets=tuple(self.window_budgets(request.dataset, request.client_id, windows)))

    def append_audit(self, entry: AuditEntry) -> AuditEntry:
        with self._lock:
            prev = self._audit[-1].row_hash if self._audit else GENESIS_HASH
            at = utc_now()
            row = dataclasses.replace(entry, id=len(self._audit) + 1, at=at, prev_hash=prev,
                                      row_hash=entry.chain_hash(prev, at))
            self._audit.append(row)
            return row

    def audit_reuse(self, entry: AuditEntry, windows: tuple[int, ...]) -> list[WindowBudget]:
        if entry.dataset is None or entry.client_id is None:
            raise InvalidInput("a reuse audit row names its dataset and client", field="dataset")
        with self._lock:
            self.append_audit(entry)
            return self.window_budgets(entry.dataset, entry.client_id, sorted(set(windows)))

    def queue_audit(self, entry: AuditEntry) -> None:
        """Nothing here is durable, so nothing is worth batching: appended at once."""
        self.append_audit(entry)

    def flush_audit(self) -> int:
        return 0

    def configure_audit_queue(self, *, window_s: float, max_rows: int) -> None:
        """Rows are appended at once."""

    def read_audit(self, *, after_id: int = 0, limit: int = 100) -> list[AuditEntry]:
        if not 1 <= limit <= 1000:
            raise InvalidInput(f"limit={limit} must be between 1 and 1000", field="limit")
        return [e for e in self._audit if e.id > after_id][:limit]

    def close(self) -> None:
        """Nothing to release."""


