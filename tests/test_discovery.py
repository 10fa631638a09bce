"""GET /cds-services: one service per PlanDefinition trigger, in CDS Hooks 2.0 form."""

from __future__ import annotations

import re
from typing import Any

import httpx
from support.calls import assert_no_empty_fields

TOKENS_2_0 = {
    "context.patientId",
    "context.encounterId",
    "context.userId",
    "userPractitionerId",
    "userPractitionerRoleId",
    "userPatientId",
    "userRelatedPersonId",
}


async def test_discovery_lists_a_service_per_hook(client: httpx.AsyncClient) -> None:
    response = await client.get("/cds-services")
    assert response.status_code == 200
    services = {s["id"]: s for s in response.json()["services"]}
    assert {s["hook"] for s in services.values()} == {"patient-view", "order-select", "order-sign"}
    assert services["rpl-workup"]["hook"] == "patient-view"
    assert services["rpl-order-safety-order-sign"]["hook"] == "order-sign"
    for service in services.values():
        assert service["description"] and service["title"]
    assert_no_empty_fields(response.json())


async def test_prefetch_templates_use_only_2_0_tokens(client: httpx.AsyncClient) -> None:
    services = (await client.get("/cds-services")).json()["services"]
    workup = next(s for s in services if s["id"] == "rpl-workup")
    assert workup["prefetch"]["patient"] == "Patient/{{context.patientId}}"
    assert workup["prefetch"]["conditions"].startswith("Condition?patient={{context.patientId}}")
    for service in services:
        for template in service.get("prefetch", {}).values():
            assert set(re.findall(r"\{\{\s*(.*?)\s*\}\}", template)) <= TOKENS_2_0


async def test_discovery_reflects_extra_knowledge(make_client: Any, tmp_path: Any) -> None:
    import json

    extra = tmp_path / "site"
    extra.mkdir()
    (extra / "greeting.json").write_text(
        json.dumps(
            {
                "resourceType": "PlanDefinition",
                "id": "site-greeting",
                "status": "active",
                "description": "A site's own rule",
                "action": [
                    {
                        "title": "Hello",
                        "trigger": [{"type": "named-event", "name": "encounter-start"}],
                    }
                ],
            }
        )
    )
    async with make_client(extra_knowledge_dirs=[extra]) as client:
        services = (await client.get("/cds-services")).json()["services"]
    site = next(s for s in services if s["id"] == "site-greeting")
    assert site == {
        "hook": "encounter-start",
        "id": "site-greeting",
        "description": "A site's own rule",
    }
