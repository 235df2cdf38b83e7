"""Pre-drawn noise (issue 16 item 1, dpflows/noise_pool.py): each rule of the pool, tested.

Two sources of draws: the pool's own rules (first in first out, used once, fallback, the memory
bound) are checked exactly with a source that numbers its draws 1, 2, 3, … (a draw is then
recognisable wherever it turns up); everything about the noise itself (its law, that forked
workers draw their own, that the service charges exactly as before, that a refused query's
draws are gone) with the real source, OpenDP's measurement on zeros (dpflows.mechanisms).
"""

from __future__ import annotations

import datetime as dt
import itertools
import math
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from dpflows import noise_pool
from dpflows.budget import Epsilon, Rho
from dpflows.errors import BudgetExceeded
from dpflows.mechanisms import (
    DISCRETE_GAUSSIAN,
    DISCRETE_LAPLACE,
    MechanismError,
    add_noise,
    configure_noise_pool,
    privacy_loss,
    release_counts,
    release_counts_gaussian,
    scale_for_epsilon,
    scale_for_rho,
    stock_noise,
)
from dpflows.noise_pool import NoisePool
from dpflows.queries import make_spec, prepare
from dpflows.service import Policy, QueryRequest, Service

KEY = (DISCRETE_LAPLACE, 5.0)


class Numbered:
    """A draw source whose values are 1, 2, 3, … per stock in the order drawn: each draw is recognisable."""

    def __init__(self, first: int = 1) -> None:
        self.first = first
        self.counters: dict[tuple[str, float], Iterator[int]] = {}
        self.lock = threading.Lock()
        self.drawn = 0

    def __call__(self, mechanism: str, scale: float, n: int) -> np.ndarray:
        with self.lock:
            self.drawn += n
            counter = self.counters.setdefault((mechanism, scale), itertools.count(self.first))
            return np.fromiter(itertools.islice(counter, n), dtype=np.int64, count=n)


@pytest.fixture(autouse=True)
def no_process_pool() -> Iterator[None]:
    """Every test leaves the process without a pool, as the rest of the suite expects."""
    configure_noise_pool(0)
    yield
    configure_noise_pool(0)


# -- the pool's rules, exactly -------------------------------------------------------------------


def test_draws_are_taken_first_in_first_out_and_once() -> None:
    pool = NoisePool(Numbered(), 50_000, [KEY], start=False)
    pool.fill()
    assert pool.level(*KEY) == 50_000
    taken = [pool.take(*KEY, n) for n in (3, 10_000, 8190, 1, 20_000)]
    assert all(t is not None for t in taken)
    flat = np.concatenate(taken)  # type: ignore[arg-type]
    assert flat.tolist() == list(range(1, len(flat) + 1))  # oldest first, across chunk edges, none twice
    assert pool.level(*KEY) == 50_000 - len(flat)
    assert pool.hits == 5


