"""`rpl-cds serve` as an admin starts it: a real uvicorn process on loopback."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from support.live_service import live_service
from support.patients import TWO_LOSSES_ESHRE, Scenario, topics, workup_request

from service.feedback.migrate import head_revision


@pytest.mark.parametrize("workers", ["1", "2"])
def test_serve_on_embedded_defaults(tmp_path: Path, workers: str) -> None:
    with live_service(tmp_path / "data", "--workers", workers) as service:
        discovery = httpx.get(f"{service.url}/cds-services", timeout=5)
        scenario = Scenario("two").female().miscarriage("2023-02-01").miscarriage("2023-09-01")
        calls = [
            httpx.post(
                f"{service.url}/cds-services/rpl-workup", json=workup_request(scenario), timeout=5
            )
            for _ in range(6)  # several calls, so that with 2 workers both are likely used
        ]
        metrics = httpx.get(f"{service.url}/metrics", timeout=5).text
        output = service.output()
    assert discovery.status_code == 200
    # Whichever worker answers the scrape, it counts every worker's calls.
    served = 'rpl_cds_requests_total{endpoint="/cds-services/{service_id}",service="rpl-workup",status="200"} 6.0'
    assert served in metrics
    assert all(
        call.status_code == 200 and topics(call.json()) == TWO_LOSSES_ESHRE for call in calls
    )
    assert (tmp_path / "data" / "rpl-cds.db").is_file()
    lines = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    assert any("authentication is OFF" in line["message"] for line in lines)
    call_lines = [line for line in lines if line.get("logger") == "rpl_cds.calls"]
    assert any(
        line.get("service") == "rpl-workup" and line.get("status") == 200 for line in call_lines
    )


def test_serve_refuses_to_start_on_broken_knowledge(tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "bad.json").write_text("{")
    result = subprocess.run(
        [sys.executable, "-m", "service.cli", "serve", "--port", "1"],
        capture_output=True,
        text=True,
        timeout=60,
        env={
            "RPL_CDS_EXTRA_KNOWLEDGE_DIRS": str(broken),
            "RPL_CDS_DATA_DIR": str(tmp_path),
            "PATH": "",
        },
    )
    assert result.returncode == 1
    assert "bad.json: -: not readable JSON" in result.stderr


def test_serve_refuses_invalid_settings(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "service.cli", "serve"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"RPL_CDS_GUIDELINE": "nice", "RPL_CDS_DATA_DIR": str(tmp_path), "PATH": ""},
    )
    assert result.returncode == 2
    assert "RPL_CDS_GUIDELINE: " in result.stderr  # the variable to fix, by name


def test_serve_refuses_authentication_without_a_public_base_url(tmp_path: Path) -> None:
    """The JWT audience must be this service's own URL, not whatever Host the caller sent; the
    message names the missing setting and repeats no value (settings hold passwords)."""
    secret = "pw-" + "x" * 12
    result = subprocess.run(
        [sys.executable, "-m", "service.cli", "serve"],
        capture_output=True,
        text=True,
        timeout=60,
        env={
            "RPL_CDS_AUTH_ISSUERS": '{"https://ehr.example": {"jwks_file": "/dev/null"}}',
            "RPL_CDS_DATABASE_URL": f"postgresql+asyncpg://cds:{secret}@127.0.0.1/cds",
            "RPL_CDS_DATA_DIR": str(tmp_path),
            "PATH": "",
        },
    )
    assert result.returncode == 2
    assert "RPL_CDS_PUBLIC_BASE_URL is required" in result.stderr
    assert secret not in result.stderr + result.stdout


def test_migrate_command_brings_a_new_database_to_the_newest_revision(tmp_path: Path) -> None:
    # What a Kubernetes Job runs once per release, before replicas start without migrating.
    data = tmp_path / "data"
    env = {**os.environ, "RPL_CDS_DATA_DIR": str(data)}
    result = subprocess.run(
        [sys.executable, "-m", "service.cli", "migrate"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    with sqlite3.connect(data / "rpl-cds.db") as database:
        (revision,) = database.execute("SELECT version_num FROM alembic_version").fetchone()
    assert revision == head_revision()
