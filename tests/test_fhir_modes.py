"""The three ways an EHR delivers data give the same cards, against a real FHIR server
(sekmet-fhir on loopback): full prefetch, partial prefetch plus fhirServer, and no prefetch plus
fhirServer. The synthetic scenarios are loaded with `rpl-cds load-scenarios`, as an integration
engineer would."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import date
from typing import Any

import httpx
import pytest
from support.fhir_server import FhirServer, sekmet_server
from support.patients import topics

from service.fhir.templates import render
from service.settings import data_root
from service.synthetic import ScenarioSpec, load_scenarios

SCENARIOS = load_scenarios(data_root() / "scenarios")
WORKUP = "/cds-services/rpl-workup"
PROFILES = ["eshre", "rcog"]


@pytest.fixture(scope="module")
def fhir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FhirServer]:
    with sekmet_server(tmp_path_factory.mktemp("fhir")) as server:
        loaded = subprocess.run(
            [
                sys.executable,
                "-m",
                "service.cli",
                "load-scenarios",
                "--fhir-server",
                server.base_url,
                "--token",
                server.token,
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert loaded.returncode == 0, loaded.stderr
        assert f"{len(SCENARIOS)} scenario patients loaded" in loaded.stdout
        yield server


@pytest.fixture(params=PROFILES)
async def service(
    request: pytest.FixtureRequest, make_client: Any
) -> AsyncIterator[tuple[str, httpx.AsyncClient]]:
    async with make_client(guideline=request.param, fhir_allow_http=True) as client:
        yield request.param, client


def call(
    spec: ScenarioSpec, fhir: FhirServer, prefetch: dict[str, Any] | None, token: str | None = None
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "hook": "patient-view",
        "hookInstance": str(uuid.uuid4()),
        "fhirServer": fhir.base_url,
        "fhirAuthorization": {
            "access_token": token or fhir.token,
            "token_type": "Bearer",
            "expires_in": 300,
            "scope": "patient/*.read",
            "subject": "rpl-cds",
        },
        "context": {"userId": "Practitioner/syn-clinician", "patientId": spec.id},
    }
    if prefetch is not None:
        body["prefetch"] = prefetch
    return body


def full_prefetch(
    templates: dict[str, str], spec: ScenarioSpec, fhir: FhirServer
) -> dict[str, Any]:
    """What an EHR that honours every template sends: each query's answer from the server."""
    context = {"patientId": spec.id, "userId": "Practitioner/syn-clinician"}
    return {
        key: fhir.search(render(template, context, date.today()))
        for key, template in templates.items()
    }


@pytest.mark.parametrize("spec", SCENARIOS, ids=[s.id for s in SCENARIOS])
async def test_three_prefetch_modes_agree(
    spec: ScenarioSpec, fhir: FhirServer, service: tuple[str, httpx.AsyncClient]
) -> None:
    profile, client = service
    discovery = (await client.get("/cds-services")).json()["services"]
    templates = next(s["prefetch"] for s in discovery if s["id"] == "rpl-workup")
    full = full_prefetch(templates, spec, fhir)
    partial = {"patient": full["patient"]}

    answers = {}
    for mode, prefetch in (("full", full), ("partial", partial), ("none", None)):
        response = await client.post(WORKUP, json=call(spec, fhir, prefetch))
        assert response.status_code == 200, (mode, response.text)
        answers[mode] = topics(response.json())
    expected = set(spec.expect[profile])
    assert answers == {"full": expected, "partial": expected, "none": expected}


async def test_a_wrong_token_gives_data_incomplete_not_a_crash(
    fhir: FhirServer, make_client: Any
) -> None:
    spec = next(s for s in SCENARIOS if s.id == "rpl-two-losses")
    async with make_client(fhir_allow_http=True) as client:
        response = await client.post(WORKUP, json=call(spec, fhir, None, token="not-the-token"))
    assert response.status_code == 200
    assert topics(response.json()) == {"data-incomplete"}
