"""Issue 18, item 3: slow clients hold gunicorn's sync workers; nginx in front reads requests whole.

The attack (loopback only, bounded in time): connections that each send one header line every
2 s and never finish their header (slowloris), and POSTs whose body trickles in a byte every 2 s.
Straight against gunicorn's sync workers, as many such connections as workers starve the service:
`/healthz` gets no answer. Through the repository's deploy/nginx.conf, run by a real nginx, the
same attack costs nginx a few idle sockets: `/healthz` answers in milliseconds, gunicorn never
sees an unfinished request, and nginx drops a header still unfinished after 10 s (408).
"""

from __future__ import annotations

import select
import socket
import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.security.conftest import seeded_ledger
from tests.servers import GunicornServer, NginxServer

pytestmark = pytest.mark.slow

WORKERS = 2
LINE_EVERY_S = 2.0
HARD_STOP_S = 30.0  # no attack outlives this, whatever a test asks


class SlowClients:
    """Loopback connections that send a request a line (or a body byte) at a time, from a thread;
    stopped by `stop()` or after HARD_STOP_S. Records when the server closed each connection."""

    def __init__(self, port: int, *, headers: int, bodies: int = 0) -> None:
        self.started = time.monotonic()
        self.socks: list[tuple[str, socket.socket]] = []
        self.closed_at: dict[int, float] = {}
        self.answers: dict[int, bytes] = {}
        for _ in range(headers):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            self.socks.append(("header", s))
        for _ in range(bodies):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.sendall(b"POST /v1/flows HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                      b"Authorization: Bearer dpf_slow\r\nContent-Length: 4096\r\n\r\n{")
            self.socks.append(("body", s))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _check_closed(self, i: int, s: socket.socket) -> None:
        if i in self.closed_at:
            return
        readable, _, _ = select.select([s], [], [], 0)
        if readable:
            try:
                data = s.recv(4096)
            except OSError:
                data = b""
            self.answers[i] = self.answers.get(i, b"") + data
            if not data or data.startswith(b"HTTP/"):  # closed, or answered (408) before closing
                self.closed_at[i] = time.monotonic() - self.started

    def _run(self) -> None:
        n = 0
        while not self._stop.wait(LINE_EVERY_S) and time.monotonic() - self.started < HARD_STOP_S:
            n += 1
            for i, (kind, s) in enumerate(self.socks):
                self._check_closed(i, s)
                if i in self.closed_at:
                    continue
                try:
                    s.sendall(f"X-Slow-{n}: 1\r\n".encode() if kind == "header" else b" ")
                except OSError:
                    self.closed_at[i] = time.monotonic() - self.started

    def open_count(self, kind: str) -> int:
        for i, (_, s) in enumerate(self.socks):
            self._check_closed(i, s)
        return sum(1 for i, (k, _) in enumerate(self.socks) if k == kind and i not in self.closed_at)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        for _, s in self.socks:
            s.close()


def probe(url: str, timeout_s: float) -> float | None:
    """Seconds /healthz took to answer 200, or None if it did not within the timeout."""
    t0 = time.perf_counter()
    try:
        r = requests.get(url + "/healthz", timeout=timeout_s)
    except requests.RequestException:
        return None
    return time.perf_counter() - t0 if r.status_code == 200 else None


@pytest.fixture(scope="module")
def deployment(data_root: Path, nginx_binary: str,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GunicornServer, NginxServer]]:
    tmp = tmp_path_factory.mktemp("slow-clients")
    seeded_ledger(data_root, tmp / "ledger.db")
    with GunicornServer(data_root, f"sqlite:///{tmp / 'ledger.db'}", workers=WORKERS,
                        log_path=tmp / "gunicorn.log") as gunicorn:
        with NginxServer(nginx_binary, f"127.0.0.1:{gunicorn.port}", tmp / "nginx") as nginx:
            yield gunicorn, nginx


def test_slow_clients_through_nginx_leave_healthz_fast(deployment) -> None:
    gunicorn, nginx = deployment
    attack = SlowClients(nginx.port, headers=3 * WORKERS, bodies=WORKERS)
    try:
        time.sleep(1.0)
        through_nginx, direct = [], []
        for _ in range(8):  # about 4 s under attack
            through_nginx.append(probe(nginx.url, timeout_s=5))
            direct.append(probe(gunicorn.url, timeout_s=5))
            time.sleep(0.5)
        assert None not in through_nginx, through_nginx
        assert None not in direct, direct  # gunicorn's workers were never held: nginx forwarded nothing
        nginx_s = [t for t in through_nginx if t is not None]
        direct_s = [t for t in direct if t is not None]
        assert max(nginx_s) < 1.0, nginx_s
        # nginx's client_header_timeout (10 s) drops every unfinished header, though a line came every 2 s.
        deadline = time.monotonic() + 10
        while attack.open_count("header") and time.monotonic() < deadline:
            time.sleep(0.5)
        header_closes = [attack.closed_at[i] for i, (k, _) in enumerate(attack.socks) if k == "header"
                         and i in attack.closed_at]
        assert len(header_closes) == 3 * WORKERS and max(header_closes) < 13.0, header_closes
        assert all(attack.answers[i].startswith(b"HTTP/1.1 408") or attack.answers[i] == b""
                   for i, (k, _) in enumerate(attack.socks) if k == "header")
        bodies_open = attack.open_count("body")  # a byte every 2 s is within client_body_timeout: still nginx's
        assert probe(nginx.url, timeout_s=5) is not None
    finally:
        attack.stop()
    print(f"\nslow clients via nginx: healthz through nginx median {statistics.median(nginx_s) * 1000:.1f} ms, "
          f"max {max(nginx_s) * 1000:.1f} ms; direct median {statistics.median(direct_s) * 1000:.1f} ms; "
          f"unfinished headers dropped by nginx after {min(header_closes):.1f}-{max(header_closes):.1f} s; "
          f"slow bodies still held by nginx: {bodies_open}")


def test_the_same_attack_straight_at_gunicorn_starves_it(deployment) -> None:
    """Why nginx is there: with one slow connection per sync worker (and two spare), healthz waits."""
    gunicorn, nginx = deployment
    attack = SlowClients(gunicorn.port, headers=WORKERS + 2)
    try:
        time.sleep(1.0)
        starved = [probe(gunicorn.url, timeout_s=2.0) for _ in range(2)]
        via_nginx = probe(nginx.url, timeout_s=2.0)  # nginx forwards to the same starved workers
    finally:
        attack.stop()
    assert starved == [None, None], starved
    assert via_nginx is None
    t0 = time.monotonic()
    recovered = None
    while recovered is None and time.monotonic() - t0 < 10:
        recovered = probe(gunicorn.url, timeout_s=2.0)
    assert recovered is not None  # the attack's sockets closed, the workers free again
    print(f"\nslow clients direct: healthz got no answer in 2 s (x2) while {WORKERS + 2} connections trickled "
          f"headers at {WORKERS} workers; answered {time.monotonic() - t0:.2f} s after they closed")


def test_nginx_refuses_oversized_bodies_in_the_error_shape(deployment) -> None:
    _, nginx = deployment
    r = requests.post(nginx.url + "/v1/flows", data=b"x" * (2 * 1024 * 1024),
                      headers={"Content-Type": "application/json"}, timeout=10)
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "payload_too_large"
