"""The service against a misbehaving EHR FHIR server (a real HTTP server on loopback, written for
these tests): it answers within the budget plus 250 ms, never with a 5xx, says what was missing
(a `data-incomplete` card, and the key in the call's log line), computes its cards from what did
arrive, and sends the access token nowhere but the named fhirServer and logs it nowhere.

These tests are about data access, not clinical content, so they run a fixed two-key workup
(`tests/knowledge/two-key-workup/`, the first version of the RPL workup) whose prefetch keys are
`patient` (Patient/{id}) and `miscarriages` (Condition?patient={id}&code=...); a fault on one key
leaves the other one's data in use.
"""

from __future__ import annotations

import gc
import logging
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import ClientFactory
from support.fault_server import (
    Behaviour,
    Delay,
    Drop,
    Echo,
    FaultServer,
    Huge,
    Json,
    Raw,
    Recorded,
    Sequence,
    Status,
    Trickle,
    closed_port,
    outcome,
    searchset,
)
from support.patients import Scenario, topics, workup_request

from service.fhir.egress import CheckedBackend, EgressPolicy, checked_transport
from service.fhir.fetch import FhirFetcher
from service.ops.metrics import Metrics
from service.settings import Settings

WORKUP = "/cds-services/rpl-workup"
BUDGET = 1.0
SLACK = 0.25
TOKEN = f"fault-test-token-{secrets.token_hex(16)}"
INCOMPLETE = "data-incomplete"
LIFESTYLE = "lifestyle-support"

# What the workup service fetches, as route prefixes relative to the FHIR base.
PATIENT = "Patient/"
LOSSES = "Condition?"


def two_losses() -> Scenario:
    return Scenario("two losses").female().miscarriage("2024-01-10").miscarriage("2024-06-02")


@pytest.fixture
def fhir() -> Iterator[FaultServer]:
    with FaultServer() as server:
        yield server


@pytest.fixture
def elsewhere() -> Iterator[FaultServer]:
    """A second server, on another port: where a stray next link would point."""
    with FaultServer() as server:
        server.route("", Json(searchset([])))
        server.route("?", Json(searchset([])))
        yield server


Note = Callable[[str, object], None]


@pytest.fixture
def note(request: pytest.FixtureRequest) -> Note:
    """Keep a measurement with the test's report (junit XML properties), as record_property
    does, without its warning under the xunit2 family."""
    return lambda name, value: request.node.user_properties.append((name, value))


@pytest.fixture(autouse=True)
def all_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG)
    return caplog


TWO_KEY_WORKUP = Path(__file__).parent / "knowledge" / "two-key-workup"


def app(make_client: ClientFactory, **settings: Any) -> Any:
    settings.setdefault("knowledge_dirs", [TWO_KEY_WORKUP])
    settings.setdefault("fhir_allow_http", True)
    settings.setdefault("fhir_time_budget_seconds", BUDGET)
    return make_client(**settings)


def authorization(scenario: Scenario, token: str = TOKEN) -> dict[str, Any]:
    return {
        "access_token": token,
        "token_type": "Bearer",
        "expires_in": 300,
        "scope": "patient/Patient.read patient/Condition.read",
        "subject": "rpl-cds",
        "patient": scenario.patient_id,
    }


def hook_call(
    scenario: Scenario,
    fhir_server: str | None,
    *,
    prefetch: dict[str, Any] | None = None,
    token: str | None = TOKEN,
) -> dict[str, Any]:
    """A workup call with only `prefetch` (none by default), naming `fhir_server`."""
    body = workup_request(scenario)
    body["prefetch"] = {
        "patient": scenario.patient(),
        "miscarriages": scenario.searchset(scenario.conditions),
    }
    if prefetch is None:
        del body["prefetch"]
    else:
        body["prefetch"] = prefetch
    if fhir_server is not None:
        body["fhirServer"] = fhir_server
    if token is not None:
        body["fhirAuthorization"] = authorization(scenario, token)
    return body


@dataclass
class Answer:
    response: httpx.Response
    elapsed: float

    @property
    def topics(self) -> set[str]:
        return topics(self.response.json())


async def post(client: httpx.AsyncClient, body: dict[str, Any]) -> Answer:
    started = time.perf_counter()
    response = await client.post(WORKUP, json=body)
    return Answer(response, time.perf_counter() - started)


