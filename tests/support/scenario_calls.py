"""CDS Hooks calls for the described scenarios (`service.authoring.synthetic`), as an EHR that honours the
service's prefetch templates would make them.

    service = service_for_hook(discovery["services"], spec.hook)
    body = scenario_request(spec, service, today)            # prefetch answered from the record
    body = scenario_request(spec, service, today, prefetch=None, fhirServer=...)  # no prefetch

Each template is rendered (`service.fhir.templates.render`) and answered from the scenario's
record: `Type/id` is that resource (null when absent); `Type?...` a searchset Bundle of the
resources of that type, of the patient (`patient`, `subject`) and coded as asked by each parameter
whose value is `system|code` pairs (any name: `code`, `medication`, `category`...). Other parameters
(dates, status, `_count`) are ignored: the service filters again. A template the call cannot
render (no encounter) is answered null; a type in the scenario's `prefetchErrors` with an
OperationOutcome.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AsyncExitStack
from datetime import UTC, date, datetime
from typing import Any, Literal
from urllib.parse import unquote

import httpx
import pytest
from conftest import running

from service.app import create_app
from service.authoring.synthetic import ScenarioSpec, load_scenarios
from service.fhir.templates import Unrenderable, render
from service.settings import Settings, data_root

USER = "Practitioner/syn-clinician"
# The bundled scenarios (scenarios/), by id: what the card-text tests look up.
BUNDLED_SPECS = {spec.id: spec for spec in load_scenarios(data_root() / "scenarios")}
# The bundled service of each hook, used only when discovery lists several `rpl-` services for it.
DEFAULT_SERVICE = {
    "patient-view": "rpl-workup",
    "order-select": "rpl-order-safety-order-select",
    "order-sign": "rpl-order-safety-order-sign",
}
# `system|code` (the system may be empty), comma-separated.
_CODES = re.compile(r"[^|,]*\|[^|,]*(?:,[^|,]*\|[^|,]*)*")
# Search parameters that name the code element of several types (FHIR R4 `code` on a
# MedicationRequest is its medicationCodeableConcept).
_CODE_ELEMENTS = {
    "code": ("code", "medicationCodeableConcept"),
    "medication": ("medicationCodeableConcept", "code"),
}

Answer = Callable[[str], dict[str, Any] | None]


def service_for_hook(services: Sequence[Mapping[str, Any]], hook: str) -> Mapping[str, Any]:
    """The discovered `rpl-` service for `hook`: the only one, else the bundled one by id."""
    found = [s for s in services if s.get("hook") == hook and str(s.get("id")).startswith("rpl-")]
    if len(found) > 1:
        found = [s for s in found if s.get("id") == DEFAULT_SERVICE.get(hook)]
    if len(found) != 1:
        ids = [s.get("id") for s in services]
        raise LookupError(f"no single rpl- service for {hook} in discovery: {ids}")
    return found[0]


def hook_context(spec: ScenarioSpec, today: date) -> dict[str, Any]:
    """userId and patientId; draftOrders (a collection Bundle) and selections for order hooks."""
    context: dict[str, Any] = {"userId": USER, "patientId": spec.id}
    if spec.hook in ("order-select", "order-sign"):
        context["draftOrders"] = {
            "resourceType": "Bundle",
            "type": "collection",
            "entry": [{"resource": order} for order in spec.draft_orders(today)],
        }
        if spec.hook == "order-select" or spec.selections():
            context["selections"] = spec.selections()
    return context


def build_prefetch(
    templates: Mapping[str, str],
    context: Mapping[str, Any],
    today: date,
    answer: Answer,
    errors: Iterable[str] = (),
) -> dict[str, dict[str, Any] | None]:
    """Every template rendered and answered by `answer` (a rendered query -> its result);
    queries for a type in `errors` answered with an OperationOutcome instead."""
    failing = set(errors)
    values: dict[str, dict[str, Any] | None] = {}
    for key, template in templates.items():
        try:
            query = render(template, context, today)
        except Unrenderable:
            values[key] = None
            continue
        values[key] = outcome(query) if _query_type(query) in failing else answer(query)
    return values


def record_answer(resources: Sequence[Mapping[str, Any]]) -> Answer:
    """Answers rendered queries from a patient's record (`ScenarioSpec.resources`)."""

    def answer(query: str) -> dict[str, Any] | None:
        path, _, params = query.partition("?")
        kind, _, read_id = path.strip("/").partition("/")
        if read_id:
            return next(
                (
                    dict(r)
                    for r in resources
                    if r.get("resourceType") == kind and r.get("id") == unquote(read_id)
                ),
                None,
            )
        matches = [
            dict(r)
            for r in resources
            if r.get("resourceType") == kind and _matches(r, _parameters(params))
        ]
        return searchset(matches)

    return answer


