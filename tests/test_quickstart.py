"""The demo the README's first command prepares: two datasets, three clients, caps, keys written once
to a private file (never printed)."""

from __future__ import annotations

import re
import stat
from pathlib import Path

import pytest

from dpflows.aggregates import load_dataset
from dpflows.budget import Epsilon, Rho
from dpflows.queries import make_spec
from dpflows.quickstart import DATASET, DATASET_ZCDP, KEYS_FILE, START, prepare_demo
from dpflows.service import QueryRequest

pytestmark = pytest.mark.slow  # generates and ingests a small city twice: a few seconds


def test_prepare_demo_is_ready_to_query_and_idempotent(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    service = prepare_demo(tmp_path, persons=300)
    printed = capsys.readouterr().out
    keys_file = tmp_path / KEYS_FILE
    assert "dpf_" not in printed and str(keys_file) in printed
    assert stat.S_IMODE(keys_file.stat().st_mode) == 0o600
    keys = dict(re.findall(r"^(ADMIN|PLANNER|ANALYST)_KEY=(dpf_\S+)$", keys_file.read_text(), re.M))
    keys = {"admin": keys["ADMIN"], "city-planner": keys["PLANNER"], "police-analyst": keys["ANALYST"]}
    assert load_dataset(tmp_path / "data" / "datasets" / DATASET).metadata.accounting == "pure_dp"
    assert load_dataset(tmp_path / "data" / "datasets" / DATASET_ZCDP).metadata.accounting == "zcdp"
    planner = service.authenticate(keys["city-planner"])
    end = START.replace(day=START.day + 5)
    pure = service.answer(QueryRequest(make_spec("flows", dataset=DATASET, zoning="districts", start=START, end=end),
                                       epsilon=Epsilon.parse("0.5")), planner)
    assert pure.charged == Epsilon.parse("0.5") and pure.budget_remaining == Epsilon.parse("1.5")
    zcdp = service.answer(QueryRequest(make_spec("flows", dataset=DATASET_ZCDP, zoning="districts", start=START,
                                                 end=end), rho=Rho.parse("0.002")), planner)
    assert zcdp.charged == Rho.parse("0.002") and zcdp.budget_remaining == Rho.parse("0.018")
    service.ledger.close()
    again = prepare_demo(tmp_path, persons=300)  # nothing regenerated, no new keys printed
    assert "dpf_" not in capsys.readouterr().out
    assert [c.name for c in again.ledger.list_clients()][:3] == ["admin", "city-planner", "police-analyst"]
    again.ledger.close()