def assert_in_time(answer: Answer, note: Note) -> None:
    note("elapsed", round(answer.elapsed, 3))
    assert answer.response.status_code < 500, answer.response.text
    assert answer.response.status_code == 200, answer.response.text
    assert answer.elapsed <= BUDGET + SLACK, f"answered in {answer.elapsed:.3f} s"


def record_text(record: logging.LogRecord) -> str:
    """Everything a log record carries: the message, its arguments, the extra fields."""
    fields = [record.getMessage(), *(repr(value) for value in vars(record).values())]
    if record.exc_info:
        fields.append(logging.Formatter().formatException(record.exc_info))
    return "\n".join(fields)


def call_line(caplog: pytest.LogCaptureFixture) -> dict[str, Any]:
    """The extra fields of the (one) per-call log line for the workup call."""
    lines = [
        vars(r)
        for r in caplog.records
        if r.name == "rpl_cds.calls" and getattr(r, "endpoint", "") == "/cds-services/{service_id}"
    ]
    assert len(lines) == 1, lines
    return lines[0]


def missing_data(caplog: pytest.LogCaptureFixture) -> list[str]:
    return list(call_line(caplog).get("missingData", []))


def assert_token_hygiene(
    caplog: pytest.LogCaptureFixture, *servers: FaultServer, token: str = TOKEN
) -> None:
    """Every request the servers got carried exactly the call's bearer token, and no log record
    holds the token."""
    for server in servers:
        for request in server.requests:
            assert request.authorization == f"Bearer {token}", request
    leaks = [r.name for r in caplog.records if token in record_text(r)]
    assert not leaks, f"the access token was logged by {leaks}"


# Faults on the `miscarriages` key: the losses cannot be read, so no workup card; the patient
# was read. ---------------------------------------------------------------------------------


def _bundle_of(scenario: Scenario) -> dict[str, Any]:
    return scenario.searchset(scenario.conditions)


@dataclass(frozen=True)
class Fault:
    behaviour: Callable[[Scenario], Behaviour]
    requests: int | None = None  # how many requests the server should get for the key
    settings: tuple[tuple[str, Any], ...] = ()


LOSS_FAULTS: dict[str, Fault] = {
    "slower-than-the-budget": Fault(lambda s: Delay(5.0, Json(_bundle_of(s))), requests=1),
    "body-trickles-past-the-budget": Fault(lambda s: Trickle(_bundle_of(s), interval=0.1)),
    "http-500": Fault(lambda s: Status(500), requests=1),
    "http-502-twice": Fault(
        lambda s: Sequence([Status(502), Status(502), Json(_bundle_of(s))]), requests=2
    ),
    "http-504-twice": Fault(lambda s: Status(504), requests=2),
    "http-401": Fault(lambda s: Status(401, outcome("token expired", "login")), requests=1),
    "http-404": Fault(lambda s: Status(404), requests=1),
    "malformed-json": Fault(lambda s: Raw(b'{"resourceType": "Bundle", "entry": [{'), requests=1),
    "html-error-page": Fault(
        lambda s: Raw(b"<html><body>Bad gateway</body></html>", content_type="text/html"),
        requests=1,
    ),
    "non-fhir-json": Fault(lambda s: Json({"hello": "world"}), requests=1),
    "json-array": Fault(lambda s: Json([_bundle_of(s)]), requests=1),
    "operation-outcome-with-200": Fault(
        lambda s: Json(outcome("search failed", "processing")), requests=1
    ),
    "connection-dropped-twice": Fault(lambda s: Drop(), requests=2),
    "huge-chunked-body": Fault(
        lambda s: Huge(50_000_000), requests=1, settings=(("fhir_max_response_bytes", 100_000),)
    ),
    "huge-declared-body": Fault(
        lambda s: Huge(50_000_000, declare_length=True),
        requests=1,
        settings=(("fhir_max_response_bytes", 100_000),),
    ),
}


