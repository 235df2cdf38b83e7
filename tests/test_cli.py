"""The `dpflows` command's admin tasks, run as a real subprocess against real storage."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from dpflows.budget import Epsilon
from dpflows.ledger.sqlite import SqliteLedger

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
