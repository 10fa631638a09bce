"""Card texts the scenarios of scenarios/rpl-unexplained-cervix-lifestyle.json (issue 15) depend on
beyond their topic codes: the lifestyle card names what the record shows (BMI with its unit and
date, smoking status, age) or what to record, and never reads a BMI without a usable unit; the
cervical card names a recorded cervical insufficiency; the unexplained-RPL card gives the
prognosis with its source."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

import pytest
from support.scenario_calls import BUNDLED_SPECS, ProfileApps

from service.dates import add_months

SPECS = BUNDLED_SPECS


async def _card(apps: ProfileApps, scenario: str, profile: str, topic: str) -> dict[str, Any]:
    return await apps.card(SPECS[scenario], profile, topic)


def _today() -> date:
    return datetime.now(UTC).date()


@pytest.mark.parametrize("profile", ["eshre", "asrm"])
async def test_lifestyle_names_bmi_smoking_and_age(apps: ProfileApps, profile: str) -> None:
    card = await _card(apps, "lifestyle-bmi-smoker-age", profile, "lifestyle-support")
    measured = add_months(_today(), -2).isoformat()  # the scenario's today-2mo
    assert f"BMI 32.4 kg/m² on {measured}: above 25, advise weight loss" in card["detail"]
    assert "current smoker (recorded " in card["detail"]
    assert "offer smoking cessation support" in card["detail"]
    assert "age 41: the risk of a further loss rises with age" in card["detail"]
    assert "(BMI 32.4, current smoker, age 41)" in card["summary"]


async def test_lifestyle_says_what_to_record_when_nothing_is(apps: ProfileApps) -> None:
    card = await _card(apps, "lifestyle-nothing-recorded", "eshre", "lifestyle-support")
    assert "no BMI recorded: record height, weight and BMI" in card["detail"]
    assert "no smoking status recorded: ask and record it" in card["detail"]
    assert "no full date of birth recorded" in card["detail"]
    assert card["summary"] == "Recurrent pregnancy loss: offer lifestyle advice and supportive care"


async def test_lifestyle_never_reads_a_bmi_without_its_unit(apps: ProfileApps) -> None:
    card = await _card(
        apps, "lifestyle-bmi-unit-unusable-former-smoker", "asrm", "lifestyle-support"
    )
    assert "has no usable unit: not interpreted" in card["detail"]
    assert "BMI 31" not in card["detail"] and "advise weight loss" not in card["detail"]
    assert "does not smoke (recorded " in card["detail"]
    assert "offer smoking cessation support" not in card["detail"]
    assert "age 29" in card["detail"] and "rises with age" not in card["detail"]


async def test_cervical_card_names_the_recorded_insufficiency(apps: ProfileApps) -> None:
    card = await _card(apps, "cervix-insufficiency-recorded", "rcog", "cervical-insufficiency")
    assert card["summary"].startswith("Cervical insufficiency and a second-trimester loss")
    assert "Cervical insufficiency is recorded: N88.3" in card["detail"]
    assert "serial transvaginal ultrasound of the cervical length" in card["detail"]
    assert "(grade B)" in card["detail"]
    assert "green-top-guideline-no-17" in card["source"]["url"]  # the profile's guideline
    assert "https://doi.org/10.1111/1471-0528.17003" in [link["url"] for link in card["links"]]


async def test_cervical_card_without_a_recorded_insufficiency(apps: ProfileApps) -> None:
    card = await _card(apps, "cervix-second-trimester-loss", "rcog", "cervical-insufficiency")
    assert card["summary"].startswith("Second-trimester loss: cervical length surveillance")
    assert "Cervical insufficiency is recorded" not in card["detail"]


@pytest.mark.parametrize("profile", ["eshre", "asrm", "rcog"])
async def test_unexplained_rpl_card_gives_the_findings_and_prognosis(
    apps: ProfileApps, profile: str
) -> None:
    card = await _card(apps, "unexplained-workup-complete", profile, "workup-complete")
    assert f"Every investigation the {profile.upper()} profile recommends" in card["detail"]
    assert "TSH 1.8 mIU/L" in card["detail"]
    assert ("parental karyotype normal" in card["detail"]) == (profile == "rcog")
    assert "26% miscarried in the next pregnancy, against 51%" in card["detail"]
    assert "early pregnancy unit" in card["detail"]
    assert "she is 36" in card["detail"]
