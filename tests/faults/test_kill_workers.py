"""SIGKILL a gunicorn worker in the middle of queries, many times, and prove nothing leaks.

The fault hook lives in `tests/fault_app.py` (not in dpflows): it sleeps just before or just
after `commit_release` and drops a marker file naming the worker, which this test then kills
with SIGKILL. Invariants afterwards: no answer reached a client without its charge, no charge
exists without its stored answer, running totals equal the charge rows, the audit chain
verifies, and gunicorn has replaced every killed worker and serves again.

Also here: a ledger that refuses writes, and corrupt or missing aggregate files, through HTTP.
"""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from dpflows.aggregates import AggregateStore, load_dataset, version_dir
from dpflows.ledger.sqlite import SqliteLedger
from dpflows.service import Service
from tests.api.conftest import FLOWS, Keys, seed_clients
from tests.faults.ledger_checks import check_ledger, nanos, total_charged
from tests.servers import GunicornServer

pytestmark = pytest.mark.slow

KILLS_PER_PHASE = 15
EPS = 0.01
WORKERS = 2


def seeded_ledger(data_root: Path, path: Path) -> Keys:
    setup = Service(AggregateStore(data_root), SqliteLedger(path))
    keys = seed_clients(setup)
    setup.ledger.close()
    return keys


def wait_for_marker(mark_dir: Path, phase: str, timeout_s: float = 20.0) -> Path:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = [p for p in mark_dir.iterdir() if p.name.split(".", 1)[1].startswith(phase)]
        if found:
            return found[0]
        time.sleep(0.005)
    raise AssertionError(f"no worker reached the {phase!r} fault point in {timeout_s} s")


def kill_in_flight(srv: GunicornServer, keys: Keys, mark_dir: Path, phase: str, body: dict[str, Any]) -> str:
    """Send one query, SIGKILL the worker while it sleeps at the fault point; return the marker name."""
    for p in mark_dir.iterdir():
        p.unlink()
    outcome: dict[str, Any] = {}

    def send() -> None:
        try:
            outcome["response"] = requests.post(srv.url + "/v1/flows", json=body, headers=keys.h("planner"),
                                                timeout=30)
        except requests.RequestException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=send)
    thread.start()
    marker = wait_for_marker(mark_dir, phase)
    os.kill(int(marker.name.split(".", 1)[0]), signal.SIGKILL)
    thread.join(timeout=40)
    assert not thread.is_alive()
    # The client of a killed worker gets a broken connection, never an answer.
    assert "response" not in outcome, f"a killed request got HTTP {outcome['response'].status_code}"
    return marker.name


def wait_for_workers(srv: GunicornServer, n: int, timeout_s: float = 60.0) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        pids = srv.worker_pids()
        if len(pids) == n:
            return pids
        time.sleep(0.1)
    raise AssertionError(f"gunicorn did not get back to {n} workers in {timeout_s} s")


def post(srv: GunicornServer, keys: Keys, body: dict[str, Any], role: str = "planner") -> requests.Response:
    return requests.post(srv.url + "/v1/flows", json=body, headers=keys.h(role), timeout=60)


def query(i: int, weekday: int) -> dict[str, Any]:
    return {**FLOWS, "hours": [i, i + 1], "weekdays": [weekday], "epsilon": EPS}


