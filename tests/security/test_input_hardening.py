"""Issue 18, the smaller items that live in the HTTP layer, against a real gunicorn.

- ε, ρ, max_error (and confidence) sent as JSON strings: main took "1" as 1 and charged it,
  though OpenAPI says number. Now a 422 naming the field, nothing charged.
- Names with a trailing newline or control characters: main's name check used re.match, whose
  `$` matches before a trailing newline, so "sectors\\n" passed as a zoning name (and became a
  file name); client names and zone ids were not checked at all. Now a 422 naming the field.
- CSV answers: zone ids starting with = + - @ are formulas to a spreadsheet; now they get a
  leading apostrophe, and numbers (negative noisy counts too) stay numbers.
- The demo printed its three API keys to stdout; now it writes them to a 0600 file and prints
  its path.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from dpflows.budget import Epsilon
from dpflows.ledger.sqlite import SqliteLedger
from tests.api.conftest import FLOWS, Keys
from tests.security.conftest import seeded_ledger
from tests.servers import ROOT, GunicornServer

pytestmark = pytest.mark.slow

NO_LIMITS = {"DPFLOWS_RATE_LIMIT": "100000", "DPFLOWS_RATE_BURST": "100000"}
FORMULA_ZONES = ("=HYPERLINK(\"http://evil.example\",\"x\")", "+31", "-north", "@SUM(A1)")


@pytest.fixture(scope="module")
def server(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GunicornServer, Keys, Path]]:
    tmp = tmp_path_factory.mktemp("hardening")
    root = tmp / "data"
    shutil.copytree(data_root, root)  # zonings are uploaded here: never into the shared root
    keys = seeded_ledger(root, tmp / "ledger.db")
    with GunicornServer(root, f"sqlite:///{tmp / 'ledger.db'}", workers=2, log_path=tmp / "gunicorn.log",
                        extra_env=NO_LIMITS) as srv:
        yield srv, keys, tmp / "ledger.db"


def post(srv: GunicornServer, keys: Keys, role: str, path: str, body: object) -> requests.Response:
    return requests.post(srv.url + path, json=body, headers=keys.h(role), timeout=30)


def charged_on_small(ledger_path: Path) -> Epsilon:
    ledger = SqliteLedger(ledger_path)
    try:
        return sum((ledger.total_charged("small", w) for w in range(4)), Epsilon.parse("0"))
    finally:
        ledger.close()


@pytest.mark.parametrize(("field", "value"), [("epsilon", "1"), ("epsilon", "0.25"), ("epsilon", True),
                                              ("max_error", "50"), ("confidence", "0.9"), ("epsilon", [0.25])])
def test_privacy_parameters_sent_as_strings_are_refused(server, field: str, value: object) -> None:
    srv, keys, ledger_path = server
    before = charged_on_small(ledger_path)
    body = {**FLOWS, "hours": [2, 3], field: value}
    if field in ("max_error", "confidence"):
        body.pop("epsilon")
        body.setdefault("max_error", 50)
    for path in ("/v1/flows", "/v1/quote"):
        sent = {**body, "query": "flows"} if path == "/v1/quote" else body
        r = post(srv, keys, "planner", path, sent)
        assert r.status_code == 422, (path, r.status_code, r.text)
        error = r.json()["error"]
        assert error["code"] == "invalid_input" and error["field"] == field, error
        assert "JSON number" in error["message"]
    assert charged_on_small(ledger_path) == before  # nothing charged


def test_rho_and_caps_sent_as_strings_are_refused(server) -> None:
    srv, keys, _ = server
    r = post(srv, keys, "planner", "/v1/flows", {k: v for k, v in {**FLOWS, "rho": "0.01"}.items() if k != "epsilon"})
    assert r.status_code == 422 and r.json()["error"]["field"] == "rho"
    r = requests.put(srv.url + "/v1/admin/caps", json={"dataset": "small", "epsilon": "5"}, headers=keys.h("admin"),
                     timeout=10)
    assert r.status_code == 422 and r.json()["error"]["field"] == "epsilon"
    assert post(srv, keys, "planner", "/v1/flows", {**FLOWS, "hours": [2, 3], "epsilon": 0.25}).status_code == 200


@pytest.mark.parametrize("bad", ["sectors\n", "sec\ntors", "sectors\x1b[31m", "sectors\u202e", " sectors"])
def test_names_with_control_characters_are_refused_everywhere(server, bad: str) -> None:
    srv, keys, _ = server
    dataset_bad = bad.replace("sectors", "small")
    cases = [
        ("planner", "POST", "/v1/flows", {**FLOWS, "zoning": bad}, "zoning"),
        ("planner", "POST", "/v1/flows", {**FLOWS, "dataset": dataset_bad}, "dataset"),
        ("planner", "POST", "/v1/patterns", {**FLOWS, "zone": bad.replace("sectors", "s0")}, "zone"),
        ("planner", "GET", "/v1/budget?dataset=" + requests.utils.quote(dataset_bad), None, "dataset"),
        ("planner", "GET", f"/v1/datasets/small/zonings/{requests.utils.quote(bad)}", None, "zoning"),
        ("planner", "GET", f"/v1/datasets/{requests.utils.quote(dataset_bad)}/zonings/sectors", None, "dataset"),
        ("admin", "POST", "/v1/admin/clients", {"name": bad.replace("sectors", "mallory"), "role": "planner"}, "name"),
        ("admin", "POST", "/v1/admin/datasets/small/zonings",
         {"name": bad, "csv": "cell_id,zone_id\n" + "".join(f"c{i:03d},z\n" for i in range(40))}, "name"),
        ("admin", "PUT", "/v1/admin/caps", {"dataset": dataset_bad, "epsilon": 1}, "dataset"),
    ]
    for role, method, path, body, field in cases:
        r = requests.request(method, srv.url + path, json=body, headers=keys.h(role), timeout=10)
        assert r.status_code == 422, (path, body, r.status_code, r.text)
        assert r.json()["error"]["field"] == field, (path, r.json())
    clients = requests.get(srv.url + "/v1/admin/clients", headers=keys.h("admin"), timeout=10).json()
    assert all(c["name"].isprintable() for c in clients)
    assert not any(p.name.startswith("sectors") and p.name != "sectors.json"
                   for p in (srv_data_root(srv) / "datasets" / "small" / "zonings").iterdir())


def srv_data_root(srv: GunicornServer) -> Path:
    return srv.log_path.parent / "data"


def test_zone_ids_with_control_characters_are_refused_in_zoning_uploads(server) -> None:
    srv, keys, _ = server
    rows = "".join(f"c{i:03d},{'z' if i else 'z' + chr(7)}\n" for i in range(40))
    r = post(srv, keys, "admin", "/v1/admin/datasets/small/zonings", {"name": "bell", "csv": "cell_id,zone_id\n" + rows})
    assert r.status_code == 422 and r.json()["error"]["field"] == "csv", r.text
    assert "control character" in r.json()["error"]["message"]


def test_csv_cells_are_escaped_against_formula_injection(server) -> None:
    srv, keys, _ = server
    rows = "".join(f"c{i:03d},{FORMULA_ZONES[i // 10]}\n" for i in range(40))
    buf = io.StringIO()
    csv.writer(buf).writerows([["cell_id", "zone_id"], *[r.split(",", 1) for r in rows.splitlines()]])
    r = post(srv, keys, "admin", "/v1/admin/datasets/small/zonings", {"name": "formulas", "csv": buf.getvalue()})
    assert r.status_code == 201, r.text
    # Hours 3-4 of one week at ε = 0.05: a few trips per pair under noise of scale 100, so negative counts.
    query = {**FLOWS, "zoning": "formulas", "hours": [3, 4], "epsilon": 0.05}
    answer = post(srv, keys, "planner", "/v1/flows?format=csv", query)
    assert answer.status_code == 200 and answer.headers["Content-Type"].startswith("text/csv")
    table = list(csv.DictReader(io.StringIO(answer.text)))
    assert len(table) == 16
    shown = {row["origin"] for row in table} | {row["destination"] for row in table}
    assert shown == {"'" + zone for zone in FORMULA_ZONES}
    assert all(not cell.startswith(("=", "+", "-", "@", "\t", "\r")) for row in table
               for name, cell in row.items() if name in ("origin", "destination"))
    counts = [int(row["count"]) for row in table]  # numbers stay numbers: no apostrophe on "-12"
    json_counts = [v["count"] for v in post(srv, keys, "planner", "/v1/flows", query).json()["values"]]
    assert counts == json_counts  # the same stored answer, reused
    assert min(counts) < 0  # the check above met a negative number
    assert all(float(row["error_bound_95"]) > 0 for row in table)


def test_the_demo_writes_keys_to_a_private_file_not_stdout(tmp_path: Path) -> None:
    home = tmp_path / "demo"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-m", "dpflows.cli", "demo", "--no-serve", "--persons", "300", "--home",
                          str(home)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    keys_file = home / "api-keys.env"
    assert "dpf_" not in out.stdout + out.stderr
    assert str(keys_file) in out.stdout
    assert stat.S_IMODE(keys_file.stat().st_mode) == 0o600
    text = keys_file.read_text()
    assert all(f"{name}_KEY=dpf_" in text for name in ("ADMIN", "PLANNER", "ANALYST"))
    # Sourced by a shell, the file gives the README's $PLANNER_KEY.
    shell = subprocess.run(["bash", "-c", f". {keys_file} && printf %s \"$PLANNER_KEY\""], capture_output=True,
                           text=True, timeout=10, check=True)
    assert shell.stdout.startswith("dpf_") and shell.stdout in text
    again = subprocess.run([sys.executable, "-m", "dpflows.cli", "demo", "--no-serve", "--home", str(home)],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert again.returncode == 0 and "dpf_" not in again.stdout and str(keys_file) in again.stdout


def test_ledger_and_aggregate_files_are_private(tmp_path: Path) -> None:
    """Issue 18: the ledger and the aggregates are created readable by the service's user alone."""
    import datetime as dt
    import stat

    import polars as pl

    from dpflows.aggregates import DatasetMetadata, version_dir, write_aggregates
    from dpflows.ledger.sqlite import SqliteLedger

    ledger = SqliteLedger(tmp_path / "var" / "ledger.db")
    ledger.create_client("someone", "planner")
    ledger.close()
    for f in (tmp_path / "var").iterdir():
        assert stat.S_IMODE(f.stat().st_mode) & 0o077 == 0, f.name
    cells = pl.DataFrame({"cell_id": ["a"], "lat": [0.0], "lon": [0.0]})
    trips = pl.DataFrame(schema={"day": pl.Date, "hour": pl.Int8, "origin": pl.String, "dest": pl.String,
                                 "count": pl.Int64})
    presence = pl.DataFrame(schema={"day": pl.Date, "hour": pl.Int8, "cell": pl.String, "count": pl.Int64})
    out = write_aggregates(tmp_path / "datasets" / "d", DatasetMetadata("d", dt.date(2024, 3, 4),
                                                                        dt.date(2024, 3, 11), 7, 5, 5),
                           cells, trips, presence)
    assert stat.S_IMODE(version_dir(out).stat().st_mode) == 0o700
    for f in version_dir(out).iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f.name


