"""The test FHIR server (sekmet-fhir) and the scenario loader, against each other for real.

One server for the whole module; each test that writes uses its own synthetic patient.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from support.fhir_server import FhirServer, FhirServerError, sekmet_server
from support.patients import MISCARRIAGE, SNOMED, Scenario

from service.fhir.load import FhirLoadError, load_bundle, to_transaction

MISCARRIAGE_CODE = f"{SNOMED}|{MISCARRIAGE}"


@pytest.fixture(scope="module")
def fhir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FhirServer]:
    with sekmet_server(tmp_path_factory.mktemp("sekmet")) as server:
        yield server


@pytest.fixture(scope="module")
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=30) as client:
        yield client


def synthetic_patient() -> tuple[Scenario, list[dict[str, Any]]]:
    """A female synthetic patient with two dated miscarriages and a TSH result."""
    scenario = Scenario("two losses").female().miscarriage("2024-01-10").miscarriage("2024-06-02")
    observation = {
        "resourceType": "Observation",
        "id": f"{scenario.patient_id}-o1",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "3016-3", "display": "TSH"}]},
        "subject": {"reference": f"Patient/{scenario.patient_id}"},
        "effectiveDateTime": "2024-07-01",
        "valueQuantity": {"value": 2.1, "unit": "mIU/L"},
    }
    return scenario, [scenario.patient(), *scenario.conditions, observation]


@pytest.fixture(scope="module")
async def loaded(fhir: FhirServer, http: httpx.AsyncClient) -> tuple[Scenario, dict[str, Any]]:
    scenario, resources = synthetic_patient()
    response = await load_bundle(fhir.base_url, to_transaction(resources), fhir.token, http)
    return scenario, response


def ids(bundle: dict[str, Any]) -> list[str]:
    # Only matches: sekmet adds an OperationOutcome entry (search.mode "outcome") for warnings.
    return [e["resource"]["id"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match"]


def link(bundle: dict[str, Any], relation: str) -> str | None:
    return next((x["url"] for x in bundle.get("link", []) if x["relation"] == relation), None)


# -- to_transaction, no server needed


def test_to_transaction_puts_each_resource_at_its_id() -> None:
    patient = {"resourceType": "Patient", "id": "syn-a"}
    bundle = to_transaction([patient, {"resourceType": "Condition", "id": "syn-a-c1"}])
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "transaction"
    assert [e["request"] for e in bundle["entry"]] == [
        {"method": "PUT", "url": "Patient/syn-a"},
        {"method": "PUT", "url": "Condition/syn-a-c1"},
    ]
    bundle["entry"][0]["resource"]["gender"] = "female"
    assert "gender" not in patient  # a copy, not the caller's dict


@pytest.mark.parametrize(
    "resources",
    [
        [{"resourceType": "Patient"}],
        [{"id": "x"}],
        [{"resourceType": "Patient", "id": "../Observation/x"}],
        [{"resourceType": "Patient", "id": "x"}, {"resourceType": "Patient", "id": "x"}],
    ],
)
def test_to_transaction_rejects_what_a_server_would(resources: list[dict[str, Any]]) -> None:
    with pytest.raises(ValueError, match="resource"):
        to_transaction(resources)


# -- the loader and the server


def test_load_bundle_creates_every_resource(loaded: tuple[Scenario, dict[str, Any]]) -> None:
    _, response = loaded
    assert response["type"] == "transaction-response"
    assert [e["response"]["status"] for e in response["entry"]] == ["201 Created"] * 4


def test_patient_reads_back(fhir: FhirServer, loaded: tuple[Scenario, dict[str, Any]]) -> None:
    scenario, _ = loaded
    patient = fhir.search(f"Patient/{scenario.patient_id}")
    assert patient["resourceType"] == "Patient" and patient["gender"] == "female"


def test_search_conditions_by_patient_and_code(
    fhir: FhirServer, loaded: tuple[Scenario, dict[str, Any]]
) -> None:
    scenario, _ = loaded
    pid = scenario.patient_id
    found = fhir.search(f"Condition?patient={pid}&code={MISCARRIAGE_CODE}")
    assert found["type"] == "searchset" and found["total"] == 2
    assert sorted(ids(found)) == sorted(c["id"] for c in scenario.conditions)
    # A code list (OR) and a date prefix, as prefetch templates use them.
    recent = fhir.search(
        f"Condition?patient=Patient/{pid}&code={SNOMED}|0000,{MISCARRIAGE_CODE}"
        "&onset-date=ge2024-03-01"
    )
    assert ids(recent) == [f"{pid}-c2"]
    observations = fhir.search(f"Observation?subject=Patient/{pid}&code=http://loinc.org|3016-3")
    assert ids(observations) == [f"{pid}-o1"]


def test_search_pages_with_next_links(
    fhir: FhirServer, loaded: tuple[Scenario, dict[str, Any]]
) -> None:
    scenario, _ = loaded
    first = fhir.search(f"Condition?patient={scenario.patient_id}&_count=1")
    assert first["total"] == 2 and len(ids(first)) == 1
    next_url = link(first, "next")
    assert next_url is not None and next_url.startswith(f"{fhir.base_url}/Condition?")
    second = fhir.search(next_url)
    assert len(ids(second)) == 1 and ids(second) != ids(first)
    assert link(second, "next") is None


async def test_reload_updates_instead_of_duplicating(
    fhir: FhirServer, http: httpx.AsyncClient
) -> None:
    scenario, resources = synthetic_patient()
    bundle = to_transaction(resources)
    await load_bundle(fhir.base_url, bundle, fhir.token, http)
    again = await load_bundle(f"{fhir.base_url}/", bundle, fhir.token, http)
    assert [e["response"]["status"] for e in again["entry"]] == ["200 OK"] * 4
    found = fhir.search(f"Condition?patient={scenario.patient_id}")
    assert found["total"] == 2
    assert fhir.search(f"Patient/{scenario.patient_id}")["meta"]["versionId"] == "2"


async def test_a_refused_transaction_says_why_and_stores_nothing(
    fhir: FhirServer, http: httpx.AsyncClient
) -> None:
    scenario, resources = synthetic_patient()
    scenario.conditions[0]["onsetDateTime"] = "the tenth of January"
    with pytest.raises(FhirLoadError, match=r"HTTP 400: .*onsetDateTime") as caught:
        await load_bundle(fhir.base_url, to_transaction(resources), fhir.token, http)
    assert caught.value.status == 400
    assert fhir.token not in str(caught.value)
    # A transaction is all or nothing: the valid Patient before it was rolled back.
    assert fhir.get(f"Patient/{scenario.patient_id}").status_code == 404


async def test_a_wrong_token_is_a_clear_401_without_the_token(
    fhir: FhirServer, http: httpx.AsyncClient
) -> None:
    _, resources = synthetic_patient()
    wrong = "not-the-token-" + fhir.token[:4]
    with pytest.raises(FhirLoadError, match="HTTP 401") as caught:
        await load_bundle(fhir.base_url, to_transaction(resources), wrong, http)
    assert caught.value.status == 401 and wrong not in str(caught.value)


async def test_an_unreachable_server_is_a_load_error(http: httpx.AsyncClient) -> None:
    with pytest.raises(FhirLoadError, match="failed") as caught:
        # Port 9 (discard) on loopback: nothing listens there in a test environment.
        await load_bundle("http://127.0.0.1:9/fhir", to_transaction([]), "t0ken-x", http)
    assert caught.value.status is None and "t0ken-x" not in str(caught.value)


@pytest.mark.parametrize(
    ("headers", "why"),
    [({"Authorization": "Bearer wrong"}, "invalid"), ({}, "required")],
)
def test_the_server_answers_401_without_a_valid_token(
    fhir: FhirServer, headers: dict[str, str], why: str
) -> None:
    response = fhir.get("Patient?_count=1", headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert why in outcome["issue"][0]["diagnostics"].lower()


def test_the_helper_refuses_to_send_its_token_elsewhere(fhir: FhirServer) -> None:
    with pytest.raises(ValueError, match="not on this FHIR server"):
        fhir.search("http://example.org/fhir/Patient")


def test_the_server_stops_when_the_block_fails(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="boom"), sekmet_server(tmp_path) as server:
        raise RuntimeError("boom")
    assert server.process.poll() is not None
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{server.base_url}/metadata", timeout=2)


def test_a_server_that_is_not_ready_in_time_fails_loudly(tmp_path: Path) -> None:
    with (
        pytest.raises(FhirServerError, match="not ready within"),
        sekmet_server(tmp_path, startup_timeout=0),
    ):
        pass