def test_a_stock_above_low_water_waits_for_quiet_time_and_one_below_refills_at_once(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Back-to-back requests do not share the cores with the refill until a stock runs low (LOW_WATER)."""
    monkeypatch.setattr(noise_pool, "QUIET_S", 60.0)  # no quiet time during this test after the first take
    pool = NoisePool(Numbered(), 50_000, [KEY])
    assert pool.wait_full(30)  # nothing was taken yet: quiet, filled at once
    assert pool.take(*KEY, 10_000) is not None
    time.sleep(0.3)
    assert pool.level(*KEY) == 40_000  # above half its share: waits for quiet time
    assert pool.take(*KEY, 20_000) is not None  # 20,000: below half
    deadline = time.monotonic() + 30
    while pool.level(*KEY) <= 25_000 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert 25_000 < pool.level(*KEY) < 50_000  # refilled past LOW_WATER at once, the rest left for quiet time
    pool.close()


def test_concurrent_takers_never_get_the_same_draw() -> None:
    source = Numbered()
    pool = NoisePool(source, 200_000, [KEY])  # the refill thread runs while they take
    assert pool.wait_full(30)
    got: list[np.ndarray] = []
    lock = threading.Lock()

    def taker() -> None:
        for _ in range(40):
            out = pool.take(*KEY, 997)
            if out is not None:
                with lock:
                    got.append(out)

    threads = [threading.Thread(target=taker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    pool.close()
    values = np.concatenate(got)
    assert len(values) >= 200  # the first 200 takes at least found the stock full
    assert len(np.unique(values)) == len(values), "a draw was handed out twice"
    assert values.min() >= 1 and values.max() <= source.drawn


def test_short_stock_falls_back_whole_and_keeps_its_draws() -> None:
    pool = NoisePool(Numbered(), 10_000, [KEY], start=False)
    pool.fill()
    assert pool.take(*KEY, 10_001) is None  # never part pooled, part fresh
    assert pool.level(*KEY) == 10_000 and pool.misses == 1
    assert pool.take(DISCRETE_LAPLACE, 6.0, 10) is None  # a scale nobody declared: no stock at all
    first = pool.take(*KEY, 10)
    assert first is not None and first.tolist() == list(range(1, 11))


def test_taken_draws_are_never_returned_even_if_the_caller_drops_them() -> None:
    pool = NoisePool(Numbered(), 30_000, [KEY], start=False)
    pool.fill()
    refused = pool.take(*KEY, 1000)  # e.g. a query refused at commit: the request drops its noise
    assert refused is not None
    del refused
    after = pool.take(*KEY, 1000)
    assert after is not None and after[0] == 1001  # the next taker starts past them
    assert pool.level(*KEY) == 28_000


def test_memory_is_bounded_by_the_capacity_across_stocks() -> None:
    keys = [(DISCRETE_LAPLACE, float(s)) for s in (2, 3, 5)]
    source = Numbered()
    pool = NoisePool(source, 100_000, keys)
    peak = 0
    for _ in range(200):  # sample while the thread fills and a taker drains
        peak = max(peak, pool.held())
        pool.take(*keys[0], 5000)
    assert pool.wait_full(30)
    peak = max(peak, pool.held())
    assert peak <= 100_000
    assert all(pool.level(*k) == 100_000 // 3 for k in keys)
    pool.stock([(DISCRETE_GAUSSIAN, 4.0)])  # a fourth stock: every share shrinks, the held draws too
    assert pool.held() <= 100_000 and pool.level(*keys[1]) == 25_000
    assert pool.wait_full(30) and pool.held() <= 100_000
    pool.close()
    assert pool.held() == 0


def test_zero_capacity_is_no_pool() -> None:
    configure_noise_pool(0)
    assert noise_pool.current() is None
    assert noise_pool.take(*KEY, 10) is None


# -- the noise itself: the real source ------------------------------------------------------------


def test_addition_is_overflow_checked() -> None:
    big = np.array([2**63 - 10, -(2**63) + 10, 5], dtype=np.int64)
    assert add_noise(big, np.array([9, -9, -7], dtype=np.int64)).tolist() == [2**63 - 1, -(2**63) + 1, -2]
    for noise in ([10, 0, 0], [0, -11, 0]):
        with pytest.raises(MechanismError, match="64 bits") as info:
            add_noise(big, np.array(noise, dtype=np.int64))
        assert str(2**63 - 10) not in str(info.value)  # no count (nor noise) in the message


def test_pooled_release_is_the_same_release_with_the_same_map() -> None:
    sensitivity, epsilon = 5, Epsilon.parse("0.5")
    scale = scale_for_epsilon(sensitivity, epsilon)
    configure_noise_pool(40_000)
    stock_noise(DISCRETE_LAPLACE, {sensitivity}, (epsilon,))
    pool = noise_pool.current()
    assert pool is not None and pool.wait_full(60)
    counts = np.arange(10_000, dtype=np.int64) * 3
    fresh = release_counts(counts, sensitivity, Epsilon.parse("0.4"))  # not stocked: drawn now
    pooled = release_counts(counts, sensitivity, epsilon)
    assert pool.hits == 1 and pool.misses == 1
    assert pooled.scale == scale and pooled.epsilon == epsilon and pooled.mechanism == DISCRETE_LAPLACE
    assert Epsilon.from_privacy_map(float(privacy_loss(sensitivity, pooled.scale))) <= epsilon
    assert fresh.scale == scale_for_epsilon(sensitivity, Epsilon.parse("0.4"))
    noise = pooled.values - counts
    assert abs(noise.mean()) < 1.0 and 0.5 * 2 * scale**2 < noise.var() < 1.5 * 2 * scale**2


def _chi_square_p(noise: np.ndarray, pmf_of: np.ndarray, support: np.ndarray) -> float:
    n = len(noise)
    expected = n * pmf_of
    keep = expected >= 20
    cut = int(support[keep].max())
    observed = np.array([np.sum(noise == k) for k in range(-cut, cut + 1)]
                        + [np.sum(noise < -cut) + np.sum(noise > cut)])
    exp_bins = np.concatenate([expected[keep], [n - expected[keep].sum()]])
    return float(stats.chisquare(observed, exp_bins).pvalue)


@pytest.mark.slow
def test_pooled_noise_follows_the_exact_laws() -> None:
    """200,000 pooled values per mechanism, chi-square against the exact pmf at alpha 1e-7 (as
    tests/test_noise_distribution.py and tests/test_zcdp.py test the fresh path), on non-zero
    counts so that the addition is tested too."""
    n = 200_000
    lap_scale = scale_for_epsilon(1, Epsilon.parse("0.5"))  # 2.0
    gau_scale = scale_for_rho(1.0, Rho.parse("0.02"))  # 5.0
    configure_noise_pool(2 * n)
    stock_noise(DISCRETE_LAPLACE, {1}, (Epsilon.parse("0.5"),))
    stock_noise(DISCRETE_GAUSSIAN, {1.0}, (Rho.parse("0.02"),))
    pool = noise_pool.current()
    assert pool is not None and pool.wait_full(120)
    counts = np.random.default_rng(3).integers(0, 1000, n)  # counts, not noise
    lap = release_counts(counts, 1, Epsilon.parse("0.5")).values - counts
    gau = release_counts_gaussian(counts, 1.0, Rho.parse("0.02")).values - counts
    assert pool.hits == 2 and pool.misses == 0

    support = np.arange(-80, 81)
    a = math.exp(-1.0 / lap_scale)
    lap_pmf = (1 - a) / (1 + a) * a ** np.abs(support)
    assert _chi_square_p(lap, lap_pmf, support) > 1e-7
    weights = np.exp(-(support.astype(float) ** 2) / (2 * gau_scale**2))
    assert _chi_square_p(gau, weights / weights.sum(), support) > 1e-7


def _child_draws(write_fd: int, n: int) -> None:
    """In a forked child: release n zeros through the real path, write the noise, exit."""
    code = 1
    try:
        pool = noise_pool.current()
        ok = pool is not None and pool.pid == os.getpid() and pool.wait_full(60)
        inherited = pool is not None and pool.hits + pool.misses > 0
        values = release_counts(np.zeros(n, dtype=np.int64), 5, Epsilon.parse("1")).values
        assert pool is not None
        header = np.array([int(ok and not inherited), pool.hits], dtype=np.int64)
        os.write(write_fd, np.concatenate([header, values]).tobytes())
        code = 0
    finally:
        os._exit(code)


def test_forked_workers_never_hold_the_same_draws() -> None:
    """A full parent pool, then two forked workers: each takes 5,000 draws from its own pool (made
    after the fork); the three sequences differ. Were the parent's stock inherited, both children
    would hand out its first 5,000 draws, identical."""
    n = 5_000
    configure_noise_pool(20_000)
    stock_noise(DISCRETE_LAPLACE, {5}, (Epsilon.parse("1"),))
    parent = noise_pool.current()
    assert parent is not None and parent.wait_full(60)
    results = []
    for _ in range(2):
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read_fd)
            _child_draws(write_fd, n)
        os.close(write_fd)
        chunks = []
        while chunk := os.read(read_fd, 1 << 16):
            chunks.append(chunk)
        os.close(read_fd)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        data = np.frombuffer(b"".join(chunks), dtype=np.int64)
        assert len(data) == n + 2
        assert data[0] == 1, "the child's pool was not its own, fresh one"
        assert data[1] == 1, "the child's release did not come from its pool"
        results.append(data[2:])
    mine = parent.take(DISCRETE_LAPLACE, 5.0, n)
    assert mine is not None
    a, b = results
    for x, y in ((a, b), (a, mine), (b, mine)):
        assert not np.array_equal(x, y)
        assert float(np.mean(x == y)) < 0.2  # independent draws at scale 5 agree at ~8% of positions


# -- through the service ---------------------------------------------------------------------------

D0 = dt.date(2024, 3, 4)


def test_service_stocks_public_scales_only(store, ledger) -> None:
    """The stocks come from the datasets' bounds and the preset losses, declared before any query;
    a query at a stocked scale is served from the stock, and charged exactly as before."""
    service = Service(store, ledger, Policy(noise_presets_epsilon=(Epsilon.parse("0.25"),)))
    planner, _ = service.create_client("p", "planner")
    service.set_cap("small", Epsilon.parse("1"), client_id=planner.id, window=None)
    service.set_cap("small", Epsilon.parse("3"), client_id=None, window=None)
    service.start_noise_pool(100_000)
    pool = noise_pool.current()
    assert pool is not None
    meta = store.metadata("small")
    key = (DISCRETE_LAPLACE, scale_for_epsilon(meta.bound("trips"), Epsilon.parse("0.25")))
    public = {(DISCRETE_LAPLACE, scale_for_epsilon(s, Epsilon.parse("0.25")))
              for s in (meta.bound("trips"), meta.bound("presence"), 1)}  # trips, presence, residents
    assert set(pool.keys()) == public
    assert pool.wait_full(60)
    spec = make_spec("flows", dataset="small", zoning="districts", start=D0, end=D0 + dt.timedelta(days=7))
    answer = service.answer(QueryRequest(spec, epsilon=Epsilon.parse("0.25")), planner)
    assert (pool.hits, pool.misses) == (1, 0)
    assert answer.charged == Epsilon.parse("0.25") and answer.noise_scale == key[1]
    assert service.ledger.total_charged("small", 0, planner.id) == Epsilon.parse("0.25")
    other = service.answer(QueryRequest(spec, epsilon=Epsilon.parse("0.2")), planner)  # not a preset
    assert (pool.hits, pool.misses) == (1, 1) and other.charged == Epsilon.parse("0.2")
    assert set(pool.keys()) == public  # what clients ask adds no stock


def test_a_refused_querys_draws_are_discarded_never_reused(store, ledger, tmp_path: Path,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    """Through the real service and ledger, with numbered draws so that each can be followed: a query
    refused at commit (the global cap) takes draws F..F+n-1 and drops them, and none of them reaches
    the error, a log record or the ledger's files; the next query at that scale gets F+n..F+2n-1,
    exactly (first in, first out, never returned)."""
    first = 987_654_321_000  # draws no count, date or id could be mistaken for
    service = Service(store, ledger, Policy(noise_presets_epsilon=(Epsilon.parse("0.25"),)))
    planner, _ = service.create_client("p", "planner")
    service.set_cap("small", Epsilon.parse("1"), client_id=planner.id, window=None)
    service.set_cap("small", Epsilon.parse("0.2"), client_id=None, window=None)
    noise_pool.configure(Numbered(first), 100_000)  # the real pool, with numbered draws
    service.context.stock_noise(store.metadata("small"))  # as Service.start_noise_pool declares them
    pool = noise_pool.current()
    assert pool is not None and pool.wait_full(60)
    spec = make_spec("flows", dataset="small", zoning="districts", start=D0, end=D0 + dt.timedelta(days=7))
    true = prepare(spec, store.get("small")).true_counts
    n = len(true)
    caplog.set_level("DEBUG")
    with pytest.raises(BudgetExceeded) as refused:
        service.answer(QueryRequest(spec, epsilon=Epsilon.parse("0.25")), planner)
    assert pool.hits == 1
    marker = str(first)[:9]
    assert marker not in str(refused.value) and marker not in caplog.text
    audit = service.ledger.read_audit(limit=100)
    assert audit[-1].outcome == "budget_exceeded" and marker not in repr(audit)
    for path in tmp_path.rglob("*"):  # the ledger's database, journal and WAL
        if path.is_file():
            assert marker.encode() not in path.read_bytes(), path.name
    service.set_cap("small", Epsilon.parse("1"), client_id=None, window=None)
    answer = service.answer(QueryRequest(spec, epsilon=Epsilon.parse("0.25")), planner)
    assert pool.hits == 2
    released = np.array([row["count"] for row in answer.values], dtype=np.int64)
    assert (released - true).tolist() == list(range(first + n, first + 2 * n))


def test_the_pool_module_writes_nowhere() -> None:
    """Draws live only in memory: the pool's module imports no logging, file, pickling or network
    module and calls no print/open (a static check of dpflows/noise_pool.py's own code)."""
    import ast

    tree = ast.parse(Path(noise_pool.__file__).read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import | ast.ImportFrom)
                for alias in (node.names if isinstance(node, ast.Import) else [ast.alias(node.module or "")])}
    assert imported <= {"__future__", "os", "threading", "time", "collections", "numpy"}, imported
    called = {node.func.id for node in ast.walk(tree) if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)}
    assert not called & {"print", "open", "repr", "format"}
