"""Prefetch that is malformed, or of another resource type than its key asks for.

Malformed structure (what the service walks to build the record) is the client's error: 400 with
an OperationOutcome whose `expression` names the element, as for `draftOrders`. A well-formed
value of the wrong type is not evidence of anything: it counts as not delivered, so it is fetched
again when the call names a FHIR server, and otherwise reported with the `data-incomplete` card,
never read as "nothing recorded".
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from conftest import ClientFactory
from support.fault_server import FaultServer, Json, outcome
from support.logs import log_extra
from support.patients import TWO_LOSSES_ESHRE, Scenario, topics, workup_request

WORKUP = "/cds-services/rpl-workup"
INCOMPLETE = "data-incomplete"


def two_losses() -> Scenario:
    return Scenario("two losses").female().miscarriage("2024-01-10").miscarriage("2024-06-02")


def with_prefetch(key: str, value: Any) -> dict[str, Any]:
    body = workup_request(two_losses())
    body["prefetch"][key] = value
    return body


def bundle(*entries: Any) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "searchset", "entry": list(entries)}


MALFORMED: dict[str, tuple[str, Any, str]] = {
    # case: (key, value, the expression the answer must name)
    "entry-not-an-array": (
        "conditions",
        {"resourceType": "Bundle", "entry": 5},
        "prefetch.conditions.entry",
    ),
    "entry-resource-a-string": (
        "conditions",
        bundle({"resource": "Condition/1"}),
        "prefetch.conditions.entry[0].resource",
    ),
    "entry-not-an-object": ("observations", bundle(7), "prefetch.observations.entry[0]"),
    "entry-resource-without-type": (
        "conditions",
        bundle({"resource": {"resourceType": "Condition"}}, {"resource": {"id": "x"}}),
        "prefetch.conditions.entry[1].resource",
    ),
    "entry-search-not-an-object": (
        "conditions",
        bundle({"resource": {"resourceType": "Condition"}, "search": "match"}),
        "prefetch.conditions.entry[0].search",
    ),
    "outcome-issue-a-number": (
        "conditions",
        {"resourceType": "OperationOutcome", "issue": 3},
        "prefetch.conditions.issue",
    ),
    "outcome-entry-issue-a-string": (
        "procedures",
        bundle({"resource": {"resourceType": "OperationOutcome", "issue": "failed"}}),
        "prefetch.procedures.entry[0].resource.issue",
    ),
    "value-without-type": ("patient", {"id": "p1", "gender": "female"}, "prefetch.patient"),
    "type-not-a-string": ("patient", {"resourceType": 5}, "prefetch.patient"),
    "type-empty": ("conditions", {"resourceType": ""}, "prefetch.conditions"),
    "unknown-key-malformed-too": (
        "extra",
        {"resourceType": "Bundle", "entry": {}},
        "prefetch.extra.entry",
    ),
}


@pytest.mark.parametrize("case", list(MALFORMED), ids=list(MALFORMED))
async def test_malformed_prefetch_is_a_400_naming_the_element(
    case: str, client: httpx.AsyncClient
) -> None:
    key, value, expression = MALFORMED[case]
    response = await client.post(WORKUP, json=with_prefetch(key, value))
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["resourceType"] == "OperationOutcome"
    expressions = [e for issue in body["issue"] for e in issue.get("expression", [])]
    assert expressions == [expression]


async def test_many_malformed_entries_give_a_bounded_answer(client: httpx.AsyncClient) -> None:
    value = bundle(*[{"resource": i} for i in range(5000)])
    response = await client.post(WORKUP, json=with_prefetch("conditions", value))
    assert response.status_code == 400
    assert 1 < len(response.json()["issue"]) <= 21  # the summary and at most 20 problems


async def test_a_nested_bundle_is_not_walked(client: httpx.AsyncClient) -> None:
    """The record is built from a Bundle's entries; a Bundle inside one is not read, so its
    contents cannot make the call fail (nor recurse without bound)."""
    nested: dict[str, Any] = {"resourceType": "Bundle", "entry": 5}
    for _ in range(300):
        nested = {"resourceType": "Bundle", "entry": [{"resource": nested}]}
    response = await client.post(
        WORKUP, json=with_prefetch("reports", bundle({"resource": nested}))
    )
    assert response.status_code == 200, response.text


# Well-formed, wrong type. --------------------------------------------------------------------

OBSERVATION = {"resourceType": "Observation", "id": "o1", "status": "final"}
WRONG_TYPES: dict[str, tuple[str, Any, str, str]] = {
    # case: (key, value, the type the key asks for, the type received)
    "patient-an-observation": ("patient", OBSERVATION, "Patient", "Observation"),
    "conditions-a-patient": (
        "conditions",
        {"resourceType": "Patient", "id": "p1"},
        "Condition",
        "Patient",
    ),
    "conditions-a-bundle-of-observations": (
        "conditions",
        bundle({"resource": OBSERVATION}),
        "Condition",
        "Observation",
    ),
}


@pytest.fixture(autouse=True)
def warnings_logged(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO)
    return caplog


def wrong_type_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [
        {name: log_extra(r, name) for name in ("key", "expected", "received")}
        for r in caplog.records
        if r.name == "rpl_cds.prefetch"
    ]


@pytest.mark.parametrize("case", list(WRONG_TYPES), ids=list(WRONG_TYPES))
async def test_a_value_of_the_wrong_type_is_missing_data_not_no_data(
    case: str, client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    key, value, expected, received = WRONG_TYPES[case]
    response = await client.post(WORKUP, json=with_prefetch(key, value))
    assert response.status_code == 200, response.text
    assert INCOMPLETE in topics(response.json())
    assert wrong_type_lines(caplog) == [{"key": key, "expected": expected, "received": [received]}]


async def test_included_resources_and_outcomes_beside_the_matches_are_accepted(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    scenario = two_losses()
    conditions = scenario.searchset(scenario.conditions)
    conditions["entry"].append(
        {"resource": {"resourceType": "Patient", "id": "p"}, "search": {"mode": "include"}}
    )
    conditions["entry"].append({"resource": outcome("partial results", "informational")})
    body = workup_request(scenario)
    body["prefetch"]["conditions"] = conditions
    response = await client.post(WORKUP, json=body)
    assert topics(response.json()) == TWO_LOSSES_ESHRE
    assert wrong_type_lines(caplog) == []


async def test_a_read_delivered_as_a_bundle_of_its_type_is_accepted(
    client: httpx.AsyncClient,
) -> None:
    scenario = two_losses()
    body = workup_request(scenario)
    body["prefetch"]["patient"] = scenario.searchset([scenario.patient()])
    response = await client.post(WORKUP, json=body)
    assert topics(response.json()) == TWO_LOSSES_ESHRE


@pytest.fixture
def fhir() -> Iterator[FaultServer]:
    with FaultServer() as server:
        yield server


async def test_a_wrong_type_is_fetched_again_from_the_fhir_server(
    make_client: ClientFactory, fhir: FaultServer
) -> None:
    scenario = two_losses()
    fhir.route("Patient/", Json(scenario.patient()))
    body = workup_request(scenario, fhirServer=fhir.base_url)
    body["prefetch"]["patient"] = {"resourceType": "Observation", "id": "o1", "status": "final"}
    async with make_client(fhir_allow_http=True) as client:
        response = await client.post(WORKUP, json=body)
    assert topics(response.json()) == TWO_LOSSES_ESHRE
    assert [r.path for r in fhir.requests] == [f"/fhir/Patient/{scenario.patient_id}"]


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param(lambda s: {"resourceType": "Observation", "id": "o"}, id="another-resource"),
        pytest.param(
            lambda s: bundle({"resource": {"resourceType": "Observation", "id": "o"}}),
            id="a-bundle-of-another-type",
        ),
    ],
)
async def test_a_server_answering_another_type_gives_missing_data(
    answer: Any, make_client: ClientFactory, fhir: FaultServer
) -> None:
    scenario = two_losses()
    fhir.route("Condition?", Json(answer(scenario)))
    body = workup_request(scenario, fhirServer=fhir.base_url)
    del body["prefetch"]["conditions"]
    async with make_client(fhir_allow_http=True) as client:
        response = await client.post(WORKUP, json=body)
    assert response.status_code == 200
    assert topics(response.json()) == {INCOMPLETE}
    assert len(fhir.requests) == 1
