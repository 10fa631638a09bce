"""The contract this deployment serves at `/openapi.json`: `openapi.yaml`, plus one operation per
CDS service of the loaded knowledge.

`openapi.yaml` can only describe `POST /cds-services/{service_id}` in general, so the rules that
depend on the service (its hook, its prefetch keys) would be prose only, and a client generator or
a fuzzer would see a looser API than the real one. Each service therefore gets its own path,
`/cds-services/<id>` (and its feedback), whose body is the general one narrowed to that service:
`hook` is the service's hook, and the prefetch keys are all sent or `fhirServer` is named to fetch
the missing ones. The general path is left for unknown ids, which it answers with 404.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

CALL_PATH = "/cds-services/{service_id}"
FEEDBACK_PATH = "/cds-services/{service_id}/feedback"


def served_contract(
    document: Mapping[str, Any], services: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    """`document` (openapi.yaml) with `services` (discovery's list) as operations of their own."""
    served = copy.deepcopy(dict(document))
    paths: dict[str, Any] = served["paths"]
    call = paths[CALL_PATH]["post"]
    feedback = paths[FEEDBACK_PATH]["post"]
    for service in services:
        service_id = str(service["id"])
        paths[f"/cds-services/{service_id}"] = {"post": _call(served, call, service)}
        paths[f"/cds-services/{service_id}/feedback"] = {"post": _feedback(feedback, service_id)}
    if services:
        # OpenAPI matches concrete paths before templated ones, so the general paths now stand
        # for the ids discovery does not list; their examples named listed ones.
        parameter = served["components"]["parameters"]["ServiceId"]
        parameter.pop("examples", None)
        parameter.pop("example", None)
    return served


def _call(
    document: Mapping[str, Any], general: Mapping[str, Any], service: Mapping[str, Any]
) -> dict[str, Any]:
    operation = copy.deepcopy(dict(general))
    operation["operationId"] = f"call-{service['id']}"
    operation["summary"] = f"Call {service['id']} ({service['hook']})"
    operation.pop("parameters", None)
    narrowed: dict[str, Any] = {"properties": {"hook": {"const": service["hook"]}}}
    keys = sorted(service.get("prefetch", {}))
    if keys:
        value = {"oneOf": [{"$ref": "#/components/schemas/PrefetchResource"}, {"type": "null"}]}
        narrowed["anyOf"] = [
            {
                "required": ["prefetch"],
                "properties": {
                    "prefetch": {
                        "type": "object",
                        "required": keys,
                        "properties": dict.fromkeys(keys, value),
                    }
                },
            },
            {"required": ["fhirServer"]},
        ]
    content = operation["requestBody"]["content"]["application/json"]
    content["schema"] = {"allOf": [{"$ref": "#/components/schemas/CdsServiceRequest"}, narrowed]}
    examples = {
        name: example
        for name, example in content.get("examples", {}).items()
        if _example_value(document, example).get("hook") == service["hook"]
    }
    if examples:
        content["examples"] = examples
    else:
        content.pop("examples", None)
    return operation


def _feedback(general: Mapping[str, Any], service_id: str) -> dict[str, Any]:
    operation = copy.deepcopy(dict(general))
    operation["operationId"] = f"feedback-{service_id}"
    operation["summary"] = f"Feedback on the cards of {service_id}"
    operation.pop("parameters", None)
    return operation


def _example_value(document: Mapping[str, Any], example: Mapping[str, Any]) -> dict[str, Any]:
    if "$ref" in example:
        example = document["components"]["examples"][str(example["$ref"]).rsplit("/", 1)[-1]]
    value = example.get("value")
    return value if isinstance(value, dict) else {}
