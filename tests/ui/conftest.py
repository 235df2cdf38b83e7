"""A real gunicorn serving the API (with the planner page) on a free 127.0.0.1 port.

The server is the API branch's `tests.servers.GunicornServer` (``api.wsgi:app`` with the
project's gunicorn config), over a fresh data root built by `build_small_dataset` and a fresh
SQLite ledger. Clients and caps are created through `dpflows.service.Service` before the server
starts, so the tests hold real keys and nothing in the server is mocked.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from dpflows.aggregates import AggregateStore
from dpflows.budget import Epsilon, Rho
from dpflows.ledger.sqlite import SqliteLedger
from dpflows.service import Service
from tests.conftest import build_small_dataset
from tests.servers import GunicornServer

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class LiveServer:
    base_url: str
    planner_key: str
    analyst_key: str
    admin_key: str
    data_root: Path
    ledger_path: Path


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """gunicorn (2 workers) over dataset 'small' (planner and analyst at cap ε 1.0 per window), 'smallz',
    accounted in zCDP (planner cap ρ 0.05), and 'smallp' (planner ε 2); one population, global cap ρ 5."""
    root = tmp_path_factory.mktemp("live")
    build_small_dataset(root)
    build_small_dataset(root, "smallz", accounting="zcdp")
    build_small_dataset(root, "smallp", places=True)
    ledger_path = root / "ledger.db"
    ledger = SqliteLedger(ledger_path)
    service = Service(AggregateStore(root), ledger)
    planner, planner_key = service.create_client("planner-ui", "planner")
    analyst, analyst_key = service.create_client("analyst-ui", "analyst")
    _admin, admin_key = service.create_client("admin-ui", "admin")
    for client in (planner, analyst):
        service.set_cap("small", Epsilon.parse("1"), client_id=client.id, window=None)
    service.set_cap("smallz", Rho.parse("0.05"), client_id=planner.id, window=None)
    service.set_cap("smallp", Epsilon.parse("2"), client_id=planner.id, window=None)
    # the three share the data root's default population, in ρ (smallz is zCDP): one global cap (issue 17)
    service.set_cap("small", Rho.parse("5"), client_id=None, window=None)
    ledger.close()
    with GunicornServer(root, f"sqlite:///{ledger_path}", workers=2) as server:
        yield LiveServer(server.url, planner_key, analyst_key, admin_key, root, ledger_path)


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
    try:
        from playwright import sync_api
    except ImportError:
        message = "the playwright package is missing: pip install -e '.[dev]' (it drives the system Chromium)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    with sync_api.sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(user_data_dir),
            executable_path=executable,
            headless=True,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"],
            viewport={"width": 1280, "height": 1000},
        )
        # generous: the suite runs beside other heavy tests, and a slow machine is not a failure
        context.set_default_timeout(90_000)
        try:
            yield context
        finally:
            context.close()
