"""POST /cds-services/{id} through real HTTP: the CDS Hooks 2.0 request and response rules."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from support.calls import (
    ORDER_SIGN,
    PEERS,
    WORKUP,
    assert_no_empty_fields,
    assert_outcome,
    two_losses,
)
from support.patients import TWO_LOSSES_ESHRE, Scenario, order_request, topics, workup_request

ORDER_SELECT = "/cds-services/rpl-order-safety-order-select"


async def test_workup_returns_conformant_cards(client: httpx.AsyncClient) -> None:
    response = await client.post(WORKUP, json=workup_request(two_losses()))
    assert response.status_code == 200
    body = response.json()
    assert topics(body) == TWO_LOSSES_ESHRE
    assert_no_empty_fields({k: v for k, v in body.items() if k != "cards"} | {"c": body["cards"]})
    for card in body["cards"]:
        assert len(card["summary"]) < 140
        assert card["indicator"] in {"info", "warning", "critical"}
        assert card["source"]["label"]
        assert card["source"]["topic"]["system"].endswith("/rpl-recommendation")
        assert "**Why:**" in card["detail"] and "**Evidence:**" in card["detail"]
        assert card["links"]
        uuid.UUID(card["uuid"])


async def test_card_uuid_is_stable_for_a_hook_instance(client: httpx.AsyncClient) -> None:
    request = workup_request(two_losses())
    first = (await client.post(WORKUP, json=request)).json()["cards"][0]["uuid"]
    again = (await client.post(WORKUP, json=request)).json()["cards"][0]["uuid"]
    other = workup_request(two_losses(), hookInstance=str(uuid.uuid4()))
    different = (await client.post(WORKUP, json=other)).json()["cards"][0]["uuid"]
    assert first == again
    assert first != different


async def test_no_card_below_the_threshold(client: httpx.AsyncClient) -> None:
    one = Scenario("one loss").female().miscarriage("2024-01-10")
    response = await client.post(WORKUP, json=workup_request(one))
    assert response.json() == {"cards": []}


async def test_losses_on_the_same_date_count_once(client: httpx.AsyncClient) -> None:
    duplicate = Scenario("same episode twice").female()
    duplicate.miscarriage("2024-01-10").miscarriage("2024-01-10T08:00:00Z")
    response = await client.post(WORKUP, json=workup_request(duplicate))
    assert response.json()["cards"] == []


async def test_entered_in_error_losses_do_not_count(client: httpx.AsyncClient) -> None:
    scenario = Scenario("one real, one erroneous").female().miscarriage("2024-01-10")
    scenario.miscarriage("2024-03-01", verification="entered-in-error")
    response = await client.post(WORKUP, json=workup_request(scenario))
    assert response.json()["cards"] == []


async def test_guideline_profile_changes_the_threshold(make_client: Any) -> None:
    async with make_client(guideline="rcog") as rcog:
        two = await rcog.post(WORKUP, json=workup_request(two_losses()))
        three = two_losses().miscarriage("2025-02-01")
        met = await rcog.post(WORKUP, json=workup_request(three))
    assert "lifestyle-support" not in topics(two.json())  # RCOG: 3 losses
    assert "lifestyle-support" in topics(met.json())


async def test_male_patient_gets_no_workup(client: httpx.AsyncClient) -> None:
    scenario = Scenario("male").male().miscarriage("2024-01-10").miscarriage("2024-06-02")
    response = await client.post(WORKUP, json=workup_request(scenario))
    assert response.json()["cards"] == []


async def test_order_sign_warns_with_override_reasons(client: httpx.AsyncClient) -> None:
    scenario = (
        Scenario("LIT order").female().draft_service_request("Paternal lymphocyte immunization")
    )
    response = await client.post(ORDER_SIGN, json=order_request(scenario, "order-sign"))
    body = response.json()
    assert topics(body) == {"warn-lit"}
    card = body["cards"][0]
    assert card["indicator"] == "warning"
    assert card["overrideReasons"] and all(r["display"] for r in card["overrideReasons"])
    assert_no_empty_fields(body["cards"], "cards")


async def test_order_select_needs_selections_from_draft_orders(client: httpx.AsyncClient) -> None:
    scenario = Scenario("LIT").female().draft_service_request("Lymphocyte immunotherapy")
    good = order_request(scenario, "order-select")
    assert topics((await client.post(ORDER_SELECT, json=good)).json()) == {"warn-lit"}
    bad = order_request(scenario, "order-select")
    bad["context"]["selections"] = ["ServiceRequest/not-a-draft"]
    assert_outcome(await client.post(ORDER_SELECT, json=bad), 400, "selections")


async def test_harmless_order_gets_no_card(client: httpx.AsyncClient) -> None:
    scenario = Scenario("TSH").female().draft_service_request("TSH")
    response = await client.post(ORDER_SIGN, json=order_request(scenario, "order-sign"))
    assert response.json() == {"cards": []}


async def test_unknown_service_is_404(client: httpx.AsyncClient) -> None:
    response = await client.post("/cds-services/no-such-service", json=workup_request(two_losses()))
    assert_outcome(response, 404, "no-such-service")


@pytest.mark.parametrize(
    ("mutate", "mentions"),
    [
        (lambda b: b.pop("hookInstance"), "hookInstance"),
        (lambda b: b.update(hookInstance="not-a-uuid"), "hookInstance"),
        (lambda b: b.update(hook="order-sign"), "patient-view"),
        (lambda b: b.pop("context"), "context"),
        (lambda b: b["context"].pop("userId"), "context.userId"),
        (lambda b: b["context"].update(userId="Device/1"), "context.userId"),
        (lambda b: b["context"].pop("patientId"), "context.patientId"),
        (lambda b: b.update(unexpected=1), "unexpected"),
        (lambda b: b.update(prefetch=[]), "prefetch"),
        (
            lambda b: b.update(
                fhirAuthorization={
                    "access_token": "secret-token",
                    "token_type": "Bearer",
                    "expires_in": 300,
                    "scope": "patient/*.read",
                    "subject": "rpl-cds",
                }
            ),
            "fhirServer is required",
        ),
        (lambda b: b.update(fhirServer="not a url"), "fhirServer"),
    ],
)
async def test_invalid_requests_are_400(
    client: httpx.AsyncClient, mutate: Any, mentions: str
) -> None:
    body = workup_request(two_losses())
    mutate(body)
    assert_outcome(await client.post(WORKUP, json=body), 400, mentions)


async def test_order_sign_requires_a_draft_orders_bundle(client: httpx.AsyncClient) -> None:
    body = order_request(Scenario("x").female().draft_service_request("TSH"), "order-sign")
    body["context"]["draftOrders"] = {"resourceType": "Patient"}
    assert_outcome(await client.post(ORDER_SIGN, json=body), 400, "context.draftOrders")


async def test_malformed_json_is_400(client: httpx.AsyncClient) -> None:
    peer = PEERS / "generic-malformed.json.txt"  # a peer service's real malformed request
    malformed = peer.read_bytes() if peer.is_file() else b'{"hook": "patient-view", "context": {'
    response = await client.post(
        WORKUP, content=malformed, headers={"content-type": "application/json"}
    )
    assert_outcome(response, 400, "not valid JSON")


@pytest.mark.parametrize("content_type", ["text/plain", "application/xml", None])
async def test_wrong_content_type_is_415(
    client: httpx.AsyncClient, content_type: str | None
) -> None:
    headers = {"content-type": content_type} if content_type else {}
    body = json.dumps(workup_request(two_losses())).encode()
    response = await client.post(WORKUP, content=body, headers=headers)
    assert_outcome(response, 415, "Content-Type")


async def test_json_with_charset_is_accepted(client: httpx.AsyncClient) -> None:
    body = json.dumps(workup_request(two_losses())).encode()
    headers = {"content-type": "application/json; charset=utf-8"}
    assert (await client.post(WORKUP, content=body, headers=headers)).status_code == 200


async def test_body_over_the_limit_is_413(make_client: Any) -> None:
    async with make_client(max_body_bytes=2000) as small:
        body = workup_request(two_losses())
        body["extension"] = {"padding": "x" * 5000}
        assert_outcome(await small.post(WORKUP, json=body), 413, "limit")

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: streamed and counted
            for _ in range(10):
                yield b" " * 500

        streamed = await small.post(
            WORKUP, content=chunks(), headers={"content-type": "application/json"}
        )
        assert_outcome(streamed, 413, "limit")


async def test_missing_prefetch_without_fhir_server_is_412(client: httpx.AsyncClient) -> None:
    body = workup_request(two_losses())
    del body["prefetch"]["conditions"]
    assert_outcome(await client.post(WORKUP, json=body), 412, "conditions")


async def test_null_prefetch_means_no_data(client: httpx.AsyncClient) -> None:
    body = workup_request(two_losses())
    body["prefetch"]["conditions"] = None
    response = await client.post(WORKUP, json=body)
    assert response.json() == {"cards": []}


async def test_operation_outcome_in_prefetch_says_data_incomplete(
    client: httpx.AsyncClient,
) -> None:
    body = workup_request(two_losses())
    body["prefetch"]["conditions"] = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "timeout"}],
    }
    assert topics((await client.post(WORKUP, json=body)).json()) == {"data-incomplete"}


async def test_the_trace_is_returned_only_when_enabled(
    client: httpx.AsyncClient, make_client: Any
) -> None:
    request = workup_request(two_losses())
    assert "extension" not in (await client.post(WORKUP, json=request)).json()
    async with make_client(return_trace=True) as tracing:
        body = (await tracing.post(WORKUP, json=request)).json()
    trace = body["extension"]["org.rpl-cds.trace"]
    applied = {entry["action"]: entry["applied"] for entry in trace}
    assert applied["PlanDefinition.action[0]"] is False  # data-incomplete
    cards = [
        a for a, on in applied.items() if on and re.fullmatch(r"PlanDefinition\.action\[\d+\]", a)
    ]
    assert len(cards) == len(body["cards"]) == len(TWO_LOSSES_ESHRE)


@pytest.mark.parametrize(
    ("peer_file", "status"),
    [
        ("generic-missing-hookInstance.json", 400),
        ("greeting-wrong-hook-name.json", 400),
        ("greeting-unknown-hook-name.json", 400),
        ("greeting-missing-prefetch.json", 412),
        ("cql-missing-prefetch-no-fhirserver.json", 412),
    ],
)
async def test_peer_bad_requests(client: httpx.AsyncClient, peer_file: str, status: int) -> None:
    if not PEERS.is_dir():
        pytest.skip(f"{PEERS} not present (it sits beside the project in the workspace)")
    body = (PEERS / peer_file).read_bytes()
    response = await client.post(WORKUP, content=body, headers={"content-type": "application/json"})
    assert response.status_code == status, response.text
    assert response.json()["resourceType"] == "OperationOutcome"


async def test_a_search_bundle_with_only_an_error_outcome_is_missing_data(
    client: httpx.AsyncClient,
) -> None:
    body = workup_request(two_losses())
    error = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "exception"}],
    }
    body["prefetch"]["conditions"] = {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [{"resource": error, "search": {"mode": "outcome"}}],
    }
    assert topics((await client.post(WORKUP, json=body)).json()) == {"data-incomplete"}


async def test_warnings_beside_results_are_not_errors(client: httpx.AsyncClient) -> None:
    body = workup_request(two_losses())
    warning = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "warning", "code": "informational"}],
    }
    body["prefetch"]["conditions"]["entry"].append(
        {"resource": warning, "search": {"mode": "outcome"}}
    )
    assert topics((await client.post(WORKUP, json=body)).json()) == TWO_LOSSES_ESHRE
