"""Pre-drawn exact noise (issue 16, design §9): draws made ahead of the request, each used once.

Noise does not depend on the data, so the draws a release needs can be made before it: a
background thread calls the very same OpenDP measurement a release would use, on vectors of
zeros, and keeps the results in memory, one stock per (mechanism, scale). A release takes the
first n draws of its stock (first in, first out) and adds them to the true counts; the privacy
loss is still OpenDP's map of that measurement, checked exactly as before (dpflows.mechanisms).

What holds, and where it is tested (tests/test_noise_pool.py):

- **Used once.** `take` removes the draws it returns from the stock under the pool's lock and
  overwrites the stock's copy with zeros; nothing is ever put back. A draw taken for a query that
  is then refused (a cap at commit) dies with that request.
- **Never shared across processes.** The pool belongs to the process that made it (its pid). A
  forked child never sees its parent's stock: `os.register_at_fork` drops it in the child, and
  `current()` checks the pid as well; the child builds its own pool lazily, with its own thread.
- **Only in memory.** Draws never reach a log, an error message, disk or the ledger: this
  module logs nothing about them and its errors carry no values.
- **An empty or short stock falls back** to drawing at request time, all n values (never part
  pooled and part fresh). Which stock was used changes nothing in the answer's law.
- **Refilled in quiet time.** A stock above LOW_WATER of its share is topped up only QUIET_S after the
  process's last take, so the refill does not compete with back-to-back requests for the cores;
  below it, at once. When the thread draws follows the takes of public stocks, as before.
- **Bounded memory.** At most `capacity` values (8 bytes each) are held by all stocks of a
  process together, split evenly between the stocked scales; 0 disables the pool.
- **Public scales only.** Stocks are declared by the service from public facts (each dataset's
  bounds and the preset losses of dpflows.settings), never from what clients ask: otherwise a
  fast hit or a slow miss would tell one client what another had just asked.

This module imports no OpenDP: the draw function is handed in by dpflows.mechanisms.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable

import numpy as np

#: (mechanism name, noise scale): what a stock holds draws of.
StockKey = tuple[str, float]
#: draw(mechanism, scale, n): n fresh noise values from the OpenDP measurement itself.
DrawFunction = Callable[[str, float, int], np.ndarray]

#: Values the refill thread draws per call: large enough that OpenDP's per-call overhead is
#: negligible, small enough that a stock reaches a usable level soon after start.
CHUNK_VALUES = 8192
#: A stock above this share of its target is topped up only in quiet time: QUIET_S after the
#: process's last take. The refill draws on the same cores as the requests (an answer's 10,000
#: values are ~0.1 s of one core), so refilling between back-to-back requests slowed each of them
#: (bench_api through gunicorn: 44 ms p50 with the refill running, see docs/api.md); below the share
#: the refill runs at once, as before, so a stock never runs dry while a spare core could fill it.
LOW_WATER = 0.5
QUIET_S = 0.5


class _Stock:
    """Draws of one (mechanism, scale), oldest first: a queue of arrays and an offset into the first."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.chunks: deque[np.ndarray] = deque()
        self.head = 0  # values of chunks[0] already taken
        self.level = 0  # values held
        self.pending = 0  # values being drawn by the refill thread (counted against the bound)

    def take(self, n: int) -> np.ndarray:
        out = np.empty(n, dtype=np.int64)
        filled = 0
        while filled < n:
            chunk = self.chunks[0]
            k = min(n - filled, len(chunk) - self.head)
            out[filled:filled + k] = chunk[self.head:self.head + k]
            chunk[self.head:self.head + k] = 0  # the stock's copy is gone, not merely skipped
            filled += k
            self.head += k
            if self.head == len(chunk):
                self.chunks.popleft()
                self.head = 0
        self.level -= n
        return out

    def clear(self) -> None:
        for chunk in self.chunks:
            chunk[:] = 0
        self.chunks.clear()
        self.head = self.level = 0


