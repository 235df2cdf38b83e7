"""The ledger benchmark still runs: a fraction of a second per phase, against the test server."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.postgres

BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_ledger.py"


def test_bench_ledger_smoke(postgres_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    spec = importlib.util.spec_from_file_location("bench_ledger", BENCHMARK)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    assert module.main(["--seconds", "0.2", "--threads", "2", "--windows", "2", "--pg-url", postgres_url]) == 0
    out = capsys.readouterr().out
    for backend in ("sqlite", "postgres"):
        for mode in ("uncontended", "contended"):
            assert f"{backend:<10} {mode:<12}" in out
    assert "postgres / sqlite (contended) =" in out