def test_sigkill_between_noise_and_commit_and_after_commit(data_root: Path, tmp_path: Path) -> None:
    ledger_path = tmp_path / "ledger.db"
    keys = seeded_ledger(data_root, ledger_path)
    mark_dir = tmp_path / "marks"
    mark_dir.mkdir()
    received: dict[str, tuple[int, int]] = {}
    killed: list[int] = []

    def record(r: requests.Response) -> dict[str, Any]:
        assert r.status_code == 200, r.text
        doc = r.json()
        if not doc["reused"]:
            received[doc["answer_id"]] = (nanos(doc["epsilon_charged"]), len(doc["windows"]))
        return doc

    # (a) killed between noise and commit: nothing was charged, so the retry is a fresh release.
    env = {"DPFLOWS_FAULT_DELAY_BEFORE_COMMIT_MS": "600", "DPFLOWS_FAULT_MARK_DIR": str(mark_dir)}
    with GunicornServer(data_root, f"sqlite:///{ledger_path}", workers=WORKERS, extra_env=env,
                        app="tests.fault_app:app") as srv:
        for i in range(KILLS_PER_PHASE):
            marker = kill_in_flight(srv, keys, mark_dir, "before", query(i, 0))
            killed.append(int(marker.split(".")[0]))
            retry = record(post(srv, keys, query(i, 0)))
            assert not retry["reused"] and retry["epsilon_charged"] == EPS
        pids = wait_for_workers(srv, WORKERS)
        assert not set(pids) & set(killed)
        assert srv.log_text().count("was sent SIGKILL") >= KILLS_PER_PHASE

    # (b) killed after commit, before the response: charged and stored, so the retry reuses it.
    env = {"DPFLOWS_FAULT_DELAY_AFTER_COMMIT_MS": "600", "DPFLOWS_FAULT_MARK_DIR": str(mark_dir)}
    with GunicornServer(data_root, f"sqlite:///{ledger_path}", workers=WORKERS, extra_env=env,
                        app="tests.fault_app:app") as srv:
        for i in range(KILLS_PER_PHASE):
            marker = kill_in_flight(srv, keys, mark_dir, "after", query(i, 1))
            killed.append(int(marker.split(".")[0]))
            retry = record(post(srv, keys, query(i, 1)))
            assert retry["reused"] and retry["epsilon_charged"] == 0
            assert retry["answer_id"] == marker.split(".", 1)[1].removeprefix("after-")
        pids = wait_for_workers(srv, WORKERS)
        assert not set(pids) & set(killed)
        # Recovered: every later request succeeds on the replacement workers.
        for i in range(6):
            record(post(srv, keys, query(i, 2)))
            assert requests.get(srv.url + "/v1/budget", params={"dataset": "small"}, headers=keys.h("planner"),
                                timeout=10).status_code == 200

    assert len(killed) == 2 * KILLS_PER_PHASE
    stats = check_ledger(ledger_path, received)
    # Phase (a): only the retries were charged; phase (b): the killed requests were, retries reused.
    assert total_charged(ledger_path) == nanos(EPS) * (2 * KILLS_PER_PHASE + 6)
    assert stats["answers"] == 2 * KILLS_PER_PHASE + 6
    print(f"\n{len(killed)} SIGKILLs; ledger after recovery: {stats}")


def test_ledger_refusing_writes_is_a_clear_503_and_nothing_is_released(data_root: Path, tmp_path: Path) -> None:
    ledger_path = tmp_path / "ledger.db"
    keys = seeded_ledger(data_root, ledger_path)
    env = {"DPFLOWS_FAULT_LEDGER_QUERY_ONLY": "1"}
    with GunicornServer(data_root, f"sqlite:///{ledger_path}", workers=1, extra_env=env,
                        app="tests.fault_app:app") as srv:
        pid = srv.worker_pids()
        for i in range(3):
            r = post(srv, keys, query(i, 3))
            assert r.status_code == 503, r.text
            error = r.json()["error"]
            assert error["code"] == "unavailable"
            assert "ledger" in error["message"] and "nothing was charged or released" in error["message"]
            assert "values" not in r.json() and "answer_id" not in r.json()
        # Reads still work, and the worker did not crash.
        assert requests.get(srv.url + "/v1/budget", params={"dataset": "small"}, headers=keys.h("planner"),
                            timeout=10).status_code == 200
        assert srv.worker_pids() == pid
        assert "Traceback" not in srv.log_text()
    con = SqliteLedger(ledger_path)
    try:
        assert con.get_answer("x") is None
    finally:
        con.close()
    assert total_charged(ledger_path) == 0
    assert check_ledger(ledger_path, {})["answers"] == 0


@pytest.mark.parametrize("damage", ["truncate trips.arrow", "delete presence.arrow", "garble metadata.json"])
def test_missing_or_corrupt_aggregates_are_a_clear_503_on_first_use(data_root: Path, tmp_path: Path,
                                                                     damage: str) -> None:
    root = tmp_path / "data"
    shutil.copytree(data_root, root)
    ledger_path = tmp_path / "ledger.db"
    keys = seeded_ledger(root, ledger_path)
    action, name = damage.split(" ")
    dataset = root / "datasets" / "small"
    target = (version_dir(dataset) if name == "metadata.json" else load_dataset(dataset).window_refs[0].path) / name
    if action == "truncate":
        target.write_bytes(target.read_bytes()[:200])
    elif action == "delete":
        target.unlink()
    else:
        target.write_text("{not json")
    with GunicornServer(root, f"sqlite:///{ledger_path}", workers=1) as srv:
        pid = srv.worker_pids()
        for _ in range(2):  # not cached as a success, not a crash, the same answer each time
            r = post(srv, keys, query(0, 0))
            assert r.status_code == 503, r.text
            error = r.json()["error"]
            assert error["code"] == "data_unavailable", error
            assert "small" in error["message"] or name in error["message"], error
        assert srv.worker_pids() == pid
        assert "Traceback" not in srv.log_text()
    assert total_charged(ledger_path) == 0