@pytest.mark.parametrize("case", list(LOSS_FAULTS), ids=list(LOSS_FAULTS))
async def test_a_failing_search_is_reported_and_the_rest_still_used(
    case: str,
    make_client: ClientFactory,
    fhir: FaultServer,
    caplog: pytest.LogCaptureFixture,
    note: Note,
) -> None:
    fault = LOSS_FAULTS[case]
    scenario = two_losses()
    fhir.route(PATIENT, Json(scenario.patient()))
    fhir.route(LOSSES, fault.behaviour(scenario))
    async with app(make_client, **dict(fault.settings)) as client:
        answer = await post(client, hook_call(scenario, fhir.base_url))
    assert_in_time(answer, note)
    assert answer.topics == {INCOMPLETE}, "the losses could not be read: no workup card"
    assert missing_data(caplog) == ["miscarriages"]
    if fault.requests is not None:
        assert len(fhir.requests_to(LOSSES)) == fault.requests
    assert len(fhir.requests_to(PATIENT)) == 1
    assert_token_hygiene(caplog, fhir)


async def test_a_huge_body_is_cut_off_not_buffered(
    make_client: ClientFactory,
    fhir: FaultServer,
    note: Note,
) -> None:
    scenario = two_losses()
    fhir.route(PATIENT, Json(scenario.patient()))
    fhir.route(LOSSES, Huge(50_000_000))
    async with app(make_client, fhir_max_response_bytes=100_000) as client:
        answer = await post(client, hook_call(scenario, fhir.base_url))
    assert_in_time(answer, note)
    assert answer.topics == {INCOMPLETE}
    # The service stopped reading: the server could push little more than the socket buffers.
    (request,) = fhir.requests_to(LOSSES)
    note("bytes_sent", request.bytes_sent)
    assert request.bytes_sent < 20_000_000, request.bytes_sent


# Faults on the `patient` key: the workup card is computed from the losses that were read. -----

PATIENT_FAULTS: dict[str, Callable[[Scenario], Behaviour]] = {
    "slower-than-the-budget": lambda s: Delay(5.0, Json(s.patient())),
    "http-500": lambda s: Status(500),
    "http-401": lambda s: Status(401),
    "malformed-json": lambda s: Raw(b'{"resourceType": "Pat'),
    "non-fhir-json": lambda s: Json({"hello": "world"}),
}


@pytest.mark.parametrize("case", list(PATIENT_FAULTS), ids=list(PATIENT_FAULTS))
async def test_a_failing_read_leaves_the_cards_from_the_other_key(
    case: str,
    make_client: ClientFactory,
    fhir: FaultServer,
    caplog: pytest.LogCaptureFixture,
    note: Note,
) -> None:
    scenario = two_losses()
    fhir.route(PATIENT, PATIENT_FAULTS[case](scenario))
    fhir.route(LOSSES, Json(_bundle_of(scenario)))
    async with app(make_client) as client:
        answer = await post(client, hook_call(scenario, fhir.base_url))
    assert_in_time(answer, note)
    assert answer.topics == {INCOMPLETE, LIFESTYLE}
    assert missing_data(caplog) == ["patient"]
    assert_token_hygiene(caplog, fhir)


async def test_both_keys_slower_than_the_budget(
    make_client: ClientFactory,
    fhir: FaultServer,
    caplog: pytest.LogCaptureFixture,
    note: Note,
) -> None:
    scenario = two_losses()
    fhir.route(PATIENT, Delay(3.0, Json(scenario.patient())))
    fhir.route(LOSSES, Delay(3.0, Json(_bundle_of(scenario))))
    async with app(make_client) as client:
        answer = await post(client, hook_call(scenario, fhir.base_url))
    assert_in_time(answer, note)
    assert answer.topics == {INCOMPLETE}
    assert sorted(missing_data(caplog)) == ["miscarriages", "patient"]
    assert_token_hygiene(caplog, fhir)


async def test_connection_refused(
    make_client: ClientFactory,
    caplog: pytest.LogCaptureFixture,
    note: Note,
) -> None:
    scenario = two_losses()
    async with app(make_client) as client:
        answer = await post(client, hook_call(scenario, f"http://127.0.0.1:{closed_port()}/fhir"))
    assert_in_time(answer, note)
    assert answer.topics == {INCOMPLETE}
    assert sorted(missing_data(caplog)) == ["miscarriages", "patient"]
    assert_token_hygiene(caplog)


# Transient errors are retried once, within the budget. ---------------------------------------

