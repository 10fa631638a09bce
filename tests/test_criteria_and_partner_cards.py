"""Card texts and created orders of issue 15's completeness items beyond their topic codes
(scenarios/rpl-aps-preterm-and-partner.json): the aps-treatment card names the preterm-birth
criterion with its dates, and never from a birth of unknown gestation; the parental-karyotype
order is the patient's own, her partner's testing is advice; the male partner's genetic
counselling referral is for the couple and says why."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from datetime import UTC, date, datetime
from typing import Any

import pytest
from support.scenario_calls import ProfileApps, scenario_request, service_for_hook

from service.settings import data_root
from service.synthetic import ScenarioSpec, load_dialects, load_scenarios

SPECS = {spec.id: spec for spec in load_scenarios(data_root() / "scenarios")}
DIALECTS = load_dialects(data_root() / "scenarios")
PROFILES = ["eshre", "asrm", "rcog"]


@pytest.fixture(scope="module")
async def apps(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ProfileApps]:
    async with AsyncExitStack() as stack:
        yield ProfileApps(stack, tmp_path_factory)


def _today() -> date:
    return datetime.now(UTC).date()  # the service's today: relative dates count from it


async def _cards(apps: ProfileApps, spec: ScenarioSpec, profile: str) -> list[dict[str, Any]]:
    client, discovery = await apps.get(profile)
    service = service_for_hook(discovery, spec.hook)
    response = await client.post(
        f"/cds-services/{service['id']}", json=scenario_request(spec, service, _today())
    )
    assert response.status_code == 200, response.text
    cards: list[dict[str, Any]] = response.json()["cards"]
    return cards


async def _card(apps: ProfileApps, spec: ScenarioSpec, profile: str, topic: str) -> dict[str, Any]:
    cards = [c for c in await _cards(apps, spec, profile) if c["source"]["topic"]["code"] == topic]
    assert len(cards) == 1, [c["source"]["topic"]["code"] for c in cards]
    return cards[0]


def _created(card: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        action["resource"]
        for suggestion in card.get("suggestions", [])
        for action in suggestion["actions"]
        if action["type"] == "create"
    ]


@pytest.mark.parametrize("dialect", [None, "us", "intl"])
async def test_the_karyotype_order_is_the_patients_and_the_partners_is_advice(
    apps: ProfileApps, dialect: str | None
) -> None:
    spec = SPECS["rpl-three-losses"]
    if dialect:
        spec = spec.in_dialect(DIALECTS[dialect])
    card = await _card(apps, spec, "rcog", "parental-karyotype")
    [suggestion] = card["suggestions"]
    assert "patient's karyotype" in suggestion["label"]
    assert "and partner" not in suggestion["label"]
    [order] = _created(card)
    assert order["resourceType"] == "ServiceRequest"
    assert order["subject"] == {"reference": f"Patient/{spec.id}"}
    assert "partner" not in order["code"]["text"].lower()
    assert "Karyotype of the patient only" in order["note"][0]["text"]
    assert "her partner cannot be tested on her record" in card["detail"]
    assert "on his own record" in card["detail"]
    assert "grade D" in card["detail"]
