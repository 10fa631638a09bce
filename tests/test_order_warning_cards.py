"""Card texts of the order warnings for add-ons without evidence (scenarios/rpl-order-warnings.json,
issue 15) beyond their topic codes: each names the draft order, why it is flagged from this
record, what to do instead, and the evidence, with the guideline as its source."""

from __future__ import annotations

import pytest
from support.scenario_calls import BUNDLED_SPECS, ProfileApps

SPECS = BUNDLED_SPECS


@pytest.mark.parametrize("profile", ["eshre", "asrm", "rcog"])
async def test_antithrombotic_warning_names_the_order_and_what_is_missing(
    apps: ProfileApps, profile: str
) -> None:
    spec = SPECS["ow-enoxaparin-text-three-losses"]
    card = await apps.card(spec, profile, "warn-antithrombotic-unexplained")
    assert card["indicator"] == "warning"
    detail = card["detail"]
    assert "no antiphospholipid syndrome and no persistent antiphospholipid antibodies" in detail
    assert "test them first" in detail  # the aPL panel, before treating
    assert "ALIFE" in detail


async def test_antithrombotic_warning_stands_when_the_la_was_taken_on_anticoagulation(
    apps: ProfileApps,
) -> None:
    # The only positive antibody is a lupus anticoagulant measured on enoxaparin: not APS.
    spec = SPECS["ow-aspirin-la-positive-on-anticoagulation"]
    card = await apps.card(spec, "eshre", "warn-antithrombotic-unexplained")
    assert "Aspirin 81 mg once daily" in card["summary"]


async def test_pgt_a_warning_points_carriers_to_pgt_sr(apps: ProfileApps) -> None:
    card = await apps.card(SPECS["ow-pgta-text-two-losses"], "eshre", "warn-pgt-a")
    assert "PGT-A is not recommended for unexplained recurrent pregnancy loss" in card["summary"]
    assert "PGT-SR, with genetic counselling" in card["detail"]


@pytest.mark.parametrize("profile", ["eshre", "asrm", "rcog"])
async def test_metformin_warning_claims_no_more_than_the_evidence(
    apps: ProfileApps, profile: str
) -> None:
    card = await apps.card(SPECS["ow-metformin-rxnorm-three-losses"], profile, "warn-metformin")
    assert card["summary"].startswith("Metformin has not been shown to prevent miscarriage")
    assert "No diabetes is on record (no HbA1c on record)" in card["detail"]
    assert "insufficient evidence to recommend metformin" in card["detail"]
    assert "polycystic ovary syndrome" in card["detail"]