class NoisePool:
    """One process's stocks of pre-drawn noise and the thread that refills them."""

    def __init__(self, draw: DrawFunction, capacity: int, keys: Iterable[StockKey] = (), *,
                 start: bool = True) -> None:
        if capacity < 0:
            raise ValueError("capacity must be 0 or more")
        self.pid = os.getpid()
        self.capacity = capacity
        self._draw = draw
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._stocks: dict[StockKey, _Stock] = {}
        self._closed = False
        self._thread: threading.Thread | None = None
        self._last_take = float("-inf")  # time.monotonic() of the last take (or miss)
        self.hits = 0
        self.misses = 0
        self.stock(keys)
        if start:
            self.start()

    # -- what the service declares ---------------------------------------------------------------

    def stock(self, keys: Iterable[StockKey]) -> None:
        """Keep stocks for these (mechanism, scale) pairs too; the capacity is split evenly again."""
        with self._lock:
            for key in keys:
                self._stocks.setdefault((str(key[0]), float(key[1])), _Stock(0))
            share = self.capacity // len(self._stocks) if self._stocks else 0
            for stock in self._stocks.values():
                stock.target = share
                while stock.level > share:  # a smaller share: drop the newest draws, zeroed
                    extra = stock.level - share
                    last = stock.chunks[-1]
                    usable = len(last) - (stock.head if len(stock.chunks) == 1 else 0)
                    if usable <= extra:
                        last[:] = 0
                        stock.chunks.pop()
                        stock.level -= usable
                        if not stock.chunks:
                            stock.head = 0
                    else:
                        stock.chunks[-1] = last[:len(last) - extra].copy()
                        last[:] = 0
                        stock.level -= extra
            self._wake.notify_all()

    def keys(self) -> list[StockKey]:
        with self._lock:
            return list(self._stocks)

    # -- the request path ------------------------------------------------------------------------

    def take(self, mechanism: str, scale: float, n: int) -> np.ndarray | None:
        """The oldest n draws of this stock, removed from it; None (draw at request time) if it holds fewer."""
        if n <= 0 or os.getpid() != self.pid:
            return None
        with self._lock:
            self._last_take = time.monotonic()
            stock = self._stocks.get((mechanism, float(scale)))
            if stock is None or stock.level < n or self._closed:
                self.misses += 1
                self._wake.notify_all()
                return None
            out = stock.take(n)
            self.hits += 1
            self._wake.notify_all()
            return out

    def level(self, mechanism: str, scale: float) -> int:
        """How many draws this stock holds (a count, never the values)."""
        with self._lock:
            stock = self._stocks.get((mechanism, float(scale)))
            return 0 if stock is None else stock.level

    def held(self) -> int:
        """Values held by all stocks plus those being drawn: never above `capacity`."""
        with self._lock:
            return sum(s.level + s.pending for s in self._stocks.values())

    # -- the refill thread -----------------------------------------------------------------------

    def start(self) -> None:
        with self._lock:
            if self._thread is not None or self._closed or self.capacity == 0:
                return
            self._thread = threading.Thread(target=self._refill, name="dpflows-noise-pool", daemon=True)
            self._thread.start()

    def fill(self) -> None:
        """Fill every stock to its share now, in the calling thread (tests and benchmarks)."""
        while True:
            with self._lock:
                job = self._next_job(quiet_only=False)
            if job is None:
                return
            self._run(job)

    def wait_full(self, timeout: float = 60.0) -> bool:
        """Block until every stock holds its share (or `timeout` seconds pass); whether it does."""
        with self._wake:
            return self._wake.wait_for(
                lambda: self._closed or all(s.level >= s.target for s in self._stocks.values()), timeout)

    def close(self) -> None:
        """Stop the thread and zero every stock."""
        with self._lock:
            self._closed = True
            for stock in self._stocks.values():
                stock.clear()
            self._wake.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=10)

    def _next_job(self, *, quiet_only: bool = True) -> tuple[StockKey, int] | None:
        """The emptiest stock (by share) and how much to draw for it, reserved; called under the lock.

        With `quiet_only` (the refill thread), a stock above LOW_WATER waits for quiet time (`_quiet_left`)."""
        if self._closed:
            return None
        quiet = not quiet_only or self._quiet_left() is None
        best: tuple[float, StockKey] | None = None
        for key, stock in self._stocks.items():
            room = stock.target - stock.level - stock.pending
            if room > 0:
                fill = (stock.level + stock.pending) / stock.target
                if (quiet or fill <= LOW_WATER) and (best is None or fill < best[0]):
                    best = (fill, key)
        if best is None:
            return None
        stock = self._stocks[best[1]]
        n = min(CHUNK_VALUES, stock.target - stock.level - stock.pending)
        stock.pending += n
        return best[1], n

    def _quiet_left(self) -> float | None:
        """Seconds until quiet time (QUIET_S after the last take), or None if it is quiet now."""
        left = self._last_take + QUIET_S - time.monotonic()
        return left if left > 0 else None

    def _run(self, job: tuple[StockKey, int]) -> None:
        key, n = job
        try:
            drawn = np.asarray(self._draw(key[0], key[1], n), dtype=np.int64)  # outside the lock
        except Exception:  # the request path draws for itself; an error here must not kill the thread
            drawn = None
        with self._lock:
            stock = self._stocks.get(key)
            if stock is None:
                return
            stock.pending -= n
            if drawn is not None and len(drawn) == n and not self._closed and stock.level + n <= stock.target:
                stock.chunks.append(drawn)
                stock.level += n
            elif drawn is not None:
                drawn[:] = 0
            self._wake.notify_all()

    def _refill(self) -> None:
        while True:
            with self._wake:
                job = self._next_job()
                while job is None:
                    if self._closed:
                        return
                    self._wake.wait(self._quiet_left())  # None: until a take or a new stock wakes it
                    job = self._next_job()
            self._run(job)


