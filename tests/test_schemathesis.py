"""Property-based conformance: schemathesis generates requests from the contract the service
serves (`openapi.yaml` plus one operation per service of the bundled knowledge, as
`service/cdshooks/contract.py` builds it; valid requests and invalid ones, with non-ASCII and
control characters in strings) and sends them to the real service on a real socket. Every check
schemathesis has runs: documented statuses, content types, headers and bodies, never a 5xx,
schema-valid requests accepted and schema-violating ones refused.

Two rules no JSON Schema can state are handled as tests/support/contract_fuzz.py says: whether the
`fhirServer` a call names is usable is the deployment's choice, and `selections` must name
entries of `draftOrders`. The service runs with the default FHIR host list (loopback only), so no
generated `fhirServer` makes it connect anywhere else.

Bounded and reproducible: a fixed seed, derandomized Hypothesis and a small number of examples
per operation keep the run to about a minute.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import schemathesis
import yaml
from hypothesis import HealthCheck, settings
from support.contract_fuzz import CHECKS_CONFIG, with_order_selections
from support.live_server import live_server

from service.cdshooks.catalogue import load_catalogue
from service.cdshooks.contract import served_contract
from service.settings import LOOPBACK_HOSTS, Settings, bundled_knowledge_dirs

if TYPE_CHECKING:
    # Defined for type checkers only (schemathesis has no run-time name for an OpenAPI case).
    from schemathesis.specs.openapi.schemas import OpenApiCase

MAX_EXAMPLES = 30
SEED = 20_240_501


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    data_dir: Path = tmp_path_factory.mktemp("schemathesis")
    settings = Settings(data_dir=data_dir, knowledge_dirs=bundled_knowledge_dirs(), auth_issuers={})
    assert tuple(settings.fhir_allowed_hosts) == LOOPBACK_HOSTS
    with live_server(settings) as url:
        yield url


CONTRACT: dict[str, Any] = yaml.safe_load(
    (Path(__file__).resolve().parents[1] / "openapi.yaml").read_text(encoding="utf-8")
)
# What discovery lists with the bundled knowledge; the live service is checked to agree.
SERVICES: list[dict[str, Any]] = load_catalogue(bundled_knowledge_dirs()).discovery()["services"]
SERVED = served_contract(CONTRACT, SERVICES)

CONFIG = schemathesis.Config.from_dict(
    {
        "seed": SEED,
        "request-timeout": 10,
        "generation": {
            "mode": "all",
            "max-examples": MAX_EXAMPLES,
            "deterministic": True,
            "allow-x00": True,
            "codec": "utf-8",
        },
        "phases": {"stateful": {"enabled": False}},
        "checks": CHECKS_CONFIG,
    }
)

# Loaded at import (collection) time, and the live service's base URL is given per call:
# `schemathesis.pytest.from_fixture` (4.32) fails under pytest 9, which no longer has the
# `Node._nodeid` attribute that loader rewrites.
schema = schemathesis.openapi.from_dict(with_order_selections(SERVED), config=CONFIG)


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    derandomize=True,
    database=None,
    deadline=5_000,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
def test_api_conforms_to_contract(case: OpenApiCase, base_url: str) -> None:
    case.call_and_validate(base_url=base_url)


def test_live_contract_is_what_was_fuzzed(base_url: str) -> None:
    live = httpx.get(f"{base_url}/cds-services", timeout=10).raise_for_status().json()
    assert live["services"] == SERVICES
    served = httpx.get(f"{base_url}/openapi.json", timeout=10).raise_for_status().json()
    assert served == SERVED
