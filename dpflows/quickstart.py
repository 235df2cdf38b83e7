"""The demo a newcomer gets from the first README command: a city, a ledger, three clients.

Idempotent: the city is generated and ingested once under `home`; the clients are created
once and their keys printed once (keys are stored only as hashes, so they cannot be shown
again: `dpflows admin issue-key` makes a new one).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from dpflows.aggregates import AggregateStore
from dpflows.budget import PURE_DP, ZCDP, Epsilon, Rho
from dpflows.demo import generate_city
from dpflows.ingest.pipeline import Progress, ZoningSpec, ingest_events
from dpflows.ledger.sqlite import SqliteLedger
from dpflows.service import Service

DATASET = "demo"
#: The same city accounted in zCDP (discrete Gaussian, budgets in ρ), to compare the two.
DATASET_ZCDP = "demo-zcdp"
START = dt.date(2024, 3, 4)


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
            ingest_events(files.events, files.cells, data_dir / "datasets" / name, name=name,
                          first_day=files.first_day, end_day=files.end_day, progress=Progress(True), zonings=zonings,
                          accounting=ZCDP if name == DATASET_ZCDP else PURE_DP)
    service = Service(AggregateStore(data_dir), SqliteLedger(home / "ledger.db"))
    if service.ledger.list_clients():
        print("dpflows: demo clients exist already; their keys were printed when they were created "
              f"(new key: dpflows admin issue-key --client NAME --data-dir {data_dir} "
              f"--ledger-url sqlite:///{home / 'ledger.db'})")
        return service
    _, admin_key = service.create_client("admin", "admin")
    planner, planner_key = service.create_client("city-planner", "planner")
    analyst, analyst_key = service.create_client("police-analyst", "analyst")
    service.set_cap(DATASET, Epsilon.parse("2"), client_id=planner.id, window=None)
    service.set_cap(DATASET, Epsilon.parse("0.5"), client_id=analyst.id, window=None)
    service.set_cap(DATASET, Epsilon.parse("4"), client_id=None, window=None)
    # ρ caps: 0.0172 is (1, 1e-8)-DP; the global 0.05 is (1.76, 1e-8)-DP per week.
    service.set_cap(DATASET_ZCDP, Rho.parse("0.02"), client_id=planner.id, window=None)
    service.set_cap(DATASET_ZCDP, Rho.parse("0.005"), client_id=analyst.id, window=None)
    service.set_cap(DATASET_ZCDP, Rho.parse("0.05"), client_id=None, window=None)
    url = f"http://{bind}"
    body = ('{"dataset": "demo", "zoning": "districts", "start": "2024-03-04", "end": "2024-03-09", '
            '"hours": [7, 10], "epsilon": 0.5}')
    print(f"""
dpflows demo ready. These keys are shown once; keep them.
  admin           {admin_key}
  city-planner    {planner_key}   (cap ε 2 per week on demo, ρ 0.02 on demo-zcdp)
  police-analyst  {analyst_key}   (cap ε 0.5 / ρ 0.005 per week, coarse flows only)

First query (morning-peak flows between districts, first week, ε = 0.5):
  curl -s {url}/v1/flows -H "Authorization: Bearer {planner_key}" -H 'Content-Type: application/json' \\
    -d '{body}'
The same city accounted in zCDP: dataset "demo-zcdp", send "rho" (e.g. 0.002) instead of "epsilon".
API docs: {url}/docs    Planner page: {url}/planner/
""", flush=True)
    return service
