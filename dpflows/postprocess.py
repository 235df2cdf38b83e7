"""Post-processing of released answers: consistent tables and sums (never costs budget).

Everything here reads released noisy values only, never data: it is post-processing of a DP
release and so costs nothing and is free to repeat (design §3). Everything is deterministic,
so a reused answer is post-processed to the same numbers every time.

Consistent tables (``consistent=True``)
---------------------------------------
An answer's keys form a two-way table: flows origin × destination, presence zone × hour,
patterns weekday × hour. Raw noisy counts ``Y`` are unbiased but can be negative, and once a
client clamps them their sums are biased upward. ``consistent_table`` returns a table ``X`` of
non-negative integers whose row sums, column sums and grand total agree exactly, computed in
three steps in the spirit of the Census TopDown algorithm (estimate totals first, then the
cells under those totals):

1. **Totals.** The only measurement is the cell vector, so the least-squares (and unbiased)
   estimates of row totals ``r``, column totals ``c`` and the grand total ``T`` are the sums of
   the noisy cells. They are integers and already agree (``Σr = Σc = T``).
2. **Non-negative totals.** ``T' = max(T, 0)``; ``r'`` is the Euclidean projection of ``r``
   onto ``{r' ≥ 0, Σr' = T'}`` (sort-based simplex projection), rounded to integers by largest
   remainder with the sum kept at ``T'``; likewise ``c'``. When every raw total is already
   ≥ 0, ``r' = r``, ``c' = c`` and ``T' = T`` **exactly**: the consistent totals are then the
   unbiased raw sums, with no clamping bias.
3. **Cells.** ``X*`` = the Euclidean (least-squares) projection of ``Y`` onto the
   transportation polytope ``{X ≥ 0, row sums r', column sums c'}``, computed by exact block
   coordinate ascent on its dual (``X = max(0, Y + u·1ᵀ + 1·vᵀ)``; each block update is an
   exact simplex projection per row or column). Then **controlled rounding**: a bipartite
   max-flow picks which cells to round up so that every cell is ``floor(X*)`` or ``ceil(X*)``
   and the integer margins are met exactly (such a rounding always exists for a two-way table
   with integer margins; Cox 1987).

Guarantees: the output is non-negative integers; its row sums, column sums and total equal
``r'``, ``c'`` and ``T'`` exactly (always: the last rounding phase falls back to an
unrestricted transportation flow, which is feasible whenever ``Σr' = Σc'``); each cell is
within 1 of the least-squares projection whenever the dual ascent converged (it is run to a
tolerance of 1e-9 on the margins). What it does not guarantee: consistent cells are not
unbiased (non-negativity moves small cells up and others down), so analysts who sum cells
themselves should sum the raw values, which are kept alongside.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

from dpflows.errors import InvalidInput

#: Convergence tolerance of the dual ascent, in counts on the column margins.
TOLERANCE = 1e-9
MAX_SWEEPS = 20_000

#: How the keys of each kind form a table, and what its margins are called.
TABLE_LAYOUT: dict[tuple[str, ...], tuple[str, str]] = {
    ("origin", "destination"): ("departures", "arrivals"),
    ("zone", "hour"): ("by_zone", "by_hour"),
    ("weekday", "hour"): ("by_weekday", "by_hour"),
}


# -- step 2: non-negative integer vectors with a fixed sum --------------------------------------


def project_simplex_rows(z: np.ndarray, radius: np.ndarray) -> np.ndarray:
    """Euclidean projection of each row of `z` onto {x ≥ 0, Σx = radius[row]} (radius ≥ 0)."""
    z = np.asarray(z, dtype=float)
    return np.maximum(z - simplex_threshold(z, radius)[:, None], 0.0)


def simplex_threshold(z: np.ndarray, radius: np.ndarray) -> np.ndarray:
    """θ per row with Σ max(z − θ, 0) = radius (the largest such θ when radius is 0)."""
    z = np.asarray(z, dtype=float)
    radius = np.asarray(radius, dtype=float)
    n = z.shape[1]
    s = -np.sort(-z, axis=1)  # descending
    cs = np.cumsum(s, axis=1) - radius[:, None]
    k = np.arange(1, n + 1)
    cond = s - cs / k > 0
    # rho = the last index where cond holds (cond is true on a prefix); none when radius == 0.
    any_true = cond.any(axis=1)
    rho = np.where(any_true, n - 1 - np.argmax(cond[:, ::-1], axis=1), 0)
    return np.where(any_true, cs[np.arange(len(z)), rho] / (rho + 1), s[:, 0])


def round_fixed_sum(x: np.ndarray, total: int) -> np.ndarray:
    """Round non-negative reals to non-negative integers with the given sum, by largest remainder."""
    floor = np.floor(x + 1e-12).astype(np.int64)
    floor = np.maximum(floor, 0)
    short = int(total - floor.sum())
    frac = x - floor
    if short > 0:
        order = np.argsort(-frac, kind="stable")
        floor[order[:short]] += 1
    elif short < 0:  # only from float error: take from the smallest fractions of positive cells
        positive = [int(i) for i in np.argsort(frac, kind="stable") if floor[i] > 0]
        for i in positive[:-short]:
            floor[i] -= 1
    return floor


def nonnegative_total(values: np.ndarray, total: int) -> np.ndarray:
    """The closest non-negative integer vector summing to `total`; `values` itself when already ≥ 0."""
    values = np.asarray(values, dtype=np.int64)
    if total <= 0:
        return np.zeros_like(values)
    if values.min() >= 0 and int(values.sum()) == total:
        return values.copy()
    projected = project_simplex_rows(values[None, :].astype(float), np.array([float(total)]))[0]
    return round_fixed_sum(projected, total)


# -- step 3a: least-squares projection onto the transportation polytope --------------------------


def project_transportation(y: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, bool]:
    """argmin ‖X − y‖² over X ≥ 0 with row sums `rows` and column sums `cols` (Σrows = Σcols).

    Block coordinate ascent on the dual: X = max(0, y + u_i + v_j); for fixed v, the u-block
    optimum makes every row sum exact (a simplex projection per row), and likewise for v.
    Returns X after a row update (rows exact) and whether the columns met TOLERANCE.
    """
    y = np.asarray(y, dtype=float)
    r, c = rows.astype(float), cols.astype(float)
    v = np.zeros(y.shape[1])
    x = y
    for _ in range(MAX_SWEEPS):
        u = -simplex_threshold(y + v[None, :], r)  # rows exact for this v
        x = np.maximum(y + u[:, None] + v[None, :], 0.0)
        if np.max(np.abs(x.sum(axis=0) - c)) <= TOLERANCE:
            return x, True
        v = -simplex_threshold((y + u[:, None]).T, c)  # columns exact for this u
    return x, False


# -- step 3b: controlled rounding by max-flow -----------------------------------------------------


class _Flow:
    """Dinic's max-flow on a small graph with integer capacities."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.head: list[list[int]] = [[] for _ in range(n)]
        self.to: list[int] = []
        self.cap: list[int] = []

    def add(self, a: int, b: int, cap: int) -> int:
        self.head[a].append(len(self.to))
        self.to.append(b)
        self.cap.append(cap)
        self.head[b].append(len(self.to))
        self.to.append(a)
        self.cap.append(0)
        return len(self.to) - 2

    def run(self, s: int, t: int) -> int:
        total = 0
        while True:
            level = [-1] * self.n
            level[s] = 0
            queue = deque([s])
            while queue:
                a = queue.popleft()
                for e in self.head[a]:
                    if self.cap[e] > 0 and level[self.to[e]] < 0:
                        level[self.to[e]] = level[a] + 1
                        queue.append(self.to[e])
            if level[t] < 0:
                return total
            it = [0] * self.n
            while (pushed := self._push(s, t, level, it)) > 0:
                total += pushed
        return total

    def _push(self, s: int, t: int, level: list[int], it: list[int]) -> int:
        # Iterative DFS along the level graph; returns the bottleneck of one augmenting path.
        path: list[int] = []
        a = s
        while True:
            if a == t:
                f = min(self.cap[e] for e in path)
                for e in path:
                    self.cap[e] -= f
                    self.cap[e ^ 1] += f
                return f
            advanced = False
            while it[a] < len(self.head[a]):
                e = self.head[a][it[a]]
                b = self.to[e]
                if self.cap[e] > 0 and level[b] == level[a] + 1:
                    path.append(e)
                    a = b
                    advanced = True
                    break
                it[a] += 1
            if not advanced:
                if not path:
                    return 0
                level[a] = -1  # dead end
                e = path.pop()
                a = self.to[e ^ 1]
                it[a] += 1


