"""No exact count and no API key in any log line, error body or audit row.

A varied traffic mix goes through a real gunicorn (2 workers): every role, answers and reused
answers, quotes, budget and catalog reads, every admin call, and every error kind the API has
(400, 401 missing/unknown/revoked key, 403, 404, 405, 409 budget and name conflict, 413, 422,
429, 503 damaged data). Then ALL of gunicorn's output (its own lines and dpflows' JSON request
log), every error body and the whole audit log (read through the admin API) are scanned for

* every exact count the sent queries aggregate (computed here with `dpflows.queries.prepare`),
  restricted to values ≥ 10 and to values that are not themselves public numbers of the
  exchange (a number this test sent, a status code, a configured limit), matched as whole
  numbers after dates, times, pids and durations are masked;
* every API key issued or tried, its secret part, and its SHA-256 digest.

Person ids: `test_person_ids_never_leave_ingestion` ingests events with recognisable pseudonyms
through the real command and scans everything readable afterwards for them.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import requests

from dpflows.aggregates import AggregateStore, load_dataset, version_dir
from dpflows.budget import Epsilon
from dpflows.ledger.sqlite import SqliteLedger
from dpflows.queries import make_spec, prepare
from dpflows.service import Service, hash_key
from tests.api.conftest import FLOWS, seed_clients
from tests.servers import GunicornServer

pytestmark = pytest.mark.slow

RATE = {"DPFLOWS_RATE_LIMIT": "5", "DPFLOWS_RATE_BURST": "60"}
# Masked before scanning: public numbers with a fixed shape that are not counts.
MASKS = [
    re.compile(r"\d{4}-\d{2}-\d{2}([ T]\d{2}:\d{2}(:\d{2}(\.\d+)?)?)?( ?[+-]\d{2}:?\d{2}|Z)?"),  # dates, times
    re.compile(r"\[\d+\]"), re.compile(r"pid:? \d+"), re.compile(r"127\.0\.0\.1:\d+"),  # gunicorn pids, bind
    re.compile(r"\d+\.\d+"),  # decimals: durations, ε, error bounds (counts are integers)
]
SAFE_JSON_FIELDS = ("ts", "ms", "status", "client_id", "request_id", "pid")  # structurally numbers/ids, not data


def number_pattern(n: int) -> re.Pattern[str]:
    return re.compile(rf"(?<![\w.]){n}(?![\w.])")


def mask(text: str) -> str:
    for pattern in MASKS:
        text = pattern.sub(" ", text)
    return text


def log_lines_without_safe_fields(log: str) -> list[str]:
    out = []
    for line in log.splitlines():
        try:
            doc = json.loads(line)
        except ValueError:
            out.append(line)
            continue
        if isinstance(doc, dict):
            out.append(json.dumps({k: v for k, v in doc.items() if k not in SAFE_JSON_FIELDS}))
        else:
            out.append(line)
    return out


def integers_in(value: Any) -> set[int]:
    return {int(m) for m in re.findall(r"\d+", json.dumps(value, default=str))}


class Traffic:
    def __init__(self, url: str) -> None:
        self.url = url
        self.session = requests.Session()
        self.sent: list[tuple[str, Any]] = []  # (path, body or query)
        self.responses: list[requests.Response] = []

    def __call__(self, method: str, path: str, key: str | None = None, *, json_body: Any = None,
                 data: bytes | None = None, headers: dict[str, str] | None = None) -> requests.Response:
        h = dict(headers or {})
        if key is not None:
            h["Authorization"] = f"Bearer {key}"
        if data is not None:
            h["Content-Type"] = "application/json"
        r = self.session.request(method, self.url + path, json=json_body, data=data, headers=h, timeout=60)
        self.sent.append((path, json_body))
        self.responses.append(r)
        return r


def test_logs_error_bodies_and_audit_hold_no_count_and_no_key(data_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "data"
    shutil.copytree(data_root, root)
    shutil.copytree(root / "datasets" / "small", root / "datasets" / "broken")
    meta = json.loads((version_dir(root / "datasets" / "broken") / "metadata.json").read_text())
    (version_dir(root / "datasets" / "broken") / "metadata.json").write_text(json.dumps({**meta, "name": "broken"}))
    trips = load_dataset(root / "datasets" / "broken").window_refs[0].path / "trips.arrow"
    trips.write_bytes(trips.read_bytes()[:300])
    ledger_path = tmp_path / "ledger.db"
    setup = Service(AggregateStore(root), SqliteLedger(ledger_path))
    keys = seed_clients(setup)
    for client_id in (keys.planner_id, keys.analyst_id):  # one sharing group: the planner reuses the analyst's
        setup.set_group(client_id, "city")
    setup.ledger.close()
    issued = [keys.admin, keys.planner, keys.analyst]
    tried = ["dpf_" + "x" * 43, "not-a-key", keys.planner[:-1] + ("A" if keys.planner[-1] != "A" else "B")]

    queries = []
    for w, (a, b) in enumerate([(7, 10), (16, 19), (0, 24), (22, 2)]):
        start = dt.date(2024, 3, 4) + dt.timedelta(days=7 * w)
        span = {"start": start.isoformat(), "end": (start + dt.timedelta(days=7)).isoformat(), "hours": [a, b]}
        queries += [("flows", {**FLOWS, **span, "zoning": "sectors", "epsilon": 0.05, "case_ref": "c-7"}, "analyst"),
                    ("flows", {**FLOWS, **span, "zoning": "districts", "epsilon": 0.05}, "planner"),
                    ("presence", {**FLOWS, **span, "zoning": "districts", "epsilon": 0.05}, "planner"),
                    ("patterns", {**FLOWS, **span, "zoning": "districts", "zone": "d1", "epsilon": 0.05}, "planner")]

    with GunicornServer(root, f"sqlite:///{ledger_path}", workers=2, extra_env=RATE) as srv:
        send = Traffic(srv.url)
        k = {"admin": keys.admin, "planner": keys.planner, "analyst": keys.analyst}
        # answers, then the same again (reused, by the other role where allowed), quotes, reads
        for kind, body, role in queries:
            assert send("POST", f"/v1/{kind}", k[role], json_body=body).status_code == 200
        for kind, body, _role in queries:
            again = send("POST", f"/v1/{kind}", k["planner"], json_body=body)
            assert again.status_code == 200 and again.json()["reused"]
        assert send("POST", "/v1/quote", k["planner"], json_body={**queries[1][1], "query": "flows"}).ok
        assert send("GET", "/v1/budget?dataset=small", k["analyst"]).ok
        assert send("GET", "/v1/datasets/small/zonings/sectors", k["analyst"]).ok
        # admin: clients, keys, caps, zoning, audit
        created = send("POST", "/v1/admin/clients", k["admin"], json_body={"name": "city-lab", "role": "planner"})
        assert created.status_code == 201
        lab_key = created.json()["api_key"]
        issued.append(lab_key)
        rotated = send("POST", f"/v1/admin/clients/{created.json()['client']['id']}/keys", k["admin"])
        issued.append(rotated.json()["api_key"])
        assert send("PUT", "/v1/admin/caps", k["admin"], json_body={
            "dataset": "small", "epsilon": 0.06, "client_id": created.json()["client"]["id"]}).ok
        lab_body = {**queries[1][1], "hours": [8, 9], "epsilon": 0.05}
        assert send("POST", "/v1/flows", lab_key, json_body=lab_body).ok
        budget_refused = send("POST", "/v1/flows", lab_key, json_body={**lab_body, "hours": [9, 10]})
        assert budget_refused.status_code == 409
        queries.append(("flows", {**lab_body, "hours": [9, 10]}, "planner"))
        listed = send("GET", "/v1/admin/clients", k["admin"]).json()
        lab_keys = [key["id"] for c in listed if c["name"] == "city-lab" for key in c["keys"]]
        assert send("DELETE", f"/v1/admin/keys/{lab_keys[0]}", k["admin"]).ok
        zoning_csv = "cell_id,zone_id\n" + "".join(f"c{i:03d},h{i // 20}\n" for i in range(40))
        assert send("POST", "/v1/admin/datasets/small/zonings", k["admin"],
                    json_body={"name": "halves", "csv": zoning_csv, "coarse": True}).status_code == 201
        # every error kind
        expected = [
            (send("POST", "/v1/flows", None, json_body=FLOWS), 401),
            (send("POST", "/v1/flows", tried[0], json_body=FLOWS), 401),
            (send("POST", "/v1/flows", tried[1], json_body=FLOWS), 401),
            (send("POST", "/v1/flows", tried[2], json_body=FLOWS), 401),
            (send("POST", "/v1/flows", lab_key, json_body=FLOWS), 401),  # revoked
            (send("POST", "/v1/presence", k["analyst"], json_body=queries[2][1]), 403),
            (send("POST", "/v1/flows", k["admin"], json_body=FLOWS), 403),
            (send("GET", "/v1/admin/audit", k["planner"]), 403),
            (send("POST", "/v1/flows", k["planner"], json_body={**FLOWS, "epsilon": 3}), 403),
            (send("POST", "/v1/flows", k["planner"], json_body={**FLOWS, "dataset": "nowhere"}), 404),
            (send("GET", "/v1/nothing-here", k["planner"]), 404),
            (send("PATCH", "/v1/flows", k["planner"], json_body=FLOWS), 405),
            (send("POST", "/v1/admin/clients", k["admin"], json_body={"name": "city-lab", "role": "planner"}), 409),
            (send("POST", "/v1/flows", k["planner"], data=b"{not json"), 400),
            (send("POST", "/v1/flows", k["planner"], data=b"[" * 100_000 + b"]" * 100_000), 400),
            (send("POST", "/v1/flows", k["planner"], data=b" " * (2 * 1024 * 1024)), 413),
            (send("POST", "/v1/flows", k["planner"], json_body={**FLOWS, "epsilon": -1}), 422),
            (send("POST", "/v1/flows", k["planner"], json_body={**FLOWS, "hours": [5, 5]}), 422),
            (send("POST", "/v1/flows", k["planner"], json_body={**FLOWS, "start": "1999-01-01"}), 422),
            (send("POST", "/v1/flows", k["planner"], json_body={**FLOWS, "dataset": "broken"}), 503),
        ]
        for r, status in expected:
            assert r.status_code == status, (r.request.method, r.request.url, r.status_code, r.text[:200])
        for _ in range(300):  # bounded: stop at the first 429
            if send("GET", "/v1/datasets", k["analyst"]).status_code == 429:
                break
        assert send.responses[-1].status_code == 429
        audit: list[dict[str, Any]] = []
        after = 0
        for _ in range(50):  # bounded paging
            page = send("GET", f"/v1/admin/audit?after_id={after}&limit=100", k["admin"]).json()
            audit += page["entries"]
            if page["next_after_id"] is None:
                break
            after = page["next_after_id"]
        log = srv.log_text()

    # exact counts of every query sent, minus numbers that are public in this exchange
    data = AggregateStore(root).get("small")
    counts: set[int] = set()
    for kind, body, _ in queries:
        spec = make_spec(kind, dataset=body["dataset"], zoning=body["zoning"],
                         start=dt.date.fromisoformat(body["start"]), end=dt.date.fromisoformat(body["end"]),
                         hours=body.get("hours"), weekdays=body.get("weekdays"),
                         measure=body.get("measure") if kind == "patterns" else None,
                         zone=body.get("zone") if kind == "patterns" else None)
        prepared = prepare(spec, data)
        counts |= {int(c) for c in prepared.true_counts}
        counts.add(int(prepared.true_counts.sum()))
    public: set[int] = set()
    for path, body in send.sent:
        if isinstance(body, dict):  # the zoning CSV's cell ids are echoed nowhere
            body = {key: value for key, value in body.items() if key != "csv"}
        public |= integers_in(path) | integers_in(body)
    public |= {200, 201, 400, 401, 403, 404, 405, 409, 413, 422, 429, 503, 100000, 1024, 1048576, 60, 5}
    public |= set(range(25))  # hours of day appear normalized in the audit's query (public parameters)
    public |= {len(data.catalog)}  # public catalog facts /v1/datasets lists: cells and zones per zoning
    public |= {data.zoning(name).zone_count for name in ("cell", "districts", "sectors")}
    candidates = sorted(c for c in counts if c >= 10 and c not in public)
    assert len(candidates) >= 30, candidates  # the check means something

    error_bodies = [r.text for r in send.responses if r.status_code >= 400]
    # Successful bodies other than answers (budgets, catalog, zonings, admin, quotes) carry no counts either.
    other_bodies = [r.text for r in send.responses if r.status_code < 400 and '"values"' not in r.text
                    and "/admin/audit" not in r.request.url]
    assert len(error_bodies) >= len(expected)
    haystacks = {
        "gunicorn log": "\n".join(mask(line) for line in log_lines_without_safe_fields(log)),
        "error bodies": mask("\n".join(error_bodies)),
        "other 2xx bodies": mask("\n".join(other_bodies)),
        "audit log": mask(json.dumps([{k: v for k, v in e.items() if k not in ("id", "client_id", "epsilon")}
                                      for e in audit])),
    }
    # The detector works: a count planted in a log-shaped line is found.
    planted = mask(json.dumps({"msg": f"request with {candidates[-1]} trips"}))
    assert number_pattern(candidates[-1]).search(planted)

    leaks = [(where, n) for where, text in haystacks.items() for n in candidates if number_pattern(n).search(text)]
    assert leaks == [], leaks

    secrets = set(issued) | set(tried) | {key[4:] for key in issued} | {hash_key(key) for key in issued + tried}
    raw = {"gunicorn log": log, "error bodies": "\n".join(error_bodies), "audit log": json.dumps(audit)}
    found = [(where, s[:10]) for where, text in raw.items() for s in secrets if s in text]
    assert found == [], found
    assert "Traceback" not in log
    assert len(audit) > 40 and len(log.splitlines()) > 100
    print(f"\nscanned {len(log.splitlines())} log lines, {len(error_bodies)} error bodies, "
          f"{len(other_bodies)} other 2xx bodies, {len(audit)} audit rows "
          f"for {len(candidates)} exact counts and {len(secrets)} key strings: nothing found")



def test_person_ids_never_leave_ingestion(tmp_path: Path) -> None:
    """Issue 18: the leak scan with real person pseudonyms, through a real ingestion, serving and errors.

    Events with recognisable pseudonyms go through `dpflows ingest` (its terminal output included),
    the data root is served by a real gunicorn, every kind of question and refusal is asked; no
    pseudonym appears in anything the operator, the service or a client can read afterwards:
    command output, metadata, aggregate files, the ledger file, the audit log, logs, responses.
    """
    import polars as pl

    from dpflows.cli import main
    from dpflows.demo import generate_city

    city = generate_city(tmp_path / "raw", persons=300, seed=4, days=14)
    events = pl.read_parquet(city.events).with_columns(
        (pl.lit("PSEUDO-") + pl.col("person").cast(pl.String) + pl.lit("-XQZ")).alias("person"))
    marked = tmp_path / "raw" / "marked.parquet"
    events.write_parquet(marked)
    root = tmp_path / "data"
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        assert main(["ingest", str(marked), "--cells", str(city.cells), "--out", str(root / "datasets" / "city"),
                     "--first-day", str(city.first_day), "--end-day", str(city.end_day),
                     "--zoning", f"districts={city.districts}", "--zoning", f"sectors={city.sectors}:coarse:50"]) == 0
        # a bad input: the error names rows and columns, never the person
        bad = events.head(5).with_columns(pl.lit("NOT-A-CELL").alias("cell_id"))
        bad.write_parquet(tmp_path / "raw" / "bad.parquet")
        assert main(["ingest", str(tmp_path / "raw" / "bad.parquet"), "--cells", str(city.cells), "--out",
                     str(tmp_path / "bad"), "--first-day", str(city.first_day), "--end-day", str(city.end_day)]) == 2
    ledger_path = tmp_path / "ledger.db"
    setup = Service(AggregateStore(root), SqliteLedger(ledger_path))
    keys = seed_clients(setup, dataset="city")
    setup.set_cap("city", Epsilon.parse("3"), client_id=None, window=None)
    setup.ledger.close()
    bodies: list[str] = []
    week = {"dataset": "city", "start": "2024-03-04", "end": "2024-03-11", "epsilon": 0.1, "case_ref": "c-1"}
    with GunicornServer(root, f"sqlite:///{ledger_path}", workers=2) as srv:
        def send(path: str, key: str, body: dict[str, Any] | None = None) -> None:
            r = (requests.post(srv.url + path, json=body, headers={"Authorization": f"Bearer {key}"}, timeout=30)
                 if body is not None else requests.get(srv.url + path, headers={"Authorization": f"Bearer {key}"},
                                                       timeout=30))
            bodies.append(r.text)

        for path, body in (("/v1/flows", {**week, "zoning": "districts"}), ("/v1/presence", {**week, "zoning": "cell"}),
                           ("/v1/inflows", {**week, "zoning": "districts"}),
                           ("/v1/residents", {**week, "zoning": "districts", "end": "2024-03-18", "place": "home"}),
                           ("/v1/commuting", {**week, "zoning": "sectors", "end": "2024-03-18"}),
                           ("/v1/flows", {**week, "zoning": "nowhere"}), ("/v1/flows", {**week, "epsilon": 50})):
            send(path, keys.planner, body)
        send("/v1/flows", keys.analyst, {**week, "zoning": "sectors"})
        send("/v1/datasets", keys.planner)
        send("/v1/datasets/city/bounding-report", keys.planner)
        send("/v1/admin/audit?limit=1000", keys.admin)
        logs = srv.log_text()
    readable = [out.getvalue(), err.getvalue(), logs, *bodies]
    for path in [*root.rglob("*"), ledger_path]:
        if path.suffix == ".parquet":  # compressed: read the columns and every text value instead
            frame = pl.read_parquet(path)
            readable.append(" ".join([*frame.columns, *(str(v) for c in frame.columns if frame[c].dtype == pl.String
                                                        for v in frame[c].unique().to_list())]))
        elif path.is_file():
            readable.append(path.read_bytes().decode("latin-1"))
    assert len(readable) > 10 and any("districts" in text for text in readable)  # the scan sees real content
    leaked = [text[:200] for text in readable if "PSEUDO-" in text or "-XQZ" in text]
    assert not leaked, leaked
