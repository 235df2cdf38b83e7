"""A real gunicorn serving dpflows on a free loopback port, for end-to-end tests and benchmarks, and
the repository's nginx config in front of it (tests/security)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class GunicornServer:
    """Starts `gunicorn api.wsgi:app` with the project's config; always stopped by `stop()`."""

    def __init__(self, data_dir: Path, ledger_url: str, *, workers: int = 2, log_path: Path | None = None,
                 extra_env: dict[str, str] | None = None, app: str = "api.wsgi:app", code: Path = ROOT) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path or data_dir / f"gunicorn-{self.port}.log"
        env = {**os.environ, "DPFLOWS_DATA_DIR": str(data_dir), "DPFLOWS_LEDGER_URL": ledger_url,
               "DPFLOWS_BIND": f"127.0.0.1:{self.port}", "DPFLOWS_WORKERS": str(workers),
               "PYTHONPATH": str(code), **(extra_env or {})}
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(  # `code`: another checkout of dpflows, for benchmarks' baselines
            [sys.executable, "-m", "gunicorn", "-c", str(code / "api" / "gunicorn_conf.py"), app],
            cwd=code, env=env, stdout=self._log, stderr=subprocess.STDOUT,
        )
        self._wait_ready()

    def _wait_ready(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.stop()
                raise RuntimeError(f"gunicorn exited early:\n{self.log_path.read_text()[-3000:]}")
            try:
                if requests.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass  # not listening yet, or workers still importing
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"gunicorn did not become ready in {timeout_s} s; see {self.log_path}")

    def worker_pids(self) -> list[int]:
        out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(self.process.pid)], capture_output=True, text=True,
                             check=False)
        return [int(p) for p in out.stdout.split()]

    def log_text(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        if not self._log.closed:
            self._log.close()

    def __enter__(self) -> GunicornServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


NGINX_CONF = ROOT / "deploy" / "nginx.conf"


def find_nginx() -> str | None:
    """Debian's nginx binary (scripts/bootstrap.sh --test-deps installs it), or one on PATH."""
    found = shutil.which("nginx")
    if found:
        return found
    return "/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None


def render_nginx_conf(*, listen: str, upstream: str, state_dir: Path) -> str:
    """deploy/nginx.conf with its three placeholders filled, as the file's header says to."""
    text = NGINX_CONF.read_text()
    for name, value in (("LISTEN", listen), ("UPSTREAM", upstream), ("STATE_DIR", str(state_dir))):
        text = text.replace(f"@{name}@", value)
    return text


class NginxServer:
    """The repository's deploy/nginx.conf run by a real nginx on a free loopback port, in the
    foreground with its own state directory (no system service); always stopped by `stop()`."""

    def __init__(self, binary: str, upstream: str, state_dir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        state_dir.mkdir(parents=True, exist_ok=True)
        self.state_dir = state_dir
        self.conf = state_dir / "nginx.conf"
        self.conf.write_text(render_nginx_conf(listen=f"127.0.0.1:{self.port}", upstream=upstream,
                                               state_dir=state_dir))
        check = subprocess.run([binary, "-t", "-q", "-e", "stderr", "-c", str(self.conf)], capture_output=True,
                               text=True, check=False)
        if check.returncode != 0:
            raise RuntimeError(f"nginx -t refused {self.conf}:\n{check.stderr}")
        self._log = open(state_dir / "nginx.out", "wb")
        # Foreground, and as root (only ever in tests) its workers keep root's access to the private
        # pytest directory that holds their buffers; as any other user nginx ignores `user`.
        directives = "daemon off;" + (" user root;" if os.geteuid() == 0 else "")
        self.process = subprocess.Popen([binary, "-e", "stderr", "-c", str(self.conf), "-g", directives],
                                        stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.stop()
                raise RuntimeError(f"nginx exited early:\n{(state_dir / 'nginx.out').read_text()[-3000:]}")
            try:
                if requests.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass  # not listening yet
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("nginx did not answer /healthz through its upstream in 20 s")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # fast shutdown of master and workers
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        if not self._log.closed:
            self._log.close()

    def __enter__(self) -> NginxServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
