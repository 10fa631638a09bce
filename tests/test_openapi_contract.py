"""openapi.yaml is the HTTP contract: it is valid OpenAPI 3.1, it lists exactly the operations the
app serves, the app serves it unchanged, its examples are real, and every status it documents is
one the app actually produces with the documented body."""

from __future__ import annotations

import asyncio
import copy
import json
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
from fastapi import FastAPI
from openapi_spec_validator import validate as validate_openapi
from referencing import Registry
from referencing.jsonschema import DRAFT202012
from support.contract import (
    BASE_URL,
    CONTRACT,
    CONTRACT_URI,
    FRAMEWORK_PATHS,
    HTTP_METHODS,
    _deref,
    _pointer,
    assert_documented,
    assert_valid,
    component,
    validator_at,
)
from support.fault_server import FaultServer, Json, Wait, searchset
from support.jwt_tokens import SigningKey, bearer, mint, new_es384_key, write_jwks
from support.patients import WORKUP_KEYS

from service.app import create_app
from service.cdshooks.contract import served_contract
from service.feedback.outage import DatabaseUnavailable
from service.settings import IssuerConfig, Settings

WORKUP = "rpl-workup"
ORDER_SIGN = "rpl-order-safety-order-sign"
ISSUER = "https://ehr.example.org"


def documented_operations(contract: dict[str, Any]) -> set[tuple[str, str]]:
    return {
        (path, method.upper())
        for path, item in contract["paths"].items()
        for method in item
        if method in HTTP_METHODS
    }


def served_operations(app: FastAPI) -> set[tuple[str, str]]:
    try:  # FastAPI >= 0.130 keeps included routers as lazy nodes; this flattens them.
        from fastapi.routing import iter_route_contexts

        routes: Any = list(iter_route_contexts(app.routes))
    except ImportError:
        routes = app.routes
    served = set()
    for route in routes:
        path, methods = getattr(route, "path", None), getattr(route, "methods", None)
        if path is None or not methods or path in FRAMEWORK_PATHS:
            continue
        served |= {(path, m) for m in methods if m not in {"HEAD", "OPTIONS"}}
    return served


def assert_outcome(body: Any, code: str) -> None:
    assert body["resourceType"] == "OperationOutcome"
    assert {issue["code"] for issue in body["issue"]} == {code}


# --------------------------------------------------------------------------- requests


def _loss(index: int, onset: str) -> dict[str, Any]:
    return {
        "resource": {
            "resourceType": "Condition",
            "id": f"loss-{index}",
            "subject": {"reference": "Patient/pat1"},
            "code": {"coding": [{"system": "http://snomed.info/sct", "code": "17369002"}]},
            "onsetDateTime": onset,
        }
    }


def patient_view_request() -> dict[str, Any]:
    return {
        "hook": "patient-view",
        "hookInstance": str(uuid.uuid4()),
        "context": {"userId": "Practitioner/p1", "patientId": "pat1"},
        "prefetch": {
            "patient": {"resourceType": "Patient", "id": "pat1", "gender": "female"},
            "conditions": {
                "resourceType": "Bundle",
                "type": "searchset",
                "entry": [_loss(1, "2023-03-01"), _loss(2, "2024-01-15")],
            },
            **dict.fromkeys(WORKUP_KEYS[2:], None),  # observations on: no data
        },
    }


def example(name: str) -> Any:
    return copy.deepcopy(CONTRACT["components"]["examples"][name]["value"])


# --------------------------------------------------------------------------- fixtures


async def _client(app: FastAPI, *, raise_app_exceptions: bool = True) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=raise_app_exceptions)
    return httpx.AsyncClient(transport=transport, base_url=BASE_URL)


@pytest.fixture
async def app(tmp_path: Path) -> AsyncIterator[FastAPI]:
    application = create_app(Settings(data_dir=tmp_path))
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with await _client(app) as http:
        yield http


@pytest.fixture
def signing_key(tmp_path: Path) -> SigningKey:
    key = new_es384_key()
    write_jwks(tmp_path / "jwks.json", key)
    return key


@pytest.fixture
async def secured_app(tmp_path: Path, signing_key: SigningKey) -> AsyncIterator[FastAPI]:
    settings = Settings(
        data_dir=tmp_path,
        auth_issuers={ISSUER: IssuerConfig(jwks_file=tmp_path / "jwks.json")},
        public_base_url=BASE_URL,
        admin_issuers=["https://analytics.example.org"],
    )
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


