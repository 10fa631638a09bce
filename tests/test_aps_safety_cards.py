"""Card texts the APS safety scenarios (scenarios/rpl-aps-safety.json, issue 15) depend on beyond
their topic codes: thrombotic APS is told therapeutic (never prophylactic) anticoagulation, and
subclinical hypothyroidism is a conditional recommendation ('consider', with its strength)."""

from __future__ import annotations

from typing import Any

import pytest
from support.scenario_calls import BUNDLED_SPECS, ProfileApps

SPECS = BUNDLED_SPECS


async def _card(apps: ProfileApps, scenario: str, profile: str, topic: str) -> dict[str, Any]:
    return await apps.card(SPECS[scenario], profile, topic)


@pytest.mark.parametrize("profile", ["eshre", "asrm", "rcog"])
async def test_thrombotic_aps_in_pregnancy_is_therapeutic_lmwh_never_warfarin(
    apps: ProfileApps, profile: str
) -> None:
    card = await _card(
        apps, "aps-thrombotic-pregnant-prophylactic-enoxaparin", profile, "aps-thrombotic"
    )
    assert card["indicator"] == "warning"
    assert "therapeutic-dose LMWH with aspirin, never warfarin" in card["summary"]
    assert "prophylactic dose is not enough" in card["detail"]
    assert "thrombosis on record: I63.9" in card["detail"]
    assert [s["label"] for s in card.get("suggestions", [])] == []  # referral already active


async def test_thrombotic_aps_offers_the_haematology_referral(apps: ProfileApps) -> None:
    card = await _card(apps, "aps-thrombotic-dvt-not-pregnant", "eshre", "aps-thrombotic")
    assert "warfarin (target INR 2-3)" in card["detail"]
    assert [s["label"] for s in card["suggestions"]] == ["Refer to haematology"]
    created = card["suggestions"][0]["actions"][0]["resource"]
    assert created["code"]["coding"][0]["code"] == "306206005"


async def test_subclinical_hypothyroidism_is_a_conditional_consider(apps: ProfileApps) -> None:
    card = await _card(apps, "thyroid-subclinical-tpo-positive", "eshre", "thyroid-treatment")
    assert "consider levothyroxine (ESHRE: conditional)" in card["summary"]
    assert "start levothyroxine" not in card["summary"]
    assert "conditional recommendation" in card["detail"]


async def test_lupus_anticoagulant_on_anticoagulation_says_what_to_do(apps: ProfileApps) -> None:
    card = await _card(apps, "aps-la-negative-on-dabigatran", "asrm", "aps-la-uninterpretable")
    assert "Pradaxa" in card["detail"]
    assert "repeat lupus anticoagulant off anticoagulation" in card["detail"]
    assert "anti-beta-2-glycoprotein I" in card["detail"]


@pytest.mark.parametrize("profile", ["eshre", "asrm", "rcog"])
async def test_a_recorded_aps_diagnosis_is_treated_and_named_as_such(
    apps: ProfileApps, profile: str
) -> None:
    """Two losses and APS on record, no antibody results: the diagnosis stands for its criteria
    (aspirin and heparin in every profile), and the card does not claim laboratory criteria the
    record does not show."""
    card = await _card(apps, "aps-screen-aps-recorded", profile, "aps-treatment")
    assert card["detail"].startswith("**Why:** antiphospholipid syndrome recorded; 2 pregnancy")
    assert "laboratory criteria" not in card["detail"].split("**Evidence:**")[0]