def scenario_request(
    spec: ScenarioSpec,
    service: Mapping[str, Any],
    today: date,
    *,
    prefetch: Mapping[str, dict[str, Any] | None] | Literal["record"] | None = "record",
    **fields: Any,
) -> dict[str, Any]:
    """The hook call for `spec` to `service` (a discovery entry). `prefetch`: "record" (every
    template answered from the scenario's record), a mapping sent as is, or None for none.
    `fields` are added to the body (fhirServer, fhirAuthorization)."""
    context = hook_context(spec, today)
    body: dict[str, Any] = {
        "hook": spec.hook,
        "hookInstance": str(uuid.uuid4()),
        "context": context,
        **fields,
    }
    if prefetch == "record":
        templates = service.get("prefetch", {})
        answer = record_answer(spec.resources(today))
        body["prefetch"] = build_prefetch(templates, context, today, answer, spec.prefetch_errors)
    elif isinstance(prefetch, Mapping):
        body["prefetch"] = dict(prefetch)
    return body


def searchset(resources: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": len(resources),
        "entry": [
            {
                "fullUrl": f"urn:uuid:{uuid.uuid4()}",
                "resource": dict(r),
                "search": {"mode": "match"},
            }
            for r in resources
        ],
    }


def outcome(query: str) -> dict[str, Any]:
    """What a failed query gives: an error OperationOutcome."""
    return {
        "resourceType": "OperationOutcome",
        "issue": [
            {"severity": "error", "code": "exception", "diagnostics": f"{query} failed (test)"}
        ],
    }


def _query_type(query: str) -> str:
    return query.partition("?")[0].strip("/").partition("/")[0]


def _parameters(params: str) -> list[tuple[str, str]]:
    """Name and value of each parameter, percent-decoded (`+` stays a plus)."""
    pairs = []
    for part in params.split("&"):
        if part:
            name, _, value = part.partition("=")
            pairs.append((unquote(name), unquote(value)))
    return pairs


def _matches(resource: Mapping[str, Any], params: list[tuple[str, str]]) -> bool:
    for name, value in params:
        if name in ("patient", "subject"):
            reference = (resource.get("subject") or resource.get("patient") or {}).get("reference")
            if reference not in (value, f"Patient/{value}"):
                return False
        elif ":" not in name and _CODES.fullmatch(value):
            elements = _CODE_ELEMENTS.get(name) or _element_names(name)
            wanted = [tuple(pair.split("|", 1)) for pair in value.split(",")]
            codings = [c for element in elements for c in _codings(resource.get(element))]
            if not any(
                _coded(coding, system, code) for coding in codings for system, code in wanted
            ):
                return False
    return True


def _element_names(param: str) -> tuple[str, ...]:
    """`vaccine-code` -> vaccineCode (and vaccineCodeCodeableConcept for a choice element)."""
    camel = re.sub(r"-(.)", lambda m: m.group(1).upper(), param)
    return (camel, f"{camel}CodeableConcept")


def _codings(element: Any) -> list[Mapping[str, Any]]:
    """The codings of a CodeableConcept or a Coding, or of a list of them."""
    items = element if isinstance(element, list) else [element]
    codings: list[Mapping[str, Any]] = []
    for item in items:
        if isinstance(item, Mapping):
            codings.extend(c for c in item.get("coding", [item]) if isinstance(c, Mapping))
    return codings


def _coded(coding: Mapping[str, Any], system: str, code: str) -> bool:
    """FHIR token search: `system|code`; `|code` is a code without system; `system|` any code."""
    if (coding.get("system") or "") != system:
        return False
    return not code or coding.get("code") == code


class ProfileApps:
    """One app per guideline profile, built as the `make_client(guideline=profile, **settings)`
    fixture builds it, started on first use and kept while `stack` is open (an app takes about
    0.2 s to start), with its discovery. For module-scoped fixtures:

        async with AsyncExitStack() as stack:
            yield ProfileApps(stack, tmp_path_factory)
    """

    def __init__(
        self, stack: AsyncExitStack, tmp_path_factory: pytest.TempPathFactory, **settings: Any
    ) -> None:
        self._stack = stack
        self._tmp = tmp_path_factory
        self._settings = settings
        self._apps: dict[str, tuple[httpx.AsyncClient, list[dict[str, Any]]]] = {}

    async def get(self, profile: str) -> tuple[httpx.AsyncClient, list[dict[str, Any]]]:
        """The client for `profile` and the services it discovers."""
        if profile not in self._apps:
            settings = Settings(
                guideline=profile, data_dir=self._tmp.mktemp(profile) / "data", **self._settings
            )
            client = await self._stack.enter_async_context(running(create_app(settings)))
            discovery = await client.get("/cds-services")
            assert discovery.status_code == 200, discovery.text
            self._apps[profile] = (client, discovery.json()["services"])
        return self._apps[profile]

    async def card(self, spec: ScenarioSpec, profile: str, topic: str) -> dict[str, Any]:
        """The one card about `topic` that the scenario's call gets under `profile`, today."""
        client, discovery = await self.get(profile)
        service = service_for_hook(discovery, spec.hook)
        body = scenario_request(spec, service, datetime.now(UTC).date())
        response = await client.post(f"/cds-services/{service['id']}", json=body)
        cards = [c for c in response.json()["cards"] if c["source"]["topic"]["code"] == topic]
        assert len(cards) == 1, response.text
        card: dict[str, Any] = cards[0]
        return card
