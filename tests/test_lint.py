"""The project's own static checks run with the tests, so main stays clean: ruff (style and
security rules configured in pyproject.toml) on everything, mypy on the library."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, check=False)


def test_ruff_is_clean() -> None:
    out = run("ruff", "check", ".")
    assert out.returncode == 0, out.stdout + out.stderr


def test_mypy_is_clean_on_the_library() -> None:
    out = run("mypy", "dpflows")
    assert out.returncode == 0, out.stdout + out.stderr