RETRIED: dict[str, Callable[[Scenario], Behaviour]] = {
    "503-then-200": lambda s: Sequence([Status(503), Json(_bundle_of(s))]),
    "502-then-200": lambda s: Sequence([Status(502), Json(_bundle_of(s))]),
    "504-then-200": lambda s: Sequence([Status(504), Json(_bundle_of(s))]),
    "dropped-then-200": lambda s: Sequence([Drop(), Json(_bundle_of(s))]),
}


@pytest.mark.parametrize("case", list(RETRIED), ids=list(RETRIED))
async def test_a_transient_error_is_retried(
    case: str,
    make_client: ClientFactory,
    fhir: FaultServer,
    caplog: pytest.LogCaptureFixture,
    note: Note,
) -> None:
    scenario = two_losses()
    fhir.route(PATIENT, Sequence([Status(503), Json(scenario.patient())]))
    fhir.route(LOSSES, RETRIED[case](scenario))
    async with app(make_client) as client:
        answer = await post(client, hook_call(scenario, fhir.base_url))
    assert_in_time(answer, note)
    assert answer.topics == {LIFESTYLE}
    assert missing_data(caplog) == []
    assert len(fhir.requests_to(LOSSES)) == 2
    assert len(fhir.requests_to(PATIENT)) == 2
    assert_token_hygiene(caplog, fhir)


async def test_an_error_that_is_not_transient_is_not_retried(
    make_client: ClientFactory, fhir: FaultServer
) -> None:
    scenario = two_losses()
    fhir.route(PATIENT, Sequence([Status(500), Json(scenario.patient())]))
    fhir.route(LOSSES, Sequence([Status(401), Json(_bundle_of(scenario))]))
    async with app(make_client) as client:
        answer = await post(client, hook_call(scenario, fhir.base_url))
    assert answer.topics == {INCOMPLETE}
    assert len(fhir.requests) == 2


# Paging: next links on the same server are followed; loops, other servers and pages past the
# cap are not. -------------------------------------------------------------------------------


def first_loss_then(
    scenario: Scenario, next_url: str | Callable[[Recorded, FaultServer], str]
) -> Behaviour:
    """The search's first page: the first loss, and a next link."""
    first = scenario.conditions[0]
    if isinstance(next_url, str):
        return Json(searchset([first], next_url))
    make = next_url
    return Echo(lambda request, server: Json(searchset([first], make(request, server))))


async def test_a_cookie_one_answer_sets_is_never_sent_on_another_call(
    make_client: ClientFactory, fhir: FaultServer, note: Note
) -> None:
    # One client serves every patient and token: a session cookie set while answering for the
    # first patient must not travel with the call for the second (nor with a later page).
    first, second = two_losses(), two_losses()
    for scenario in (first, second):
        fhir.route(
            PATIENT + scenario.patient_id,
            Json(scenario.patient(), set_cookie=f"session={scenario.patient_id}; Path=/"),
        )
        fhir.route(
            LOSSES + f"patient={scenario.patient_id}",
            Json(_bundle_of(scenario), set_cookie="pin=node-7; Path=/"),
        )
    async with app(make_client) as client:
        for scenario, token in ((first, TOKEN), (second, TOKEN + "-second")):
            answer = await post(client, hook_call(scenario, fhir.base_url, token=token))
            assert_in_time(answer, note)
            assert answer.topics == {LIFESTYLE}
    requests = fhir.requests_to(PATIENT) + fhir.requests_to(LOSSES)
    assert len(requests) == 4
    assert [r.cookie for r in requests] == [None] * 4


async def test_two_pages_on_the_same_server_are_both_read(
    make_client: ClientFactory,
    fhir: FaultServer,
    caplog: pytest.LogCaptureFixture,
    note: Note,
) -> None:
    scenario = two_losses()  # one loss per page: the card needs both
    fhir.route(PATIENT, Json(scenario.patient()))
    fhir.route(LOSSES + "patient=", first_loss_then(scenario, fhir.url("Condition?_page=2")))
    fhir.route(LOSSES + "_page=2", Json(searchset([scenario.conditions[1]])))
    async with app(make_client) as client:
        answer = await post(client, hook_call(scenario, fhir.base_url))
    assert_in_time(answer, note)
    assert answer.topics == {LIFESTYLE}
    assert missing_data(caplog) == []
    assert len(fhir.requests_to(LOSSES + "_page=2")) == 1
    assert_token_hygiene(caplog, fhir)


