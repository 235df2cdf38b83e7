"""The differencing-attack benchmark at CI size: the threshold API falls, dpflows holds its bound.

Loads `benchmarks/attack_differencing.py` and runs it small (1,500 persons, 20 targets, 3 noise
draws per target and world: 120 balanced trials per ε). The threshold part is deterministic
for a seed; the dpflows part draws OpenDP noise, so its check is statistical: the measured
success may exceed the DP bound by at most 5 binomial standard errors of a rate near 50% (a
false failure needs a 5-sd excursion, probability < 3e-7 per figure, 4 figures).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from dpflows.budget import Epsilon

pytestmark = pytest.mark.slow

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "attack_differencing.py"


def _load_benchmark():
    spec = importlib.util.spec_from_file_location("attack_differencing", BENCHMARK)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def test_threshold_api_falls_and_dpflows_stays_within_its_bound() -> None:
    bench = _load_benchmark()
    report = bench.run(persons=1500, n_targets=20, repeats=3,
                       epsilons=[Epsilon.parse("0.5"), Epsilon.parse("1")], seed=20240304)
    assert report.threshold_success == 1.0, "the differencing attack must break the groups-of-50 API"
    for row in report.rows:
        assert row.trials == 120
        assert row.best_worst_case <= row.bound  # exact, no sampling
        assert row.best_these <= row.best_worst_case
        slack = 2.5 * row.half_width  # 5 standard errors
        assert row.difference_cv <= row.bound + slack, row
        assert row.strongest_cv <= row.bound + slack, row
