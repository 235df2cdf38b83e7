"""Issue 20 through a real gunicorn: workers map the same window files read-only and never write aggregates."""

from __future__ import annotations

import hashlib
import shutil
import time
from pathlib import Path

import pytest
import requests

from dpflows.aggregates import AggregateStore
from dpflows.ledger.sqlite import SqliteLedger
from dpflows.service import Service
from tests.api.conftest import seed_clients
from tests.servers import GunicornServer

pytestmark = pytest.mark.slow

CITY = {"dataset": "city", "zoning": "districts", "start": "2024-03-04", "end": "2024-03-18", "epsilon": 0.05}
QUERIES = [("/v1/flows", {}), ("/v1/flows", {"start": "2024-03-12", "end": "2024-03-13", "hours": [7, 10]}),
           ("/v1/presence", {"hours": [8, 9]}), ("/v1/patterns", {"measure": "presence"}),
           ("/v1/inflows", {}), ("/v1/outflows", {"weekdays": [5, 6]}),
           ("/v1/residents", {"place": "home"}), ("/v1/commuting", {})]


def _snapshot(root: Path) -> dict[str, tuple[int, int, str]]:
    """Every file under root: size, modification time and content hash; directories by name."""
    out: dict[str, tuple[int, int, str]] = {}
    for path in sorted(root.rglob("*")):
        stat = path.stat()
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
        out[str(path.relative_to(root))] = (stat.st_size if path.is_file() else 0, stat.st_mtime_ns, digest)
    return out


def _arrow_mappings(pid: int) -> dict[str, dict[str, int]]:
    """The .arrow files mapped by a process, with their smaps fields in kB (Rss, Pss, Private_Dirty, ...) and
    ``writable`` (1 if any mapping of the file allows writing)."""
    found: dict[str, dict[str, int]] = {}
    current: dict[str, int] | None = None
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = line.split()
        if len(head) >= 6 and "-" in head[0] and head[5].endswith(".arrow"):
            current = found.setdefault(head[5], {})
            current["writable"] = max(current.get("writable", 0), int("w" in head[1]))
        elif len(head) >= 6 and "-" in head[0]:
            current = None
        elif current is not None and line.endswith(" kB"):
            current[head[0].rstrip(":")] = current.get(head[0].rstrip(":"), 0) + int(head[1])
    return found


def test_workers_share_read_only_mappings_and_never_write_aggregates(report_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "data"
    shutil.copytree(report_root / "datasets", root / "datasets")
    setup = Service(AggregateStore(root), SqliteLedger(tmp_path / "ledger.db"))
    keys = seed_clients(setup, "city")
    setup.ledger.close()
    before = _snapshot(root / "datasets")
    with GunicornServer(root, f"sqlite:///{tmp_path / 'ledger.db'}", workers=2) as srv:
        for path, extra in QUERIES:
            r = requests.post(srv.url + path, json={**CITY, **extra}, headers=keys.h("planner"), timeout=60)
            assert r.status_code == 200, (path, r.text)
        for path in ("/v1/datasets", "/v1/budget?dataset=city", "/v1/datasets/city/bounding-report",
                     "/v1/datasets/city/zonings/districts"):
            assert requests.get(srv.url + path, headers=keys.h("planner"), timeout=30).status_code == 200, path
        ready = requests.get(srv.url + "/readyz", timeout=10).json()["checks"]["loaded"]
        assert ready["layouts"] == {"mapped": 1, "parquet-in-memory": 0} and ready["windows"] == 2
        assert "city" not in str(ready)  # the unauthenticated probe names no dataset
        # Both workers map every window (the start-up warm-up), read-only: the page cache's pages.
        deadline = time.monotonic() + 60
        while True:
            mapped = {pid: _arrow_mappings(pid) for pid in srv.worker_pids()}
            if all(sum(name.endswith("trips.arrow") for name in m) == 2 for m in mapped.values()):
                break
            assert time.monotonic() < deadline, mapped
            time.sleep(0.2)
        assert len(mapped) == 2
        for mappings in mapped.values():
            for name, fields in mappings.items():
                # (a Dirty field may count pages the copy above left unwritten to disk: the page cache's, not ours)
                assert fields["writable"] == 0, name
                assert name.startswith(str(root / "datasets" / "city" / "windows"))
    assert _snapshot(root / "datasets") == before  # nothing under datasets/ created, changed or touched