# --------------------------------------------------------------------------- the document


def test_contract_is_valid_openapi_3_1() -> None:
    assert CONTRACT["openapi"].startswith("3.1.")
    validate_openapi(CONTRACT)


def test_every_component_schema_is_valid_json_schema() -> None:
    for schema in CONTRACT["components"]["schemas"].values():
        jsonschema.Draft202012Validator.check_schema(schema)


def test_contract_documents_exactly_the_served_operations(tmp_path: Path) -> None:
    app = create_app(Settings(data_dir=tmp_path))
    served = served_operations(app)
    documented = documented_operations(CONTRACT)
    assert served, "no routes found: the route walk no longer understands FastAPI's routes"
    assert served - documented == set(), "served but not documented"
    assert documented - served == set(), "documented but not served"


async def test_served_openapi_document_is_the_contract(client: httpx.AsyncClient) -> None:
    """openapi.yaml, with each service of the loaded knowledge as an operation of its own."""
    services = (await client.get("/cds-services")).json()["services"]
    response = await client.get("/openapi.json")
    assert response.status_code == 200
    served = response.json()
    assert served == json.loads(json.dumps(served_contract(CONTRACT, services)))
    validate_openapi(served)
    for path, item in CONTRACT["paths"].items():
        assert served["paths"][path] == json.loads(json.dumps(item)), path


async def test_served_contract_states_each_services_hook_and_prefetch(
    client: httpx.AsyncClient,
) -> None:
    served = (await client.get("/openapi.json")).json()
    discovery = (await client.get("/cds-services")).json()["services"]
    registry: Registry[Any] = Registry().with_resource(
        CONTRACT_URI, DRAFT202012.create_resource(served)
    )
    pointer = _pointer(
        "paths", f"/cds-services/{WORKUP}", "post", "requestBody", "content", "application/json"
    )
    validator = jsonschema.Draft202012Validator(
        {"$ref": f"{CONTRACT_URI}#{pointer}/schema"}, registry=registry
    )
    body = {
        "hook": "patient-view",
        "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
        "context": {"userId": "Practitioner/p", "patientId": "p1"},
    }
    prefetch = dict.fromkeys(next(s for s in discovery if s["id"] == WORKUP)["prefetch"])
    assert validator.is_valid({**body, "prefetch": prefetch})
    assert validator.is_valid({**body, "fhirServer": "https://ehr.example/fhir"})
    assert not validator.is_valid(body), "no prefetch, no fhirServer: the service answers 412"
    assert not validator.is_valid({**body, "prefetch": {"patient": None}}), "keys missing"
    assert not validator.is_valid({**body, "hook": "order-sign", "prefetch": prefetch})
    for service in discovery:
        assert f"/cds-services/{service['id']}/feedback" in served["paths"]


def _examples_in_contract() -> Iterator[tuple[str, str, Any]]:
    """(where, schema pointer, example value) for every example attached to a schema."""
    for path, item in CONTRACT["paths"].items():
        for method, operation in item.items():
            if method not in HTTP_METHODS:
                continue
            media: list[tuple[str, dict[str, Any], str]] = []
            if "requestBody" in operation:
                pointer = _pointer("paths", path, method, "requestBody")
                media.append(
                    (f"{method.upper()} {path} request", operation["requestBody"], pointer)
                )
            for status, response in operation["responses"].items():
                resolved, ref = _deref(response)
                pointer = ref or _pointer("paths", path, method, "responses", status)
                media.append((f"{method.upper()} {path} {status}", resolved, pointer))
            for where, node, pointer in media:
                for media_type, content in node.get("content", {}).items():
                    schema_pointer = f"{pointer}/content/{_pointer(media_type)[1:]}/schema"
                    if "example" in content:
                        yield where, schema_pointer, content["example"]
                    for name, ex in content.get("examples", {}).items():
                        yield f"{where} example {name}", schema_pointer, _deref(ex)[0]["value"]


def test_every_example_matches_its_schema() -> None:
    checked = 0
    for where, schema_pointer, value in _examples_in_contract():
        assert_valid(validator_at(schema_pointer), value, where)
        checked += 1
    assert checked >= 10


