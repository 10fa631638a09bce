"""Overload: a worker at RPL_CDS_MAX_CONCURRENT_CALLS refuses further calls at once with 503,
Retry-After and an OperationOutcome, counts them, keeps answering health checks and scrapes, and
takes calls again as soon as one in progress ends.

The calls in progress are held deterministically: they fetch their data from a FHIR server that
answers only when the test releases it.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from support.fault_server import FaultServer, Json, Wait, searchset
from support.live_server import live_server
from support.patients import Scenario, workup_request

from service.settings import Settings

LIMIT = 2
WORKUP = "/cds-services/rpl-workup"
REJECTED = "rpl_cds_requests_rejected_total"


@pytest.fixture
def release() -> threading.Event:
    return threading.Event()


@pytest.fixture
def fhir(release: threading.Event) -> Iterator[FaultServer]:
    """Answers every query with an empty searchset, once the test sets `release`."""
    with FaultServer() as server:
        server.route("", Wait(release, Json(searchset([]))))
        yield server


def _held_call(fhir: FaultServer, patient: Scenario) -> dict[str, Any]:
    body = workup_request(patient, fhirServer=fhir.base_url)
    del body["prefetch"]  # everything is fetched, so the call waits for the FHIR server
    return body


def _feedback() -> dict[str, Any]:
    card = "2b3c9a43-7d2e-4c52-9e0b-7f0b1f3f1a10"
    now = datetime.now(UTC).isoformat()
    return {"feedback": [{"card": card, "outcome": "overridden", "outcomeTimestamp": now}]}


def _apply() -> dict[str, Any]:
    return {
        "resourceType": "Parameters",
        "parameter": [{"name": "subject", "valueString": "Patient/p1"}],
    }


def _rejected(metrics: str) -> float:
    match = re.search(rf"^{REJECTED} (\S+)$", metrics, re.MULTILINE)
    assert match, f"{REJECTED} is not exported"
    return float(match.group(1))


async def _wait_until_fetching(fhir: FaultServer, patients: list[Scenario]) -> None:
    """Until every held call has reached the FHIR server (so it counts against the limit)."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if all(fhir.requests_to(f"Patient/{patient.patient_id}") for patient in patients):
            return
        await asyncio.sleep(0.01)
    pytest.fail(f"the held calls did not reach the FHIR server ({len(fhir.requests)} requests)")


async def test_calls_over_the_limit_get_503_at_once_and_the_limit_frees_up(
    tmp_path: Path, fhir: FaultServer, release: threading.Event
) -> None:
    settings = Settings(
        data_dir=tmp_path,
        max_concurrent_calls=LIMIT,
        fhir_allow_http=True,
        fhir_time_budget_seconds=60,
    )
    scenario = Scenario("two").female().miscarriage("2023-02-01").miscarriage("2023-09-01")
    patients = [Scenario(f"held {index}").female() for index in range(LIMIT)]
    with live_server(settings) as url:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            before = _rejected((await client.get("/metrics")).text)
            held = [
                asyncio.create_task(client.post(WORKUP, json=_held_call(fhir, patient)))
                for patient in patients
            ]
            try:
                await _wait_until_fetching(fhir, patients)
                refused = [
                    await client.post(WORKUP, json=workup_request(scenario)),
                    await client.post(f"{WORKUP}/feedback", json=_feedback()),
                    await client.post("/PlanDefinition/rpl-workup/$apply", json=_apply()),
                    await client.get("/cds-services"),
                ]
                operations = [
                    await client.get("/healthz"),
                    await client.get("/readyz"),
                    await client.get("/metrics"),
                ]
            finally:
                release.set()
            answered = await asyncio.gather(*held)
            after_release = await client.post(WORKUP, json=workup_request(scenario))
            after = _rejected((await client.get("/metrics")).text)

    for response in refused:
        assert response.status_code == 503, (response.request.url, response.text)
        assert int(response.headers["retry-after"]) >= 1
        assert response.headers["content-type"] == "application/json"
        outcome = response.json()
        assert outcome["resourceType"] == "OperationOutcome"
        assert [issue["code"] for issue in outcome["issue"]] == ["transient"]
    assert [r.status_code for r in operations] == [200, 200, 200], "operations must not be limited"
    assert after - before == len(refused)
    # The held calls were not disturbed by the refusals, and their end freed the slots.
    assert [r.status_code for r in answered] == [200] * LIMIT
    assert after_release.status_code == 200
    assert after_release.json()["cards"]
