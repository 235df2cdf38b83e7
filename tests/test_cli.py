"""The `dpflows` command's admin tasks, run as a real subprocess against real storage."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from dpflows.budget import Epsilon
from dpflows.ledger.sqlite import SqliteLedger
from tests.servers import free_port

ROOT = Path(__file__).resolve().parents[1]


def dpflows(*args: str, root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dpflows.cli", *args, "--data-dir", str(root), "--ledger-url", f"sqlite:///{root}/l.db"],
        capture_output=True, text=True, cwd=ROOT, check=False, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )


def test_admin_commands(data_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    shutil.copytree(data_root, root)
    out = dpflows("admin", "create-client", "--name", "ana", "--role", "analyst", root=root)
    assert out.returncode == 0, out.stderr
    key = out.stdout.split("API key (shown once, store it now): ")[1].strip()
    assert key.startswith("dpf_")
    assert dpflows("admin", "set-cap", "--dataset", "small", "--epsilon", "0.5", "--client", "ana", root=root).returncode == 0
    assert dpflows("admin", "set-cap", "--dataset", "small", "--epsilon", "2", "--global", root=root).returncode == 0
    ledger = SqliteLedger(root / "l.db")
    [budget] = ledger.window_budgets("small", ledger.client_by_name("ana").id, [2])
    assert budget.client_cap == Epsilon.parse("0.5") and budget.global_cap == Epsilon.parse("2")
    listing = dpflows("admin", "list-clients", root=root).stdout
    assert "ana\tanalyst" in listing and key not in listing
    csv = root / "z.csv"
    csv.write_text("cell_id,zone_id\n" + "".join(f"c{i:03d},{i // 20}\n" for i in range(40)))
    out = dpflows("admin", "add-zoning", "--dataset", "small", "--name", "halves", "--csv", str(csv), "--coarse",
                  "--min-cells", "20", root=root)
    assert out.returncode == 0 and "2 zones (coarse)" in out.stdout
    bad = dpflows("admin", "set-cap", "--dataset", "small", "--epsilon", "nan", "--global", root=root)
    assert bad.returncode == 2 and "epsilon='nan' is not finite" in bad.stderr
    rows = [json.loads(line) for line in dpflows("admin", "audit", root=root).stdout.splitlines()]
    assert [r["action"] for r in rows] == ["admin.create_client", "admin.set_cap", "admin.set_cap", "admin.add_zoning"]
    key_id = ledger.list_keys(ledger.client_by_name("ana").id)[0].id
    assert dpflows("admin", "revoke-key", "--key-id", str(key_id), root=root).returncode == 0
    assert ledger.client_for_key_hash("x") is None and ledger.list_keys(1)[0].revoked_at is not None
    ledger.close()


def test_groups_and_allocations(data_root: Path, tmp_path: Path) -> None:
    """`set-group` and `set-cap --group` (issue 17); an allocation above the global cap exits 2, naming it."""
    root = tmp_path / "root"
    shutil.copytree(data_root, root)
    assert dpflows("admin", "create-client", "--name", "ana", "--role", "analyst", root=root).returncode == 0
    out = dpflows("admin", "set-group", "--client", "ana", "--group", "police", root=root)
    assert out.returncode == 0 and out.stdout.strip() == "ana: in group police", out.stderr
    assert dpflows("admin", "set-cap", "--dataset", "small", "--epsilon", "2", "--global", root=root).returncode == 0
    out = dpflows("admin", "set-cap", "--dataset", "small", "--epsilon", "1.5", "--group", "police", root=root)
    assert out.returncode == 0, out.stderr
    assert "allocation of group police of population default (dataset small's), every window: epsilon 1.5" in out.stdout
    over = dpflows("admin", "set-cap", "--dataset", "small", "--epsilon", "0.6", "--group", "planning", root=root)
    assert over.returncode == 2 and "above its global cap of 2" in over.stderr
    ledger = SqliteLedger(root / "l.db")
    ana = ledger.client_by_name("ana")
    [budget] = ledger.window_budgets("small", ana.id, [0])
    assert (ana.group, budget.group_cap) == ("police", Epsilon.parse("1.5"))
    ledger.close()
    assert dpflows("admin", "set-group", "--client", "ana", "--alone", root=root).stdout.strip() == "ana: alone"
    # the population's figures, and its horizon cap (issue 17, item 3)
    out = dpflows("admin", "set-cap", "--population", "default", "--epsilon", "0.5", "--group", "planning",
                  "--window", "3", root=root)
    assert out.returncode == 0 and "on population default, window 3: epsilon 0.5" in out.stdout, out.stderr
    out = dpflows("admin", "set-horizon", "--population", "default", "--windows", "52", "--epsilon", "4", root=root)
    assert out.stdout.strip() == "population default: at most epsilon 4 over any 52 consecutive windows", out.stderr
    listing = dpflows("admin", "list-allocations", "--dataset", "small", root=root).stdout.splitlines()
    assert listing == [
        "population default: budgets in epsilon, windows of 7 days from 2024-03-04",
        "horizon cap: epsilon 4 over any 52 consecutive windows",
        "global cap\tevery window\tepsilon 2",
        "group planning\twindow 3\tepsilon 0.5",
        "group police\tevery window\tepsilon 1.5",
    ]
    bad = dpflows("admin", "set-horizon", "--windows", "52", "--rho", "4", root=root)
    assert bad.returncode == 2 and "send the cap as epsilon" in bad.stderr
    assert dpflows("admin", "set-horizon", "--remove", root=root).stdout.strip() == "population default: no horizon cap"


def test_add_zoning_from_polygons_and_grid(data_root: Path, tmp_path: Path) -> None:
    """--from-geojson assigns cells from polygons and names the cells it sent to the nearest one;
    --grid makes squares; bad input exits 2 naming the file, the field and the fix."""
    from tests.test_zoning_sources import WARDS

    root = tmp_path / "root"
    shutil.copytree(data_root, root)
    wards = tmp_path / "wards.geojson"
    wards.write_text(json.dumps(WARDS))
    out = dpflows("admin", "add-zoning", "--dataset", "small", "--name", "wards", "--from-geojson", str(wards),
                  "--id-field", "WARD", root=root)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "zoning wards: 2 zones from geojson"
    assert lines[1].startswith("11 cells lie outside every polygon and went to the nearest one (farthest 1.7")
    assert "c007->east (0.426 km)" in lines[1] and "c036->west (0.426 km)" in lines[1]
    assert lines[2] == "1 polygons hold no cell and are not zones: far"
    stored = json.loads((root / "datasets" / "small" / "zonings" / "wards.json").read_text())
    assert stored["zones"]["c000"] == "west" and stored["geometry"]["features"][0]["properties"] == {"zone_id": "west"}

    out = dpflows("admin", "add-zoning", "--dataset", "small", "--name", "grid1", "--grid", "1", root=root)
    assert out.returncode == 0 and out.stdout == "zoning grid1: 30 zones from grid\n", out.stderr

    bad = dpflows("admin", "add-zoning", "--dataset", "small", "--name", "w2", "--from-geojson", str(wards), root=root)
    assert bad.returncode == 2 and "--from-geojson wards.geojson needs --id-field" in bad.stderr
    bad = dpflows("admin", "add-zoning", "--dataset", "small", "--name", "w2", "--from-geojson", str(wards),
                  "--id-field", "GEOID", root=root)
    assert bad.returncode == 2 and "wards.geojson: 3 of 3 features have no value for id field 'GEOID'" in bad.stderr
    wards.write_text("{not json")
    bad = dpflows("admin", "add-zoning", "--dataset", "small", "--name", "w2", "--from-geojson", str(wards),
                  "--id-field", "WARD", root=root)
    assert bad.returncode == 2 and "wards.geojson: not valid JSON (line 1, column 2" in bad.stderr
    bad = dpflows("admin", "add-zoning", "--dataset", "small", "--name", "w2", "--csv", "x.csv", "--grid", "1", root=root)
    assert bad.returncode == 2 and "not allowed with argument" in bad.stderr
    assert not (root / "datasets" / "small" / "zonings" / "w2.json").exists()


@pytest.mark.slow
def test_serve_execs_gunicorn_that_answers(data_root: Path, tmp_path: Path) -> None:
    """`dpflows serve` replaces itself with gunicorn on api.wsgi; a key made by the CLI works over HTTP."""
    root = tmp_path / "root"
    shutil.copytree(data_root, root)
    key = dpflows("admin", "create-client", "--name", "p", "--role", "planner", root=root).stdout.split(": ")[-1].strip()
    port = free_port()
    log = open(tmp_path / "serve.log", "wb")  # closed in finally
    proc = subprocess.Popen(
        [sys.executable, "-m", "dpflows.cli", "serve", "--bind", f"127.0.0.1:{port}", "--workers", "2",
         "--data-dir", str(root), "--ledger-url", f"sqlite:///{root}/l.db"],
        cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if requests.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                time.sleep(0.2)
        assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-2000:]
        r = requests.get(url + "/v1/datasets", headers={"Authorization": f"Bearer {key}"}, timeout=10)
        assert r.status_code == 200 and r.json()[0]["name"] == "small"
        assert requests.get(url + "/readyz", timeout=10).json()["status"] == "ok"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()
    assert key not in (tmp_path / "serve.log").read_text()  # the key never reaches the logs


def test_demo_city_at_real_scale_prints_how_to_ingest_it(tmp_path: Path) -> None:
    """`dpflows demo-city --cells N` writes the real-scale city and the `dpflows ingest` line that loads it;
    that line, run as printed, ingests it."""
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "dpflows.cli", *args], capture_output=True, text=True, cwd=ROOT,
                              check=False, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})

    out = run("demo-city", "--cells", "120", "--persons", "200", "--zones", "30", "--days", "7",
              "--out", str(tmp_path / "city"))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[1] == f"cells: {tmp_path / 'city' / 'cells.csv'} (120 cells)"
    assert lines[2].startswith("zoning zones30: ") and lines[2].endswith("zones30.geojson)")
    ingest = lines[-1].removeprefix("ingest: dpflows ").replace("DATA_DIR", str(tmp_path / "data")).split()
    assert "--first-day" in ingest and "2024-03-11" in ingest and any(":coarse:" in a for a in ingest)
    done = run(*ingest, "--report-epsilon", "0")
    assert done.returncode == 0, done.stderr
    assert json.loads(next((tmp_path / "data" / "datasets" / "NAME").rglob("zonings/zones30.json")).read_text())
    bad = run("demo-city", "--cells", "5", "--out", str(tmp_path / "tiny"))
    assert bad.returncode == 2 and "--cells must be at least 10" in bad.stderr