async def test_a_next_link_on_the_base_itself_is_followed(
    make_client: ClientFactory,
    fhir: FaultServer,
    caplog: pytest.LogCaptureFixture,
    note: Note,
) -> None:
    """HAPI FHIR's paging links name the base with a query: `{base}?_getpages=...`."""
    scenario = two_losses()
    fhir.route(PATIENT, Json(scenario.patient()))
    page_two = f"{fhir.base_url}?_getpages=abc123&_getpagesoffset=1&_count=1"
    fhir.route(LOSSES, first_loss_then(scenario, page_two))
    fhir.route("?_getpages=", Json(searchset([scenario.conditions[1]])))
    async with app(make_client) as client:
        answer = await post(client, hook_call(scenario, fhir.base_url))
    assert_in_time(answer, note)
    assert len(fhir.requests_to("?_getpages=")) == 1, "the second page was not read"
    assert answer.topics == {LIFESTYLE}
    assert missing_data(caplog) == []


async def test_a_next_link_to_itself_is_not_followed(
    make_client: ClientFactory,
    fhir: FaultServer,
    caplog: pytest.LogCaptureFixture,
    note: Note,
) -> None:
    scenario = two_losses()
    fhir.route(PATIENT, Json(scenario.patient()))
    # Both losses on the page, which links to itself: they are used, and the loop is reported.
    fhir.route(
        LOSSES,
        Echo(
            lambda request, server: Json(
                searchset(scenario.conditions, server.origin + request.target)
            )
        ),
    )
    async with app(make_client) as client:
        answer = await post(client, hook_call(scenario, fhir.base_url))
    assert_in_time(answer, note)
    assert answer.topics == {INCOMPLETE, LIFESTYLE}
    assert missing_data(caplog) == ["miscarriages"]
    assert len(fhir.requests_to(LOSSES)) == 1
    assert_token_hygiene(caplog, fhir)


async def test_a_next_link_loop_over_two_pages_is_not_followed(
    make_client: ClientFactory,
    fhir: FaultServer,
    caplog: pytest.LogCaptureFixture,
    note: Note,
) -> None:
    scenario = two_losses()
    fhir.route(PATIENT, Json(scenario.patient()))
    fhir.route(LOSSES + "patient=", first_loss_then(scenario, fhir.url("Condition?_page=2")))

    def back_to_the_first_page(request: Recorded, server: FaultServer) -> Behaviour:
        first = server.requests_to(LOSSES + "patient=")[0]
        return Json(searchset([scenario.conditions[1]], server.origin + first.target))

    fhir.route(LOSSES + "_page=2", Echo(back_to_the_first_page))
    async with app(make_client) as client:
        answer = await post(client, hook_call(scenario, fhir.base_url))
    assert_in_time(answer, note)
    assert answer.topics == {INCOMPLETE, LIFESTYLE}  # both pages' resources are used
    assert missing_data(caplog) == ["miscarriages"]
    assert len(fhir.requests_to(LOSSES)) == 2
    assert_token_hygiene(caplog, fhir)


@pytest.mark.parametrize(
    "where",
    ["other-port", "other-host-name", "outside-the-base-path", "https-same-host"],
)
async def test_a_next_link_that_leaves_the_server_is_not_followed(
    where: str,
    make_client: ClientFactory,
    fhir: FaultServer,
    elsewhere: FaultServer,
    caplog: pytest.LogCaptureFixture,
    note: Note,
) -> None:
    scenario = two_losses()
    next_url = {
        "other-port": elsewhere.url("Condition?_page=2"),
        "other-host-name": f"http://localhost:{fhir.port}/fhir/Condition?_page=2",
        "outside-the-base-path": f"{fhir.origin}/other/fhir/Condition?_page=2",
        "https-same-host": f"https://127.0.0.1:{fhir.port}/fhir/Condition?_page=2",
    }[where]
    fhir.route(PATIENT, Json(scenario.patient()))
    fhir.route(LOSSES, first_loss_then(scenario, next_url))
    async with app(make_client) as client:
        answer = await post(client, hook_call(scenario, fhir.base_url))
    assert_in_time(answer, note)
    assert answer.topics == {INCOMPLETE}  # one loss read; the second is behind the link
    assert missing_data(caplog) == ["miscarriages"]
    assert elsewhere.requests == [], "the other server was contacted"
    assert [r.target for r in fhir.requests if "_page=2" in r.target] == []
    assert len(fhir.requests) == 2
    assert_token_hygiene(caplog, fhir, elsewhere)


