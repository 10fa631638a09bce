"""The code is typed and lint-clean: mypy --strict on service/, tests/ and bench/, ruff on
everything."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# What pyproject.toml's [tool.mypy] `files` names: the service, its tests and its benchmarks.
TYPED = ("service", "tests", "bench")


def run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *command], cwd=ROOT, capture_output=True, text=True, timeout=600
    )


def test_mypy_strict() -> None:
    result = run("mypy")
    assert result.returncode == 0, result.stdout + result.stderr
    # Every module was checked: a directory dropped from the configuration, or a file mypy
    # skips, would otherwise pass unseen.
    checked = re.search(r"in (\d+) source files", result.stdout)
    modules = sum(1 for directory in TYPED for _ in (ROOT / directory).rglob("*.py"))
    assert checked is not None, result.stdout
    assert int(checked.group(1)) == modules, result.stdout


def test_ruff() -> None:
    result = run("ruff", "check", ".")
    assert result.returncode == 0, result.stdout + result.stderr
