"""Card texts and created orders of issue 15's completeness items beyond their topic codes
(scenarios/rpl-aps-preterm-and-partner.json): the aps-treatment card names the preterm-birth
criterion with its dates, and never from a birth of unknown gestation; the parental-karyotype
order is the patient's own, her partner's testing is advice; the male partner's genetic
counselling referral is for the couple and says why."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from support.scenario_calls import BUNDLED_SPECS, ProfileApps, scenario_request, service_for_hook

from service.authoring.synthetic import ScenarioSpec, load_dialects, profiles
from service.dates import add_months
from service.settings import data_root

SPECS = BUNDLED_SPECS
DIALECTS = load_dialects(data_root() / "scenarios")
PROFILES = profiles()


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
@pytest.mark.parametrize("profile", PROFILES)
async def test_aps_treatment_names_the_preterm_birth_criterion_with_its_dates(
    apps: ProfileApps, profile: str, dialect: str | None
) -> None:
    spec = SPECS["aps-preterm-preeclampsia-two-losses"]
    if dialect:
        spec = spec.in_dialect(DIALECTS[dialect])
    card = await _card(apps, spec, profile, "aps-treatment")
    birth = (_today() - timedelta(days=365)).isoformat()
    disorder = (_today() - timedelta(days=369)).isoformat()
    assert (
        f"obstetric clinical criterion met: birth before 34 weeks on {birth} for severe "
        f"pre-eclampsia, eclampsia or placental insufficiency (recorded on {disorder})"
    ) in card["detail"]
    assert "Miyakis 2006" in card["detail"] and "ACR/EULAR" in card["detail"]
    assert "conditional, very low quality evidence" in card["detail"]


async def test_a_birth_of_unknown_gestation_is_no_obstetric_criterion(apps: ProfileApps) -> None:
    """ASRM treats her for RPL, but the card must not claim the preterm-birth criterion."""
    spec = SPECS["aps-preterm-no-gestational-age"]
    card = await _card(apps, spec, "asrm", "aps-treatment")
    assert "obstetric clinical criterion" not in card["detail"]
    topics = {c["source"]["topic"]["code"] for c in await _cards(apps, spec, "eshre")}
    assert "aps-research-only" in topics and "aps-treatment" not in topics


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


@pytest.mark.parametrize("dialect", [None, "us", "intl"])
@pytest.mark.parametrize("profile", PROFILES)
async def test_the_male_carrier_is_referred_with_his_partner(
    apps: ProfileApps, profile: str, dialect: str | None
) -> None:
    spec = SPECS["partner-balanced-translocation-karyotype"]
    if dialect:
        spec = spec.in_dialect(DIALECTS[dialect])
    cards = await _cards(apps, spec, profile)
    assert [c["source"]["topic"]["code"] for c in cards] == ["genetic-counselling"]
    [card] = cards
    assert "couple" in card["summary"]
    karyotype = f"karyotype 46,XY,t(11;22)(q23;q11.2) on {_months_ago(6)}"
    assert karyotype in card["detail"]
    assert "refer the couple (the patient and his partner)" in card["detail"]
    assert "PGT-SR" in card["detail"] and "prenatal diagnosis" in card["detail"]
    [referral] = _created(card)
    assert referral["subject"] == {"reference": f"Patient/{spec.id}"}
    assert referral["code"]["coding"][0]["code"] == "79841006"
    assert referral["note"][0]["text"].startswith("Genetic counselling for the couple")
    assert karyotype in referral["note"][0]["text"]


async def test_the_male_carrier_diagnosis_is_named_in_both_dialects(apps: ProfileApps) -> None:
    spec = SPECS["partner-balanced-translocation-diagnosis"]
    for dialect in (None, "us", "intl"):
        variant = spec.in_dialect(DIALECTS[dialect]) if dialect else spec
        card = await _card(apps, variant, "eshre", "genetic-counselling")
        assert f"carrier diagnosis Q95.0 recorded on {_months_ago(6)}" in card["detail"]


def _months_ago(months: int) -> str:
    return add_months(_today(), -months).isoformat()
