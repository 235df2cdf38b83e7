"""HTTP fixtures: a Flask app over the shared test dataset and a fresh SQLite ledger, with keys."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from api import create_app
from dpflows.budget import Epsilon, PrivacyLoss
from dpflows.service import Service


@dataclass
class Keys:
    admin: str
    planner: str
    analyst: str
    planner_id: int
    analyst_id: int

    def h(self, role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {getattr(self, role)}"}


def seed_clients(service: Service, dataset: str = "small", global_cap: PrivacyLoss | None = None) -> Keys:
    """An admin, a planner (cap 1.0) and an analyst (cap 0.5); global cap 3.0 per window (`global_cap`: another,
    such as a ρ where the dataset's population is accounted in ρ)."""
    _, admin = service.create_client("admin", "admin")
    planner, pkey = service.create_client("planner", "planner")
    analyst, akey = service.create_client("analyst", "analyst")
    service.set_cap(dataset, Epsilon.parse("1"), client_id=planner.id, window=None)
    service.set_cap(dataset, Epsilon.parse("0.5"), client_id=analyst.id, window=None)
    service.set_cap(dataset, global_cap or Epsilon.parse("3"), client_id=None, window=None)
    return Keys(admin, pkey, akey, planner.id, analyst.id)


@pytest.fixture
def app(data_root: Path, tmp_path: Path) -> Flask:
    return create_app({"DPFLOWS_DATA_DIR": str(data_root), "DPFLOWS_LEDGER_URL": f"sqlite:///{tmp_path}/ledger.db",
                       "TESTING": True})


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def keys(app: Flask) -> Keys:
    return seed_clients(app.extensions["dpflows"].service)


FLOWS: dict[str, Any] = {"dataset": "small", "zoning": "sectors", "start": "2024-03-04", "end": "2024-03-11",
                         "epsilon": 0.25, "case_ref": "case-0001"}  # case_ref: required of analysts, audited
