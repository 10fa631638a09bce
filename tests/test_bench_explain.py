"""The scripts that explain the load benchmark's figures (bench/explain.py, bench/memory.py) run
end to end and report every body, target and stage. Their figures depend on the machine and are
theirs to print, not this test's to judge: this keeps the scripts from rotting unnoticed, and
checks the one thing that does not depend on speed, that the arithmetic of a budget holds."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BODIES = ("pv-30", "pv-200", "pv-1000", "pv-5000", "order-sign-3")
NUMBER = r"(\d+(?:\.\d+)?)"
# Issue 13's throughput targets: service req/s at least this share of the floor's.
RATIO_TARGETS = {"pv-200": 0.50, "pv-30": 0.30, "pv-5000": 1.0, "order-sign-3": 0.30}
STAGES = (
    "Python started",
    "the floor app's stack",
    "httpx",
    "SQLAlchemy",
    "PyJWT, cryptography",
    "fhirpathpy",
    "service.app",
    "app built and its lifespan run",
)


def _run(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return done.stdout


def test_explain_reports_every_body_and_target() -> None:
    out = _run("bench.explain", "--seconds", "0.1")
    for body in BODIES:
        assert re.search(rf"^\| {body} \|( {NUMBER} \|){{6}} {NUMBER} \|", out, re.M), body
        assert f"**{body}**: all expressions" in out
    for body, ratio in RATIO_TARGETS.items():
        row = re.search(
            rf"^\| {body} >= {ratio:.2f} \| {NUMBER} \| {NUMBER} \| {NUMBER} \| (-?[\d.]+) \| "
            rf"{NUMBER} \| ([\d.]+x|infx) \|$",
            out,
            re.M,
        )
        assert row is not None, f"{body}\n{out}"
        per_request, http, budget = (float(row.group(i)) for i in (2, 3, 4))
        # The budget is what the target's CPU per request leaves after the HTTP stack.
        assert abs(budget - (per_request / ratio - http)) < 0.02, row.group(0)


def test_memory_reports_every_stage() -> None:
    out = _run("bench.memory")
    for label in (*STAGES, *(f"calls of {body}" for body in BODIES)):
        row = re.search(
            rf"^\| [^|]*{re.escape(label)}[^|]* \| {NUMBER} \| [+-]{NUMBER} \|$", out, re.M
        )
        assert row is not None, f"{label}\n{out}"
        assert 10 < float(row.group(1)) < 2000
