"""One settings table: defaults, environment, overrides, validation at start, ρ caps following ε."""

from __future__ import annotations

from pathlib import Path

import pytest

from dpflows.budget import Epsilon, Rho
from dpflows.errors import InvalidInput
from dpflows.settings import SETTINGS, describe, load_settings


def test_defaults_and_the_rho_caps_follow_the_epsilon_caps() -> None:
    settings = load_settings(environ={})
    assert settings.data_dir == "./var/data" and settings.ledger_url == "sqlite:///./var/ledger.db"
    assert settings.planner_max_epsilon == Epsilon.parse("1") and settings.analyst_max_epsilon == Epsilon.parse("0.25")
    # an ε-DP release is (ε²/2)-zCDP: the default ρ caps allow as much per query
    assert settings.planner_max_rho == Rho.parse("0.5") and settings.analyst_max_rho == Rho.parse("0.03125")
    lowered = load_settings(environ={"DPFLOWS_ANALYST_MAX_EPSILON": "0.1"})
    assert lowered.analyst_max_rho == Rho.parse("0.005")
    explicit = load_settings(environ={"DPFLOWS_ANALYST_MAX_EPSILON": "0.1", "DPFLOWS_ANALYST_MAX_RHO": "0.02"})
    assert explicit.analyst_max_rho == Rho.parse("0.02")


def test_overrides_win_over_the_environment() -> None:
    settings = load_settings({"DPFLOWS_RATE_LIMIT": "2"}, environ={"DPFLOWS_RATE_LIMIT": "9", "DPFLOWS_BIND": "x:1"})
    assert settings.rate_limit == 2.0 and settings.bind == "x:1"


@pytest.mark.parametrize(("name", "value"), [("DPFLOWS_WORKERS", "0"), ("DPFLOWS_RATE_LIMIT", "nan"),
                                             ("DPFLOWS_PLANNER_MAX_EPSILON", "-1"), ("DPFLOWS_ANALYST_MAX_RHO", "x"),
                                             ("DPFLOWS_MAX_REQUESTS", "-3")])
def test_a_bad_value_fails_at_start_naming_the_variable(name: str, value: str) -> None:
    with pytest.raises(InvalidInput) as info:
        load_settings(environ={name: value})
    assert info.value.field == name and name in info.value.message


def test_unknown_setting_names_are_refused() -> None:
    with pytest.raises(InvalidInput, match="DPFLOWS_LEDGER_ULR"):
        load_settings({"DPFLOWS_LEDGER_ULR": "sqlite:///x"}, environ={})


def test_the_app_factory_reads_the_table(data_root: Path, tmp_path: Path) -> None:
    from api import create_app

    app = create_app({"DPFLOWS_DATA_DIR": str(data_root), "DPFLOWS_LEDGER_URL": f"sqlite:///{tmp_path}/l.db",
                      "DPFLOWS_ANALYST_MAX_EPSILON": "0.1"})
    policy = app.extensions["dpflows"].service.policy
    assert policy.analyst_max_epsilon == Epsilon.parse("0.1") and policy.analyst_max_rho == Rho.parse("0.005")
    with pytest.raises(InvalidInput, match="DPFLOWS_WORKERS"):
        create_app({"DPFLOWS_DATA_DIR": str(data_root), "DPFLOWS_WORKERS": "none"})


def test_the_settings_command_lists_every_setting_and_masks_a_password(capsys: pytest.CaptureFixture[str],
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from dpflows.cli import main

    monkeypatch.setenv("DPFLOWS_LEDGER_URL", "postgresql://u:secret@db/x")
    assert main(["settings"]) == 0
    out = capsys.readouterr().out
    assert all(s.name in out for s in SETTINGS) and "secret" not in out
    assert [r["name"] for r in describe(load_settings())] == [s.name for s in SETTINGS]
