"""Property-based conformance: schemathesis generates requests from openapi.yaml (valid ones and
invalid ones) and sends them to the real service on a real socket. Every answer must be a
documented status with the documented content type, headers and body, and never a 5xx.

Besides the operations as written (where `service_id` is mostly an unknown id, hence 404), each
service from discovery gets its own operation, `POST /cds-services/<id>`, whose body schema is
narrowed to that service's hook and prefetch keys, so that generated requests reach the
prefetch handling and the rule engine rather than stopping at 404/412.

Bounded and reproducible: a fixed seed, derandomized Hypothesis and a small number of examples
per operation keep the run to well under a minute.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
import yaml
from hypothesis import HealthCheck, settings
from support.live_server import live_server

from service.engine.catalogue import load_catalogue
from service.settings import Settings, bundled_knowledge_dirs

MAX_EXAMPLES = 30
SEED = 20_240_501

CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
)


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    data_dir: Path = tmp_path_factory.mktemp("schemathesis")
    settings = Settings(data_dir=data_dir, knowledge_dirs=bundled_knowledge_dirs(), auth_issuers={})
    with live_server(settings) as url:
        yield url


def _schema_ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def with_service_operations(
    contract: dict[str, Any], services: list[dict[str, Any]]
) -> dict[str, Any]:
    """The contract plus, for each service, `POST /cds-services/<id>` (and its feedback) with the
    body narrowed to what that service accepts. The served contract itself is not changed."""
    document = copy.deepcopy(contract)
    call = document["paths"]["/cds-services/{service_id}"]["post"]
    feedback = document["paths"]["/cds-services/{service_id}/feedback"]["post"]
    for service in services:
        operation = copy.deepcopy(call)
        operation["operationId"] = f"call-{service['id']}"
        operation.pop("parameters")
        prefetch_keys = sorted(service.get("prefetch", {}))
        value = {"oneOf": [_schema_ref("FhirResource"), {"type": "null"}]}
        narrowed: dict[str, Any] = {"properties": {"hook": {"const": service["hook"]}}}
        if prefetch_keys:
            narrowed["required"] = ["prefetch"]
            narrowed["properties"]["prefetch"] = {
                "type": "object",
                "required": prefetch_keys,
                "properties": dict.fromkeys(prefetch_keys, value),
            }
        content = operation["requestBody"]["content"]["application/json"]
        content["schema"] = {"allOf": [_schema_ref("CdsServiceRequest"), narrowed]}
        content["examples"] = {
            name: example
            for name, example in content.get("examples", {}).items()
            if _example(document, example)["hook"] == service["hook"]
        }
        if not content["examples"]:
            del content["examples"]
        document["paths"][f"/cds-services/{service['id']}"] = {"post": operation}

        answers = copy.deepcopy(feedback)
        answers["operationId"] = f"feedback-{service['id']}"
        answers.pop("parameters")
        document["paths"][f"/cds-services/{service['id']}/feedback"] = {"post": answers}
    return document


def _example(document: dict[str, Any], example: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in example:
        example = document["components"]["examples"][example["$ref"].rsplit("/", 1)[-1]]
    value: dict[str, Any] = example["value"]
    return value


CONTRACT: dict[str, Any] = yaml.safe_load(
    (Path(__file__).resolve().parents[1] / "openapi.yaml").read_text(encoding="utf-8")
)
# What discovery lists with the bundled knowledge; the live service is checked to agree.
SERVICES: list[dict[str, Any]] = load_catalogue(bundled_knowledge_dirs()).discovery()["services"]

CONFIG = schemathesis.Config.from_dict(
    {
        "seed": SEED,
        "request-timeout": 10,
        "generation": {"mode": "all", "max-examples": MAX_EXAMPLES, "deterministic": True},
        "phases": {"stateful": {"enabled": False}},
        "checks": {"enabled": False, **{name: {"enabled": True} for name in CHECKS}},
    }
)

# Loaded at import (collection) time, and the live service's base URL is given per call:
# `schemathesis.pytest.from_fixture` (4.32) fails under pytest 9, which no longer has the
# `Node._nodeid` attribute that loader rewrites.
schema = schemathesis.openapi.from_dict(with_service_operations(CONTRACT, SERVICES), config=CONFIG)


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    derandomize=True,
    database=None,
    deadline=5_000,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
def test_api_conforms_to_contract(case: schemathesis.Case, base_url: str) -> None:
    case.call_and_validate(base_url=base_url)


def test_live_discovery_is_what_was_fuzzed(base_url: str) -> None:
    live = httpx.get(f"{base_url}/cds-services", timeout=10).raise_for_status().json()
    assert live["services"] == SERVICES