async def test_pages_past_the_cap_are_not_read(
    make_client: ClientFactory,
    fhir: FaultServer,
    caplog: pytest.LogCaptureFixture,
    note: Note,
) -> None:
    scenario = two_losses()
    fhir.route(PATIENT, Json(scenario.patient()))
    fhir.route(LOSSES + "patient=", first_loss_then(scenario, fhir.url("Condition?_page=2")))
    fhir.route(
        LOSSES + "_page=2",
        Json(searchset([scenario.conditions[1]], fhir.url("Condition?_page=3"))),
    )
    for page in range(3, 6):
        fhir.route(
            LOSSES + f"_page={page}", Json(searchset([], fhir.url(f"Condition?_page={page + 1}")))
        )
    async with app(make_client, fhir_max_pages=3) as client:
        answer = await post(client, hook_call(scenario, fhir.base_url))
    assert_in_time(answer, note)
    assert answer.topics == {INCOMPLETE, LIFESTYLE}  # what the pages read gave is used
    assert missing_data(caplog) == ["miscarriages"]
    assert len(fhir.requests_to(LOSSES)) == 3
    assert_token_hygiene(caplog, fhir)


async def test_resources_past_the_cap_are_not_read(
    make_client: ClientFactory, fhir: FaultServer, caplog: pytest.LogCaptureFixture
) -> None:
    scenario = two_losses().miscarriage("2025-01-05")
    fhir.route(PATIENT, Json(scenario.patient()))
    fhir.route(LOSSES, Json(_bundle_of(scenario)))
    async with app(make_client, fhir_max_resources=2) as client:
        answer = await post(client, hook_call(scenario, fhir.base_url))
    assert answer.response.status_code == 200
    assert answer.topics == {INCOMPLETE, LIFESTYLE}
    assert missing_data(caplog) == ["miscarriages"]


# Prefetch and fetching together. -------------------------------------------------------------


async def test_only_the_missing_key_is_fetched(
    make_client: ClientFactory, fhir: FaultServer, caplog: pytest.LogCaptureFixture
) -> None:
    scenario = two_losses()
    fhir.route(LOSSES, Json(_bundle_of(scenario)))
    async with app(make_client) as client:
        body = hook_call(scenario, fhir.base_url, prefetch={"patient": scenario.patient()})
        answer = await post(client, body)
    assert answer.topics == {LIFESTYLE}
    assert [r.path for r in fhir.requests] == ["/fhir/Condition"]
    assert fhir.requests[0].query.startswith(f"patient={scenario.patient_id}&code=")
    assert_token_hygiene(caplog, fhir)


async def test_a_key_prefetched_as_an_error_is_fetched_again(
    make_client: ClientFactory, fhir: FaultServer, caplog: pytest.LogCaptureFixture
) -> None:
    scenario = two_losses()
    fhir.route(LOSSES, Json(_bundle_of(scenario)))
    prefetch = {"patient": scenario.patient(), "miscarriages": outcome("timed out", "timeout")}
    async with app(make_client) as client:
        answer = await post(client, hook_call(scenario, fhir.base_url, prefetch=prefetch))
    assert answer.topics == {LIFESTYLE}
    assert missing_data(caplog) == []
    assert len(fhir.requests_to(LOSSES)) == 1
    assert fhir.requests_to(PATIENT) == []


async def test_a_key_prefetched_as_null_is_not_fetched(
    make_client: ClientFactory, fhir: FaultServer
) -> None:
    scenario = two_losses()
    prefetch = {"patient": scenario.patient(), "miscarriages": None}
    async with app(make_client) as client:
        answer = await post(client, hook_call(scenario, fhir.base_url, prefetch=prefetch))
    assert answer.response.json() == {"cards": []}
    assert fhir.requests == []