def controlled_round(x: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Integers ≥ 0 with row sums `rows`, column sums `cols`; each cell floor(x) or ceil(x) if possible."""
    x = np.maximum(np.asarray(x, dtype=float), 0.0)
    base = np.floor(x + 1e-9).astype(np.int64)
    frac = x - base
    need_r = rows.astype(np.int64) - base.sum(axis=1)
    need_c = cols.astype(np.int64) - base.sum(axis=0)
    # Float error can leave the floor a hair above a margin: lower the largest-fraction-free cells.
    for axis, need in ((1, need_r), (0, need_c)):
        for line_no in np.flatnonzero(need < 0):
            line = base[line_no] if axis == 1 else base[:, line_no]
            while need[line_no] < 0:
                other = int(np.argmax(line))
                line[other] -= 1
                need[line_no] += 1
                if axis == 1:
                    need_c[other] += 1
                else:
                    need_r[other] += 1
    n_r, n_c = base.shape
    want = int(need_r.sum())
    if want == 0 or int(need_c.sum()) != want or need_r.min() < 0 or need_c.min() < 0:
        if want != 0 or int(need_c.sum()) != 0:
            raise InvalidInput("table margins disagree; consistent post-processing needs Σrows = Σcols")
        return base
    s, t = n_r + n_c, n_r + n_c + 1
    flow = _Flow(n_r + n_c + 2)
    for i in range(n_r):
        flow.add(s, i, int(need_r[i]))
    for j in range(n_c):
        flow.add(n_r + j, t, int(need_c[j]))
    edges: list[tuple[int, int, int]] = []
    # Phase 1: round up cells with a fractional part, largest first (the least-squares choice).
    order = np.argsort(-frac, axis=None, kind="stable")
    for flat in order:
        i, j = divmod(int(flat), n_c)
        if frac[i, j] > 1e-9:
            edges.append((i, j, flow.add(i, n_r + j, 1)))
    got = flow.run(s, t)
    if got < want:  # Phase 2 (only after non-convergence): any cell up by one, then without limit.
        for i in range(n_r):
            for j in range(n_c):
                if frac[i, j] <= 1e-9:
                    edges.append((i, j, flow.add(i, n_r + j, 1)))
        got += flow.run(s, t)
    if got < want:
        for i in range(n_r):
            for j in range(n_c):
                edges.append((i, j, flow.add(i, n_r + j, want)))
        got += flow.run(s, t)
    out = base.copy()
    for i, j, e in edges:
        out[i, j] += flow.cap[e ^ 1]
    return out


# -- the public entry points -------------------------------------------------------------------


@dataclass(frozen=True)
class ConsistentTable:
    """A consistent table and its margins; `converged` says the cells are within 1 of least squares."""

    cells: np.ndarray  # (n_rows, n_cols) int64 ≥ 0
    row_totals: np.ndarray
    col_totals: np.ndarray
    total: int
    converged: bool


def consistent_table(y: np.ndarray) -> ConsistentTable:
    """Non-negative integer table with exactly agreeing margins, from noisy integer cells `y`."""
    y = np.asarray(y, dtype=np.int64)
    if y.ndim != 2 or y.size == 0:
        raise InvalidInput("consistent post-processing needs a non-empty two-way table")
    total = max(int(y.sum()), 0)
    rows = nonnegative_total(y.sum(axis=1), total)
    cols = nonnegative_total(y.sum(axis=0), total)
    if total == 0:
        return ConsistentTable(np.zeros_like(y), rows, cols, 0, True)
    x, converged = project_transportation(y.astype(float), rows, cols)
    cells = controlled_round(x, rows, cols)
    return ConsistentTable(cells, rows, cols, total, converged)


def table_shape(key_fields: tuple[str, ...], keys: dict[str, list[Any]]) -> tuple[list[Any], list[Any]]:
    """Row and column labels of an answer's keys, which are released row-major (queries.py)."""
    if tuple(key_fields) not in TABLE_LAYOUT:
        raise InvalidInput(f"answers keyed by {list(key_fields)} do not form a two-way table")
    first, second = key_fields
    row_labels = list(dict.fromkeys(keys[first]))
    col_labels = list(dict.fromkeys(keys[second]))
    if len(keys[first]) != len(row_labels) * len(col_labels):
        raise InvalidInput("the answer's keys are not a full two-way table")
    return row_labels, col_labels


def table_totals(key_fields: tuple[str, ...], keys: dict[str, list[Any]], values: np.ndarray) -> dict[str, Any]:
    """Row, column and grand totals of a row-major table of values, labelled by key."""
    row_labels, col_labels = table_shape(key_fields, keys)
    table = np.asarray(values, dtype=np.int64).reshape(len(row_labels), len(col_labels))
    row_name, col_name = TABLE_LAYOUT[tuple(key_fields)]
    return {
        row_name: {str(k): int(v) for k, v in zip(row_labels, table.sum(axis=1), strict=True)},
        col_name: {str(k): int(v) for k, v in zip(col_labels, table.sum(axis=0), strict=True)},
        "total": int(table.sum()),
    }


def make_consistent(key_fields: tuple[str, ...], keys: dict[str, list[Any]], values: np.ndarray) -> ConsistentTable:
    """Consistent post-processing of an answer's released values, laid out as its two-way table."""
    row_labels, col_labels = table_shape(key_fields, keys)
    return consistent_table(np.asarray(values, dtype=np.int64).reshape(len(row_labels), len(col_labels)))
