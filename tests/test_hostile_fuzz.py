"""Seeded fuzz of what an attacker or a faulty EHR controls in a hook call: every string the
service passes on (the access token, ids, the FHIR server URL) with non-ASCII and control
characters, and malformed structures nested anywhere inside every prefetch value, including
inside resources of the right type (a `code` that is a number, a `coding` that is a string, a
date that is an object).

Whatever arrives, the answer is a documented status with an OperationOutcome or cards, never a
5xx, and no log record holds what was sent (the log canary, conftest.py). The service runs with
the default FHIR host list, so no generated `fhirServer` makes it connect anywhere but loopback.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, event, given, seed, settings
from hypothesis import strategies as st

from service.app import create_app
from service.settings import Settings

ORDER_SAFETY_KEYS = ("patient", "conditions", "observations", "medicationRequests")
# service id: (hook, prefetch keys)
SERVICES = {
    "rpl-workup": (
        "patient-view",
        (*ORDER_SAFETY_KEYS, "procedures", "reports", "serviceRequests"),
    ),
    "rpl-order-safety-order-sign": ("order-sign", ORDER_SAFETY_KEYS),
}
EXAMPLES = 150

# Strings with what breaks naive code: non-ASCII, control characters, NUL, CR/LF, surrogates
# excepted (JSON cannot carry them as text).
text = st.text(st.characters(exclude_categories=["Cs"]), max_size=24)
odd_strings = st.one_of(
    text,
    st.sampled_from(["", " ", "tök", "a\r\nb", "\x00", "..", "/", "%2e%2e", "é" * 70, "٣"]),
)
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False), text
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(text, inner, max_size=3)),
    max_leaves=12,
)
# Elements the engine reads, given wrong shapes.
read_elements = st.sampled_from(
    [
        "code",
        "coding",
        "system",
        "status",
        "verificationStatus",
        "clinicalStatus",
        "valueQuantity",
        "valueCodeableConcept",
        "value",
        "unit",
        "effectiveDateTime",
        "onsetDateTime",
        "recordedDate",
        "authoredOn",
        "performedDateTime",
        "interpretation",
        "reasonCode",
        "medicationCodeableConcept",
        "id",
        "meta",
        "subject",
        "gender",
        "birthDate",
        "evidence",
        "category",
        "component",
    ]
)
resource_types = st.sampled_from(
    [
        "Patient",
        "Condition",
        "Observation",
        "Procedure",
        "DiagnosticReport",
        "ServiceRequest",
        "MedicationRequest",
        "OperationOutcome",
        "Bundle",
    ]
)


order_types = st.sampled_from(["MedicationRequest", "ServiceRequest"])


@st.composite
def resources(draw: st.DrawFn, types: st.SearchStrategy[str] = resource_types) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": draw(types),
        "id": draw(st.sampled_from(["d1", "d2"])),
        "status": draw(st.sampled_from(["final", "active", "draft"])),
    }
    if draw(st.booleans()):
        # Well-formed order content beside the damage, so that the order-safety rules run.
        resource["medicationCodeableConcept"] = {
            "text": draw(st.sampled_from(["prednisolone 20 mg", "IVIG", "enoxaparin", "aspirin"]))
        }
        resource["reasonCode"] = [{"text": "recurrent miscarriage"}]
    resource.update(draw(st.dictionaries(read_elements, json_values, max_size=5)))
    if draw(st.booleans()):
        # A well-formed coding beside the damage, so that code-matching paths are reached.
        resource["code"] = {
            "coding": [
                {
                    "system": "http://snomed.info/sct",
                    "code": draw(
                        st.sampled_from(
                            ["17369002", "16607004", "40733004", "38804009", "102872000"]
                        )
                    ),
                }
            ],
            **draw(st.dictionaries(st.sampled_from(["text", "coding"]), json_values, max_size=1)),
        }
    return resource


@st.composite
def prefetch_values(draw: st.DrawFn) -> Any:
    """Mostly well-formed Bundles of damaged resources (what reaches the engine), sometimes a
    bare resource, sometimes anything at all (what the shape check must refuse)."""
    kind = draw(st.sampled_from(["bundle"] * 16 + ["resource"] * 3 + ["anything"]))
    if kind == "anything":
        return draw(json_values)
    if kind == "resource":
        return draw(resources())
    entry = st.builds(lambda r: {"resource": r, "search": {"mode": "match"}}, resources())
    if draw(st.integers(0, 9)) == 0:
        entry = st.one_of(entry, json_values)  # now and then, a broken entry
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": draw(st.lists(entry, max_size=4)),
    }


@st.composite
def hook_calls(draw: st.DrawFn) -> dict[str, Any]:
    def mostly(valid: str) -> str:
        return valid if draw(st.integers(0, 9)) else draw(odd_strings)

    service = draw(st.sampled_from(sorted(SERVICES)))
    hook, keys = SERVICES[service]
    body: dict[str, Any] = {
        "hook": hook,
        "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
        "context": {"userId": mostly("Practitioner/p1"), "patientId": mostly("p1")},
        "prefetch": {key: draw(st.one_of(st.none(), prefetch_values())) for key in keys},
    }
    if hook == "order-sign":
        orders = draw(st.lists(resources(order_types), min_size=1, max_size=3))
        body["context"]["draftOrders"] = {
            "resourceType": "Bundle",
            "type": "collection",
            "entry": [{"resource": order} for order in orders],
        }
    if draw(st.booleans()):
        body["context"]["encounterId"] = mostly("e1")
    if draw(st.booleans()):
        host = draw(st.sampled_from(["127.0.0.1:9", "localhost:9", "fhir.example.org", "10.0.0.1"]))
        body["fhirServer"] = mostly(f"http://{host}/fhir")
        body["fhirAuthorization"] = {
            "access_token": mostly("token-ok-123"),
            "token_type": "Bearer",
            "expires_in": 300,
            "scope": "patient/*.read",
            "subject": "rpl-cds",
        }
        if draw(st.booleans()):
            del body["prefetch"][draw(st.sampled_from(keys))]
    return {"service": service, "body": body}


@pytest.fixture(scope="module")
def call(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """One app for every example, on its own event loop (Hypothesis runs examples synchronously)."""
    loop = asyncio.new_event_loop()
    settings_ = Settings(
        data_dir=tmp_path_factory.mktemp("fuzz"), fhir_allow_http=True, fhir_time_budget_seconds=0.5
    )
    app = create_app(settings_)
    lifespan = app.router.lifespan_context(app)
    loop.run_until_complete(lifespan.__aenter__())
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://cds.test")

    def post(call: dict[str, Any]) -> httpx.Response:
        url = f"/cds-services/{call['service']}"
        return loop.run_until_complete(client.post(url, json=call["body"]))

    yield post
    loop.run_until_complete(client.aclose())
    loop.run_until_complete(lifespan.__aexit__(None, None, None))
    loop.close()


@seed(20_261_207)
@settings(
    max_examples=EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(hook_call=hook_calls())
def test_hostile_hook_calls_get_a_documented_answer(call: Any, hook_call: dict[str, Any]) -> None:
    response = call(hook_call)
    event(f"answered {response.status_code}")  # pytest --hypothesis-show-statistics
    if response.status_code != 200:
        event(response.json()["issue"][-1]["diagnostics"][:60])
    assert response.status_code in (200, 400, 412), response.text
    document = response.json()
    if response.status_code == 200:
        assert isinstance(document["cards"], list)
    else:
        assert document["resourceType"] == "OperationOutcome"