def test_card_schema_is_strict() -> None:
    """The contract enforces the CDS Hooks card rules a client relies on."""
    card = {"summary": "s", "indicator": "info", "source": {"label": "x"}}
    validator = component("Card")
    assert validator.is_valid(card)
    assert not validator.is_valid({**card, "summary": "x" * 140})
    assert not validator.is_valid({**card, "indicator": "hard-stop"})
    assert not validator.is_valid({**card, "links": []})
    assert not validator.is_valid({**card, "detail": None})
    assert not validator.is_valid({**card, "color": "red"})
    assert not validator.is_valid({**card, "suggestions": [{"label": "Do it"}]})
    assert validator.is_valid(
        {**card, "suggestions": [{"label": "Do it"}], "selectionBehavior": "any"}
    )
    assert not validator.is_valid({**card, "overrideReasons": [{"system": "s", "code": "c"}]}), (
        "an override reason needs a display"
    )
    assert not validator.is_valid(
        {
            **card,
            "suggestions": [{"label": "l", "actions": [{"type": "create", "description": "d"}]}],
            "selectionBehavior": "any",
        }
    ), "a create action needs its resource"
    assert component("CdsServiceResponse").is_valid({"cards": []})


# --------------------------------------------------------------------------- 2xx answers


async def test_discovery_matches_contract(client: httpx.AsyncClient) -> None:
    body = assert_documented(await client.get("/cds-services"), "/cds-services", "GET")
    services = {service["id"]: service for service in body["services"]}
    assert services[WORKUP]["hook"] == "patient-view"
    assert set(services[WORKUP]["prefetch"]) == set(WORKUP_KEYS)
    # The documented example says what the bundled services are (long query lists shortened).
    for documented in example("Discovery")["services"]:
        served = services[documented["id"]]
        for field in ("hook", "title", "description"):
            assert documented[field] == served[field], (documented["id"], field)
        assert set(documented["prefetch"]) == set(served["prefetch"]), documented["id"]


async def test_service_call_answers_with_contract_cards(client: httpx.AsyncClient) -> None:
    response = await client.post(f"/cds-services/{WORKUP}", json=patient_view_request())
    body = assert_documented(response, "/cds-services/{service_id}", "POST")
    assert [card["source"]["topic"]["code"] for card in body["cards"]] == [
        "aps-screen",
        "thyroid-screen",
        "uterine-imaging",
        "lifestyle-support",
    ]