async def test_without_a_token_no_authorization_is_sent(
    make_client: ClientFactory, fhir: FaultServer
) -> None:
    scenario = two_losses()
    fhir.route(PATIENT, Json(scenario.patient()))
    fhir.route(LOSSES, Json(_bundle_of(scenario)))
    async with app(make_client) as client:
        answer = await post(client, hook_call(scenario, fhir.base_url, token=None))
    assert answer.topics == {LIFESTYLE}
    assert len(fhir.requests) == 2
    assert all(r.authorization is None for r in fhir.requests)


# Guards on the server the call names. ---------------------------------------------------------


def assert_outcome(response: httpx.Response, status: int, mentions: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["resourceType"] == "OperationOutcome"
    text = " ".join(issue["diagnostics"] for issue in body["issue"])
    assert mentions in text, text


async def test_http_is_refused_unless_allowed(
    make_client: ClientFactory, fhir: FaultServer, caplog: pytest.LogCaptureFixture
) -> None:
    scenario = two_losses()
    fhir.route("", Json(scenario.patient()))
    async with app(make_client, fhir_allow_http=False) as client:
        answer = await post(client, hook_call(scenario, fhir.base_url))
    assert_outcome(answer.response, 412, "https")
    assert fhir.requests == []
    assert_token_hygiene(caplog)


async def test_a_server_off_the_allowlist_is_refused(
    make_client: ClientFactory, fhir: FaultServer, caplog: pytest.LogCaptureFixture
) -> None:
    scenario = two_losses()
    fhir.route("", Json(scenario.patient()))
    async with app(make_client, fhir_allowed_hosts=["fhir.example.org"]) as client:
        answer = await post(client, hook_call(scenario, fhir.base_url))
    assert_outcome(answer.response, 412, "allowed hosts")
    assert fhir.requests == []
    assert_token_hygiene(caplog)


async def test_a_server_on_the_allowlist_is_used(
    make_client: ClientFactory, fhir: FaultServer
) -> None:
    scenario = two_losses()
    fhir.route(PATIENT, Json(scenario.patient()))
    fhir.route(LOSSES, Json(_bundle_of(scenario)))
    async with app(make_client, fhir_allowed_hosts=["fhir.example.org", "127.0.0.1"]) as client:
        answer = await post(client, hook_call(scenario, fhir.base_url))
    assert answer.topics == {LIFESTYLE}
    assert len(fhir.requests) == 2


async def test_no_fhir_server_and_missing_keys_is_412(make_client: ClientFactory) -> None:
    scenario = two_losses()
    async with app(make_client) as client:
        answer = await post(client, hook_call(scenario, None, token=None))
    assert_outcome(answer.response, 412, "miscarriages")


async def test_a_refused_server_is_not_needed_when_the_prefetch_is_complete(
    make_client: ClientFactory, fhir: FaultServer
) -> None:
    scenario = two_losses()
    prefetch = {
        "patient": scenario.patient(),
        "miscarriages": scenario.searchset(scenario.conditions),
    }
    async with app(make_client, fhir_allowed_hosts=["fhir.example.org"]) as client:
        answer = await post(client, hook_call(scenario, fhir.base_url, prefetch=prefetch))
    assert answer.response.status_code == 200
    assert answer.topics == {LIFESTYLE}
    assert fhir.requests == []


async def test_a_failed_key_with_a_refused_server_is_reported_not_fetched(
    make_client: ClientFactory, fhir: FaultServer, caplog: pytest.LogCaptureFixture
) -> None:
    scenario = two_losses()
    prefetch = {"patient": scenario.patient(), "miscarriages": outcome("timed out", "timeout")}
    async with app(make_client, fhir_allow_http=False) as client:
        answer = await post(client, hook_call(scenario, fhir.base_url, prefetch=prefetch))
    assert answer.response.status_code == 200
    assert answer.topics == {INCOMPLETE}
    assert missing_data(caplog) == ["miscarriages"]
    assert fhir.requests == []


# Nothing identifying in the logs, whatever happened. ------------------------------------------

LOGGED_CASES: dict[str, Callable[[Scenario], Behaviour]] = {
    "answered": lambda s: Json(_bundle_of(s)),
    "http-500": lambda s: Status(500),
    "slower-than-the-budget": lambda s: Delay(5.0, Json(_bundle_of(s))),
    "malformed-json": lambda s: Raw(b"{"),
}


@pytest.mark.parametrize("case", list(LOGGED_CASES), ids=list(LOGGED_CASES))
async def test_neither_token_nor_patient_id_is_logged(
    case: str, make_client: ClientFactory, fhir: FaultServer, caplog: pytest.LogCaptureFixture
) -> None:
    scenario = two_losses()
    fhir.route(PATIENT, Json(scenario.patient()))
    fhir.route(LOSSES, LOGGED_CASES[case](scenario))
    async with app(make_client) as client:
        answer = await post(client, hook_call(scenario, fhir.base_url))
    assert answer.response.status_code == 200
    assert caplog.records, "nothing was logged at all: the check would prove nothing"
    for secret in (TOKEN, scenario.patient_id):
        leaks = [f"{r.name}: {r.getMessage()}" for r in caplog.records if secret in record_text(r)]
        assert not leaks, leaks


@pytest.mark.parametrize("patient_id", [".", ".."])
async def test_a_dot_patient_id_is_refused_before_any_request(
    patient_id: str, make_client: ClientFactory, fhir: FaultServer
) -> None:
    """`.` and `..` match FHIR's id pattern; as path segments they would be removed, turning the
    read of Patient/{id} into a search of every patient with the call's token (and another
    patient's record into this one's). The request is refused; the FHIR server hears nothing."""
    scenario = Scenario("dot id", patient_id=patient_id).female()
    fhir.route(PATIENT, Json(scenario.patient()))
    fhir.route("Patient?", Json(searchset([Scenario("someone else").male().patient()])))
    async with app(make_client) as client:
        answer = await post(client, hook_call(scenario, fhir.base_url))
    assert answer.response.status_code == 400
    assert "an id cannot be only dots" in answer.response.text
    assert fhir.requests == []


# A token that cannot be sent. ------------------------------------------------------------------


@pytest.mark.parametrize(
    "token",
    ["SECRET-tök-42", "SECRET 42", "SECRET-42\r\nX-Injected: 1", "SECRET\x00-42", "=SECRET"],
    ids=["non-ascii", "space", "crlf", "nul", "padding-first"],
)
async def test_a_token_that_is_no_b64token_is_refused_and_never_echoed(
    token: str, make_client: ClientFactory, fhir: FaultServer, caplog: pytest.LogCaptureFixture
) -> None:
    """RFC 6750's b64token is all a Bearer credential may hold; anything else would fail to
    encode (a 500 that logged the token) or split the header. 400, naming the field only."""
    scenario = two_losses()
    async with app(make_client) as client:
        answer = await post(client, hook_call(scenario, fhir.base_url, token=token))
    assert_outcome(answer.response, 400, "fhirAuthorization.access_token")
    issues = answer.response.json()["issue"]
    assert [e for i in issues for e in i.get("expression", [])] == [
        "fhirAuthorization.access_token"
    ]
    assert "SECRET" not in answer.response.text
    assert fhir.requests == []
    assert_token_hygiene(caplog, token=token)


async def test_a_fetch_that_fails_unexpectedly_is_missing_data_and_logs_no_token(
    fhir: FaultServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Below the request model (which refuses such a token), the fetcher itself: every key's
    task fails the same unexpected way; each is reported, none is left unretrieved for asyncio
    to log with the exception's repr (which held `Bearer <token>`)."""
    token = "SECRET-tök-42"
    policy = EgressPolicy.from_entries(["127.0.0.1"], allow_http=True)
    transport = checked_transport(CheckedBackend(policy), httpx.Limits())
    async with httpx.AsyncClient(transport=transport) as http:
        fetcher = FhirFetcher(http, Settings(), Metrics(), policy)
        queries = {"patient": "Patient/p1", "miscarriages": "Condition?patient=p1"}
        results = await fetcher.fetch_all(fhir.base_url, token, queries, budget=BUDGET)
    gc.collect()
    assert {key: result.problem for key, result in results.items()} == {
        "patient": "the service failed to read it",
        "miscarriages": "the service failed to read it",
    }
    assert fhir.requests == []
    assert [r.name for r in caplog.records if r.name == "asyncio"] == []
    assert_token_hygiene(caplog, token=token)
    assert all("SECRET" not in record_text(r) for r in caplog.records)