# -- the process's pool ------------------------------------------------------------------------------

_config: tuple[DrawFunction, int] | None = None
_keys: set[StockKey] = set()
_pool: NoisePool | None = None
_guard = threading.Lock()


def configure(draw: DrawFunction, capacity: int) -> None:
    """Set this process's pool size (0: no pool) and forget the stocks declared before."""
    global _config, _pool
    with _guard:
        old = _pool
        _pool = None
        _keys.clear()
        _config = (draw, capacity) if capacity > 0 else None
    if old is not None:
        old.close()


def declare(keys: Iterable[StockKey]) -> None:
    """Stock these (mechanism, scale) pairs: public facts only (dataset bounds, preset losses)."""
    keys = {(str(m), float(s)) for m, s in keys}
    with _guard:
        new = keys - _keys
        _keys.update(new)
        pool = _pool if _pool is not None and _pool.pid == os.getpid() else None
    if pool is not None and new:
        pool.stock(new)


def current() -> NoisePool | None:
    """This process's pool, made (with its thread) on first use in each process, after any fork."""
    global _pool
    with _guard:
        if _config is None:
            return None
        if _pool is None or _pool.pid != os.getpid():
            draw, capacity = _config
            _pool = NoisePool(draw, capacity, _keys)
        return _pool


def take(mechanism: str, scale: float, n: int) -> np.ndarray | None:
    """n pre-drawn values for this (mechanism, scale), or None: draw them at request time."""
    pool = current()
    return None if pool is None else pool.take(mechanism, scale, n)


def _after_fork_in_child() -> None:
    # The parent's draws are the parent's: the child drops its copy (zeroed) and will make its
    # own pool, with its own thread, on first use. The locks are new: a thread of the parent may
    # have held the old ones at the fork.
    global _pool, _guard
    _guard = threading.Lock()
    inherited, _pool = _pool, None
    if inherited is not None:
        for stock in inherited._stocks.values():
            stock.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)
