"""The three ways an EHR delivers data give the same cards, against a real FHIR server
(sekmet-fhir on loopback): full prefetch, partial prefetch plus fhirServer, and no prefetch plus
fhirServer; and they agree with the prefetch the clinical scenario tests answer from the
descriptions alone. The synthetic scenarios are loaded with `rpl-cds load-scenarios`, as an
integration engineer would, with the same reference date for relative dates as the calls.

Patient-view scenarios only: order hooks carry their drafts in the context, which no server holds;
and scenarios with `prefetchErrors` are left out (the service fetches a failed key again)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from typing import Any

import pytest
from support.fhir_server import FhirServer, sekmet_server
from support.patients import topics
from support.scenario_calls import (
    ProfileApps,
    build_prefetch,
    hook_context,
    scenario_request,
    service_for_hook,
)

from service.settings import data_root
from service.synthetic import ScenarioSpec, load_scenarios

SCENARIOS = load_scenarios(data_root() / "scenarios")
PATIENT_VIEW = [s for s in SCENARIOS if s.hook == "patient-view" and not s.prefetch_errors]
CASES = [
    pytest.param(spec, profile, id=f"{spec.id}[{profile}]")
    for spec in PATIENT_VIEW
    for profile in spec.expect
]
# The service's today (UTC); load-scenarios resolves relative dates against the same date.
TODAY = datetime.now(UTC).date()


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
                "--today",
                TODAY.isoformat(),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert loaded.returncode == 0, loaded.stderr
        assert f"{len(SCENARIOS)} scenario patients loaded" in loaded.stdout
        yield server


@pytest.fixture(scope="module")
async def apps(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ProfileApps]:
    async with AsyncExitStack() as stack:
        yield ProfileApps(stack, tmp_path_factory, fhir_allow_http=True)


def server_fields(fhir: FhirServer, token: str | None = None) -> dict[str, Any]:
    return {
        "fhirServer": fhir.base_url,
        "fhirAuthorization": {
            "access_token": token or fhir.token,
            "token_type": "Bearer",
            "expires_in": 300,
            "scope": "patient/*.read",
            "subject": "rpl-cds",
        },
    }


@pytest.mark.parametrize(("spec", "profile"), CASES)
async def test_three_prefetch_modes_agree(
    spec: ScenarioSpec, profile: str, fhir: FhirServer, apps: ProfileApps
) -> None:
    client, discovery = await apps.get(profile)
    service = service_for_hook(discovery, spec.hook)
    templates = service.get("prefetch", {})
    # What an EHR that honours every template sends: each query's answer from the server.
    full = build_prefetch(templates, hook_context(spec, TODAY), TODAY, fhir.search)
    reads = [key for key, template in templates.items() if template.startswith("Patient/")]
    partial = {key: full[key] for key in reads}

    answers = {}
    for mode, prefetch in (("full", full), ("partial", partial), ("none", None)):
        body = scenario_request(spec, service, TODAY, prefetch=prefetch, **server_fields(fhir))
        response = await client.post(f"/cds-services/{service['id']}", json=body)
        assert response.status_code == 200, (mode, response.text)
        answers[mode] = topics(response.json())
    # As the clinical scenario tests call: prefetch answered from the description, no server.
    response = await client.post(
        f"/cds-services/{service['id']}", json=scenario_request(spec, service, TODAY)
    )
    assert response.status_code == 200, ("record", response.text)
    answers["record"] = topics(response.json())
    expected = set(spec.expect[profile])
    assert answers == dict.fromkeys(answers, expected), (
        f"{spec.id} ({profile}): expected {sorted(expected)}; by mode: "
        + "; ".join(f"{mode} {sorted(found)}" for mode, found in answers.items())
    )


async def test_a_wrong_token_gives_data_incomplete_not_a_crash(
    fhir: FhirServer, apps: ProfileApps
) -> None:
    spec = next(s for s in SCENARIOS if s.id == "rpl-two-losses")
    client, discovery = await apps.get("eshre")
    service = service_for_hook(discovery, spec.hook)
    body = scenario_request(
        spec, service, TODAY, prefetch=None, **server_fields(fhir, token="not-the-token")
    )
    response = await client.post(f"/cds-services/{service['id']}", json=body)
    assert response.status_code == 200
    assert topics(response.json()) == {"data-incomplete"}
