"""The demo a newcomer gets from the first README command: a city, a ledger, three clients.

Idempotent: the city is generated and ingested once under `home`; the clients are created
once and their keys written once to `home/api-keys.env`, a file only its owner can read (mode
0600; keys are stored only as hashes, so they cannot be shown again: `dpflows admin issue-key`
makes a new one). The keys are never printed: a terminal's scrollback, a CI log or a shared
screen would keep them.
"""

from __future__ import annotations

import datetime as dt
import os
import shlex
from pathlib import Path

from dpflows.aggregates import AggregateStore
from dpflows.budget import PURE_DP, ZCDP, Epsilon, Rho
from dpflows.demo import generate_city
from dpflows.ingest.pipeline import IngestOptions, Progress, ZoningSpec, ingest_events
from dpflows.ledger.sqlite import SqliteLedger
from dpflows.service import Service

DATASET = "demo"
#: The same city accounted in zCDP (discrete Gaussian, budgets in ρ), to compare the two. Both are ingested
#: without --population: the same 20,000 people, so one population (the default) and one budget, in ρ
#: (a charge on `demo` counts as OpenDP's ρ of its ε).
DATASET_ZCDP = "demo-zcdp"
#: The population's global cap per week and its horizon cap: at most ρ 2 over any 52 weeks (docs/privacy.md).
POPULATION_CAP = "0.5"
HORIZON_WEEKS = 52
HORIZON_CAP = "2"
START = dt.date(2024, 3, 4)
#: Where the demo's keys go, under its home: shell assignments, `. var/demo/api-keys.env` loads them.
KEYS_FILE = "api-keys.env"


def write_private(path: Path, text: str) -> None:
    """Write `text` to a file only its owner can read or write (0600), never through a symlink."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as fh:
        os.fchmod(fd, 0o600)  # an older file keeps its mode on O_CREAT: set it
        fh.write(text)


def prepare_demo(home: Path, *, persons: int = 2000, bind: str = "127.0.0.1:8000") -> Service:
    """Generate and ingest the demo city if needed, seed clients and caps, print keys once."""
    data_dir = home / "data"
    served = AggregateStore(data_dir).names()
    missing = [name for name in (DATASET, DATASET_ZCDP) if name not in served]
    if missing:
        print(f"dpflows: generating a demo city of {persons} persons over 4 weeks in {home}")
        files = generate_city(home / "raw", persons=persons, seed=1, days=28, start=START)
        zonings = [ZoningSpec("districts", files.districts),
                   ZoningSpec("sectors", files.sectors, coarse=True, min_cells_per_zone=50)]
        for name in missing:
            options = IngestOptions(name=name, first_day=files.first_day, end_day=files.end_day, zonings=zonings,
                                    accounting=ZCDP if name == DATASET_ZCDP else PURE_DP)
            ingest_events(files.events, files.cells, data_dir / "datasets" / name, options, progress=Progress(True))
    service = Service(AggregateStore(data_dir), SqliteLedger(home / "ledger.db"))
    if service.ledger.list_clients():
        print(f"dpflows: demo clients exist already; their keys are in {home / KEYS_FILE} "
              f"(new key: dpflows admin issue-key --client NAME --data-dir {data_dir} "
              f"--ledger-url sqlite:///{home / 'ledger.db'})")
        return service
    _, admin_key = service.create_client("admin", "admin")
    planner, planner_key = service.create_client("city-planner", "planner")
    analyst, analyst_key = service.create_client("police-analyst", "analyst")
    keys_path = home / KEYS_FILE
    write_private(keys_path, f"""# dpflows demo API keys, shown nowhere else; keep this file private (mode 0600).
# Load them into a shell with:  . {shlex.quote(str(keys_path))}
ADMIN_KEY={admin_key}
PLANNER_KEY={planner_key}
ANALYST_KEY={analyst_key}
""")
    service.set_cap(DATASET, Epsilon.parse("2"), client_id=planner.id, window=None)
    service.set_cap(DATASET, Epsilon.parse("0.5"), client_id=analyst.id, window=None)
    # ρ caps: 0.0172 is (1, 1e-8)-DP.
    service.set_cap(DATASET_ZCDP, Rho.parse("0.02"), client_id=planner.id, window=None)
    service.set_cap(DATASET_ZCDP, Rho.parse("0.005"), client_id=analyst.id, window=None)
    # One global cap for both datasets, those of the population they are drawn from: ρ 0.5 per week
    # (what ε 1 converts to; (6.09, 1e-8)-DP), and ρ 2 over any 52 weeks ((13.4, 1e-8)-DP), since a home
    # repeats every week.
    service.set_cap(DATASET, Rho.parse(POPULATION_CAP), client_id=None, window=None)
    population = service.ledger.population_of(DATASET)[0]
    service.set_horizon_cap(population, HORIZON_WEEKS, Rho.parse(HORIZON_CAP))
    url = f"http://{bind}"
    body = ('{"dataset": "demo", "zoning": "districts", "start": "2024-03-04", "end": "2024-03-09", '
            '"hours": [7, 10], "epsilon": 0.5}')
    print(f"""
dpflows demo ready. Three clients were created; their keys are in {keys_path}
(readable only by you; shown nowhere else). Load them into your shell:
  . {shlex.quote(str(keys_path))}
  ADMIN_KEY      admin
  PLANNER_KEY    city-planner    (cap ε 2 per week on demo, ρ 0.02 on demo-zcdp)
  ANALYST_KEY    police-analyst  (cap ε 0.5 / ρ 0.005 per week, coarse flows only)
Both datasets draw on one budget (the same people): ρ {POPULATION_CAP} per week, ρ {HORIZON_CAP} over any \
{HORIZON_WEEKS} weeks; a charge of ε on demo counts as ρ = ε²/2 there.

First query (morning-peak flows between districts, first week, ε = 0.5):
  curl -s {url}/v1/flows -H "Authorization: Bearer $PLANNER_KEY" -H 'Content-Type: application/json' \\
    -d '{body}'
The same city accounted in zCDP: dataset "demo-zcdp", send "rho" (e.g. 0.002) instead of "epsilon".
API docs: {url}/docs    Planner page: {url}/planner/
""", flush=True)
    return service
