"""A real gunicorn serving the API on a free 127.0.0.1 port, over a fresh data root and ledger.

The app is ``api:create_app()`` (override with ``DPFLOWS_UI_TEST_APP``, a gunicorn app spec);
the data root and the SQLite ledger reach it through ``DPFLOWS_DATA_ROOT`` and
``DPFLOWS_LEDGER``. Clients and caps are created through ``dpflows.service.Service`` before
the server starts, so the test holds real keys and nothing in the server is mocked.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from dpflows.aggregates import AggregateStore
from dpflows.budget import Epsilon
from dpflows.ledger.sqlite import SqliteLedger
from dpflows.service import Service
from tests.conftest import build_small_dataset

REPO = Path(__file__).resolve().parents[2]
DEFAULT_APP = "api:create_app()"


@dataclass(frozen=True)
class LiveServer:
    base_url: str
    planner_key: str
    analyst_key: str
    admin_key: str
    data_root: Path
    ledger_path: Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def app_spec() -> str:
    """The gunicorn app to serve; skips when the API's create_app is not in this checkout."""
    spec = os.environ.get("DPFLOWS_UI_TEST_APP")
    if spec:
        return spec
    import api

    if not hasattr(api, "create_app"):
        pytest.skip("api.create_app is not in this branch yet; merge the api branch (or set DPFLOWS_UI_TEST_APP)")
    return DEFAULT_APP


def _wait_until_up(url: str, proc: subprocess.Popen, log: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"gunicorn exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 (our own 127.0.0.1 URL)
                resp.read()
                return
        except urllib.error.HTTPError:
            return  # any HTTP answer means the server is up
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"gunicorn did not answer within {timeout}s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """gunicorn (2 sync workers) over dataset 'small'; planner, analyst (cap 1.0/window) and admin keys."""
    spec = app_spec()
    root = tmp_path_factory.mktemp("live")
    build_small_dataset(root)
    ledger_path = root / "ledger.db"
    ledger = SqliteLedger(ledger_path)
    service = Service(AggregateStore(root), ledger)
    planner, planner_key = service.create_client("planner-ui", "planner")
    analyst, analyst_key = service.create_client("analyst-ui", "analyst")
    _admin, admin_key = service.create_client("admin-ui", "admin")
    for client in (planner, analyst):
        service.set_cap("small", Epsilon.parse("1"), client_id=client.id, window=None)
    service.set_cap("small", Epsilon.parse("3"), client_id=None, window=None)
    ledger.close()

    port = free_port()
    log = root / "gunicorn.log"
    env = {**os.environ, "DPFLOWS_DATA_ROOT": str(root), "DPFLOWS_LEDGER": str(ledger_path),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "--workers", "2", "--bind", f"127.0.0.1:{port}",
             "--chdir", str(REPO), "--graceful-timeout", "5", spec],
            stdout=out, stderr=subprocess.STDOUT, env=env,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_until_up(base + "/planner/", proc, log)
        yield LiveServer(base, planner_key, analyst_key, admin_key, root, ledger_path)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def find_chromium() -> str | None:
    """A Chromium binary: DPFLOWS_CHROMIUM, else Debian's /usr/bin/chromium or one on PATH."""
    explicit = os.environ.get("DPFLOWS_CHROMIUM")
    if explicit:
        return explicit if Path(explicit).exists() else None
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture(scope="module")
def chromium_path() -> str:
    """Chromium for the browser tests: missing fails in CI (CI=true) and skips elsewhere."""
    path = find_chromium()
    if path is None:
        message = ("Chromium not found: install the Debian package 'chromium' (scripts/bootstrap.sh does, as root) "
                   "or set DPFLOWS_CHROMIUM to a Chromium binary")
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


@contextlib.contextmanager
def headless_browser(executable: str, user_data_dir: Path):
    """A headless Chromium page through Playwright's Python package, without downloaded browsers."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (dev extra)")
    with sync_api.sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(user_data_dir),
            executable_path=executable,
            headless=True,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"],
            viewport={"width": 1280, "height": 1000},
        )
        try:
            yield context
        finally:
            context.close()