def test_a_quote_refuses_what_the_query_would(data_root: Path, tmp_path: Path) -> None:
    """Issue 18: a free quote was answered for an unknown zone and for more than the remaining budget."""
    from api import create_app
    from tests.api.conftest import seed_clients

    app = create_app({"DPFLOWS_DATA_DIR": str(data_root), "DPFLOWS_LEDGER_URL": f"sqlite:///{tmp_path}/l.db"})
    keys = seed_clients(app.extensions["dpflows"].service)
    http = app.test_client()
    week = {"dataset": "small", "start": "2024-03-04", "end": "2024-03-11"}
    unknown = {**week, "query": "patterns", "zoning": "districts", "zone": "nowhere", "epsilon": 0.1}
    for path, body in (("/v1/quote", unknown), ("/v1/patterns", {k: v for k, v in unknown.items() if k != "query"})):
        r = http.post(path, json=body, headers=keys.h("planner"))
        assert r.status_code == 422 and r.get_json()["error"]["field"] == "zone", (path, r.get_json())
    assert http.post("/v1/flows", json={**week, "zoning": "districts", "epsilon": 0.75},
                     headers=keys.h("planner")).status_code == 200
    over = {**week, "zoning": "districts", "hours": [7, 10], "epsilon": 0.5}
    for path, body in (("/v1/quote", {**over, "query": "flows"}), ("/v1/flows", over)):
        r = http.post(path, json=body, headers=keys.h("planner"))
        assert r.status_code == 409 and "remaining budget of 0.25" in r.get_json()["error"]["message"], r.get_json()
    assert http.post("/v1/quote", json={**over, "epsilon": 0.25, "query": "flows"},
                     headers=keys.h("planner")).status_code == 200