@pytest.mark.parametrize(
    ("request_example", "response_example"),
    [("PatientViewRequest", "PatientViewResponse"), ("OrderSignRequest", "OrderSignResponse")],
)
async def test_documented_examples_are_what_the_service_does(
    client: httpx.AsyncClient, request_example: str, response_example: str
) -> None:
    discovery = (await client.get("/cds-services")).json()["services"]
    request = example(request_example)
    service_id = next(
        s["id"]
        for s in discovery
        if s["hook"] == request["hook"] and s["id"] in {WORKUP, ORDER_SIGN}
    )
    response = await client.post(f"/cds-services/{service_id}", json=request)
    body = assert_documented(response, "/cds-services/{service_id}", "POST")

    def gist(cards: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
        return [
            (c["uuid"], c["indicator"], c["summary"], c["source"]["topic"]["code"]) for c in cards
        ]

    assert gist(body["cards"]) == gist(example(response_example)["cards"])


async def test_feedback_and_analytics_match_contract(client: httpx.AsyncClient) -> None:
    request = example("OrderSignRequest")
    call = await client.post(f"/cds-services/{ORDER_SIGN}", json=request)
    card = call.json()["cards"][0]
    reason = card["overrideReasons"][0]
    feedback = {
        "feedback": [
            {
                "card": card["uuid"],
                "outcome": "overridden",
                # As in the CDS Hooks examples, the client sends the reason without its display.
                "overrideReason": {"reason": {"system": reason["system"], "code": reason["code"]}},
                "outcomeTimestamp": "2024-05-01T10:07:00Z",
            }
        ]
    }
    path = "/cds-services/{service_id}/feedback"
    first = await client.post(f"/cds-services/{ORDER_SIGN}/feedback", json=feedback)
    assert assert_documented(first, path, "POST") == {"received": 1, "stored": 1}
    again = await client.post(f"/cds-services/{ORDER_SIGN}/feedback", json=feedback)
    assert assert_documented(again, path, "POST") == {"received": 1, "stored": 0}

    analytics = await client.get("/analytics/feedback", params={"service": ORDER_SIGN})
    body = assert_documented(analytics, "/analytics/feedback", "GET")
    topic = next(t for t in body["topics"] if t["topic"] == "warn-lit")
    assert topic["overridden"] == 1
    assert topic["overrideReasons"][0]["count"] == 1


async def test_operations_endpoints_match_contract(client: httpx.AsyncClient) -> None:
    assert_documented(await client.get("/healthz"), "/healthz", "GET")
    assert_documented(await client.get("/readyz"), "/readyz", "GET")
    metrics = await client.get("/metrics")
    assert metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("text/plain")
    assert "text/plain" in CONTRACT["paths"]["/metrics"]["get"]["responses"]["200"]["content"]


# --------------------------------------------------------------------------- error answers


@pytest.mark.parametrize("suffix", ["", "/feedback"])
async def test_unknown_service_is_404(client: httpx.AsyncClient, suffix: str) -> None:
    response = await client.post(f"/cds-services/no-such-service{suffix}", json={})
    body = assert_documented(response, f"/cds-services/{{service_id}}{suffix}", "POST")
    assert response.status_code == 404
    assert_outcome(body, "not-found")


@pytest.mark.parametrize("suffix", ["", "/feedback"])
@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
async def test_non_json_body_is_415(
    client: httpx.AsyncClient, suffix: str, content_type: str | None
) -> None:
    headers = {"content-type": content_type} if content_type else {}
    response = await client.post(
        f"/cds-services/{WORKUP}{suffix}", content=b'{"hook": "patient-view"}', headers=headers
    )
    body = assert_documented(response, f"/cds-services/{{service_id}}{suffix}", "POST")
    assert response.status_code == 415
    assert_outcome(body, "not-supported")


@pytest.mark.parametrize("suffix", ["", "/feedback"])
@pytest.mark.parametrize("streamed", [False, True], ids=["content-length", "chunked"])
async def test_oversized_body_is_413(tmp_path: Path, suffix: str, streamed: bool) -> None:
    app = create_app(Settings(data_dir=tmp_path, max_body_bytes=2_000))
    payload = json.dumps({**patient_view_request(), "extension": {"org.example.pad": "x" * 4_000}})

    async def chunks() -> AsyncIterator[bytes]:
        data = payload.encode()
        for start in range(0, len(data), 500):
            yield data[start : start + 500]

    content: Any = chunks() if streamed else payload.encode()
    async with app.router.lifespan_context(app), await _client(app) as http:
        response = await http.post(
            f"/cds-services/{WORKUP}{suffix}",
            content=content,
            headers={"content-type": "application/json"},
        )
    body = assert_documented(response, f"/cds-services/{{service_id}}{suffix}", "POST")
    assert response.status_code == 413
    assert_outcome(body, "too-costly")


@pytest.mark.parametrize(
    ("content", "expression"),
    [
        (b"", None),
        (b'{"hook": ', None),
        (b"[1, 2]", None),
        (json.dumps({**patient_view_request(), "hook": "order-sign"}).encode(), "hook"),
        (
            json.dumps(
                {**patient_view_request(), "context": {"userId": "Practitioner/p1"}}
            ).encode(),
            "context.patientId",
        ),
        (
            json.dumps({**patient_view_request(), "hookInstance": "not-a-uuid"}).encode(),
            "hookInstance",
        ),
        (json.dumps({**patient_view_request(), "unexpected": 1}).encode(), "unexpected"),
    ],
    ids=["empty", "malformed", "not-an-object", "wrong-hook", "context", "hookInstance", "extra"],
)
async def test_invalid_service_call_is_400(
    client: httpx.AsyncClient, content: bytes, expression: str | None
) -> None:
    response = await client.post(
        f"/cds-services/{WORKUP}", content=content, headers={"content-type": "application/json"}
    )
    body = assert_documented(response, "/cds-services/{service_id}", "POST")
    assert response.status_code == 400
    assert_outcome(body, "invalid")
    if expression is not None:
        expressions = [e for issue in body["issue"] for e in issue.get("expression", [])]
        assert expression in expressions


@pytest.mark.parametrize(
    "feedback",
    [
        {"feedback": []},
        {
            "feedback": [
                {
                    "card": str(uuid.uuid4()),
                    "outcome": "accepted",
                    "outcomeTimestamp": "2024-05-01T10:00:00Z",
                }
            ]
        },
        {
            "feedback": [
                {
                    "card": str(uuid.uuid4()),
                    "outcome": "overridden",
                    "outcomeTimestamp": "2024-05-01T10:00:00",
                }
            ]
        },
    ],
    ids=["empty", "accepted-without-suggestions", "timestamp-without-zone"],
)
async def test_invalid_feedback_is_400(client: httpx.AsyncClient, feedback: Any) -> None:
    assert not component("FeedbackRequest").is_valid(feedback), "the contract must refuse it too"
    response = await client.post(f"/cds-services/{WORKUP}/feedback", json=feedback)
    body = assert_documented(response, "/cds-services/{service_id}/feedback", "POST")
    assert response.status_code == 400
    assert_outcome(body, "invalid")


@pytest.mark.parametrize("missing", [["patient"], ["patient", "conditions"]])
async def test_missing_prefetch_without_fhir_server_is_412(
    client: httpx.AsyncClient, missing: list[str]
) -> None:
    request = patient_view_request()
    for key in missing:
        del request["prefetch"][key]
    response = await client.post(f"/cds-services/{WORKUP}", json=request)
    body = assert_documented(response, "/cds-services/{service_id}", "POST")
    assert response.status_code == 412
    assert_outcome(body, "incomplete")
    for key in missing:
        assert key in body["issue"][0]["diagnostics"]


async def test_null_prefetch_value_means_no_data_not_412(client: httpx.AsyncClient) -> None:
    request = patient_view_request()
    request["prefetch"]["conditions"] = None
    response = await client.post(f"/cds-services/{WORKUP}", json=request)
    assert_documented(response, "/cds-services/{service_id}", "POST")
    assert response.status_code == 200


async def test_unsupported_method_is_405_with_allow(client: httpx.AsyncClient) -> None:
    response = await client.put("/cds-services")
    assert response.status_code == 405
    assert response.headers["allow"] == "GET"
    assert_valid(component("OperationOutcome"), response.json(), "405 body")


async def test_unexpected_failure_is_500_operation_outcome(
    app: FastAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*_: Any, **__: Any) -> Any:
        raise RuntimeError("simulated database failure")

    monkeypatch.setattr(app.state.runtime.store, "summary", broken)
    async with await _client(app, raise_app_exceptions=False) as http:
        response = await http.get("/analytics/feedback")
    body = assert_documented(response, "/analytics/feedback", "GET")
    assert response.status_code == 500
    assert_outcome(body, "exception")
    assert "simulated" not in response.text


async def test_unready_database_is_503(
    app: FastAPI, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def unreachable() -> str:
        return "connection refused"

    monkeypatch.setattr(app.state.runtime.store, "check", unreachable)
    response = await client.get("/readyz")
    body = assert_documented(response, "/readyz", "GET")
    assert response.status_code == 503
    assert_outcome(body, "transient")


async def test_worker_at_its_call_limit_is_503_with_retry_after(tmp_path: Path) -> None:
    """One call in progress, held by a FHIR server that answers when told, fills a limit of 1:
    every limited operation is then refused as documented."""
    app = create_app(
        Settings(
            data_dir=tmp_path,
            max_concurrent_calls=1,
            fhir_allow_http=True,
            fhir_time_budget_seconds=60,
        )
    )
    release = threading.Event()
    refused: list[tuple[str, str, httpx.Response]] = []
    calls: list[tuple[str, str, str, dict[str, Any] | None]] = [
        ("GET", "/cds-services", "/cds-services", None),
        ("POST", "/cds-services/{service_id}", f"/cds-services/{WORKUP}", {}),
        (
            "POST",
            "/cds-services/{service_id}/feedback",
            f"/cds-services/{WORKUP}/feedback",
            {},
        ),
        ("GET", "/analytics/feedback", "/analytics/feedback", None),
        (
            "POST",
            "/PlanDefinition/{plan_id}/$apply",
            "/PlanDefinition/rpl-workup/$apply",
            {},
        ),
    ]
    with FaultServer() as fhir:
        fhir.route("", Wait(release, Json(searchset([]))))
        held_call = {**patient_view_request(), "fhirServer": fhir.base_url}
        del held_call["prefetch"]
        async with app.router.lifespan_context(app), await _client(app) as http:
            held = asyncio.create_task(http.post(f"/cds-services/{WORKUP}", json=held_call))
            try:
                for _ in range(2000):  # 20 s at most
                    if fhir.requests:
                        break
                    await asyncio.sleep(0.01)
                assert fhir.requests, "the held call never reached the FHIR server"
                for method, path, url, body in calls:
                    refused.append((method, path, await http.request(method, url, json=body)))
            finally:
                release.set()
            assert (await held).status_code == 200
    for method, path, response in refused:
        body = assert_documented(response, path, method)
        assert response.status_code == 503, f"{method} {path}"
        assert_outcome(body, "transient")


@pytest.mark.parametrize(
    ("method", "path", "url", "store_method"),
    [
        (
            "POST",
            "/cds-services/{service_id}/feedback",
            f"/cds-services/{WORKUP}/feedback",
            "save_feedback",
        ),
        ("GET", "/analytics/feedback", "/analytics/feedback", "summary"),
    ],
    ids=["feedback", "analytics"],
)
async def test_unavailable_database_is_503_with_retry_after(
    app: FastAPI,
    client: httpx.AsyncClient,
    monkeypatch: pytest.MonkeyPatch,
    method: str,
    path: str,
    url: str,
    store_method: str,
) -> None:
    async def unavailable(*_: Any, **__: Any) -> Any:
        raise DatabaseUnavailable("connection refused")

    monkeypatch.setattr(app.state.runtime.store, store_method, unavailable)
    feedback = example("FeedbackAccepted") if method == "POST" else None
    response = await client.request(method, url, json=feedback)
    body = assert_documented(response, path, method)
    assert response.status_code == 503
    assert int(response.headers["retry-after"]) > 0
    assert_outcome(body, "transient")


# --------------------------------------------------------------------------- authentication


def _secured_operations() -> list[tuple[str, str, str]]:
    """(method, documented path, concrete path) of every operation the contract secures."""
    concrete = {
        "/cds-services/{service_id}": f"/cds-services/{WORKUP}",
        "/cds-services/{service_id}/feedback": f"/cds-services/{WORKUP}/feedback",
        "/PlanDefinition/{plan_id}/$apply": "/PlanDefinition/rpl-workup/$apply",
    }
    return [
        (method.upper(), path, concrete.get(path, path))
        for path, item in CONTRACT["paths"].items()
        for method, operation in item.items()
        if method in HTTP_METHODS and operation.get("security", CONTRACT.get("security")) != []
    ]


def test_security_is_documented_per_operation() -> None:
    assert CONTRACT["components"]["securitySchemes"]["cdsClientJwt"]["scheme"] == "bearer"
    secured = {(m, p) for m, p, _ in _secured_operations()}
    assert secured == {
        ("GET", "/cds-services"),
        ("POST", "/cds-services/{service_id}"),
        ("POST", "/cds-services/{service_id}/feedback"),
        ("GET", "/analytics/feedback"),
        ("POST", "/PlanDefinition/{plan_id}/$apply"),
    }
    for path in ("/healthz", "/readyz", "/metrics"):
        assert CONTRACT["paths"][path]["get"]["security"] == []


@pytest.mark.parametrize(("method", "path", "url"), _secured_operations())
async def test_secured_operations_without_token_are_401(
    secured_app: FastAPI, method: str, path: str, url: str
) -> None:
    async with await _client(secured_app) as http:
        response = await http.request(method, url, json={} if method == "POST" else None)
    body = assert_documented(response, path, method)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert_outcome(body, "login")


async def test_open_operations_need_no_token(secured_app: FastAPI) -> None:
    async with await _client(secured_app) as http:
        for path in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
            assert (await http.get(path)).status_code == 200, path


async def test_signed_call_is_accepted_and_analytics_needs_an_admin_issuer(
    secured_app: FastAPI, signing_key: SigningKey
) -> None:
    async with await _client(secured_app) as http:
        url = f"/cds-services/{WORKUP}"
        token = mint(signing_key, iss=ISSUER, aud=f"{BASE_URL}{url}")
        call = await http.post(
            url, json=patient_view_request(), headers={"authorization": bearer(token)}
        )
        assert_documented(call, "/cds-services/{service_id}", "POST")
        assert call.status_code == 200

        token = mint(signing_key, iss=ISSUER, aud=f"{BASE_URL}/analytics/feedback")
        analytics = await http.get("/analytics/feedback", headers={"authorization": bearer(token)})
    body = assert_documented(analytics, "/analytics/feedback", "GET")
    assert analytics.status_code == 403
    assert_outcome(body, "forbidden")
