"""The demo a newcomer gets from the first README command: a city, a ledger, three clients.

Idempotent: the city is generated and ingested once under `home`; the clients are created
once and their keys printed once (keys are stored only as hashes, so they cannot be shown
again: `dpflows admin issue-key` makes a new one).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from dpflows.aggregates import AggregateStore
from dpflows.budget import Epsilon
from dpflows.demo import generate_city
from dpflows.ingest.pipeline import Progress, ZoningSpec, ingest_events
from dpflows.ledger.sqlite import SqliteLedger
from dpflows.service import Service

DATASET = "demo"
START = dt.date(2024, 3, 4)


def prepare_demo(home: Path, *, persons: int = 2000, bind: str = "127.0.0.1:8000") -> Service:
    """Generate and ingest the demo city if needed, seed clients and caps, print keys once."""
    data_dir = home / "data"
    dataset_dir = data_dir / "datasets" / DATASET
    if not (dataset_dir / "metadata.json").exists():
        print(f"dpflows: generating a demo city of {persons} persons over 4 weeks in {home}")
        files = generate_city(home / "raw", persons=persons, seed=1, days=28, start=START)
        ingest_events(files.events, files.cells, dataset_dir, name=DATASET, progress=Progress(True),
                      zonings=[ZoningSpec("districts", files.districts),
                               ZoningSpec("sectors", files.sectors, coarse=True, min_cells_per_zone=50)])
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
    url = f"http://{bind}"
    body = ('{"dataset": "demo", "zoning": "districts", "start": "2024-03-04", "end": "2024-03-09", '
            '"hours": [7, 10], "epsilon": 0.5}')
    print(f"""
dpflows demo ready. These keys are shown once; keep them.
  admin           {admin_key}
  city-planner    {planner_key}   (cap 2 per week)
  police-analyst  {analyst_key}   (cap 0.5 per week, coarse flows only)

First query (morning-peak flows between districts, first week, ε = 0.5):
  curl -s {url}/v1/flows -H "Authorization: Bearer {planner_key}" -H 'Content-Type: application/json' \\
    -d '{body}'
API docs: {url}/docs    Planner page: {url}/planner/
""", flush=True)
    return service