def test_a_ledger_restored_from_an_older_backup_is_refused_at_start(data_root: Path, tmp_path: Path) -> None:
    """Issue 18: restoring yesterday's ledger file silently reset every budget spent since."""
    from api import create_app
    from dpflows.errors import Unavailable
    from tests.api.conftest import seed_clients

    ledger = tmp_path / "ledger.db"
    config = {"DPFLOWS_DATA_DIR": str(data_root), "DPFLOWS_LEDGER_URL": f"sqlite:///{ledger}"}
    app = create_app(config)
    keys = seed_clients(app.extensions["dpflows"].service)
    app.extensions["dpflows"].service.ledger.close()
    backup = tmp_path / "backup.db"
    shutil.copy(ledger, backup)  # the nightly backup, taken before the spending below
    app = create_app(config)
    http = app.test_client()
    week = {"dataset": "small", "start": "2024-03-04", "end": "2024-03-11", "zoning": "districts"}
    assert http.post("/v1/flows", json={**week, "epsilon": 1}, headers=keys.h("planner")).status_code == 200
    app.extensions["dpflows"].service.ledger.close()
    create_app(config).extensions["dpflows"].service.ledger.close()  # a restart raises the mark to what it holds
    for suffix in ("-wal", "-shm"):
        Path(str(ledger) + suffix).unlink(missing_ok=True)
    shutil.copy(backup, ledger)  # the restore
    with pytest.raises(Unavailable, match="restored from an older backup"):
        create_app(config)


def test_generated_events_are_private(tmp_path: Path) -> None:
    """Issue 18: event files hold one row per person and event: created 0600."""
    import stat

    from dpflows.demo import generate_city

    city = generate_city(tmp_path / "raw", persons=5, days=1, ground_truth=True)
    assert stat.S_IMODE(city.events.stat().st_mode) == 0o600
    assert city.truth is not None and stat.S_IMODE(city.truth.stat().st_mode) == 0o600
