"""The reliability benchmark (bench/reliability.py) runs end to end in its --quick mode: every
scenario starts the real service, drives it, judges the outcome and is reported, and the figures
that do not depend on the machine's speed hold (nothing acknowledged is lost, no canary reaches a
log). The full run's figures are the benchmark's business, not this test's: this only keeps the
script from rotting unnoticed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = ("fuzz", "soak", "kill_sqlite", "kill_postgres", "sigterm", "cut", "overload", "auth")


def test_quick_reliability_run_reports_every_scenario(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.reliability", "--quick", "--output", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    # 1: it ran and found an expectation not met (reported in the table); anything else crashed.
    assert done.returncode in (0, 1), done.stderr[-4000:]
    results = json.loads((tmp_path / "reliability-quick.json").read_text())
    assert results.get("errors", {}) == {}, results["errors"]
    for scenario in SCENARIOS:
        assert scenario in results, scenario
    for store in ("kill_sqlite", "kill_postgres"):
        if "skipped" not in results[store]:
            assert results[store]["acknowledged"] > 0
            assert results[store]["lost"] == 0
    assert results["secrets"]["log_files"] >= len(SCENARIOS)
    assert results["secrets"]["occurrences"] == 0, results["secrets"]
    table = (tmp_path / "reliability-quick.md").read_text()
    assert table.strip() == done.stdout.strip()
    assert "| 7 secrets |" in table
