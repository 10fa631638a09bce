"""Clinical scenarios: every described patient (`scenarios/*.json`, format in `service.authoring.synthetic`)
gets exactly the expected card topics, for each guideline profile its `expect` lists, from the
service of its hook, called as an EHR that honours the prefetch templates would call it; and so
does the same patient written in each dialect of `scenarios/dialects.json` (a US record, an
international one), except the scenarios written in one dialect on purpose (`"dialects": false`).
A dialect variant with other cards than the original is a table error or a knowledge gap."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from support.scenario_calls import ProfileApps, scenario_request, service_for_hook

from service.authoring.synthetic import ScenarioSpec, load_dialects, load_scenarios
from service.settings import data_root

SCENARIOS = load_scenarios(data_root() / "scenarios")
DIALECTS = load_dialects(data_root() / "scenarios")
VARIANTS = [
    *SCENARIOS,
    *(
        spec.in_dialect(dialect)
        for dialect in DIALECTS.values()
        for spec in SCENARIOS
        if spec.rewritable
    ),
]
CASES = [
    pytest.param(
        spec,
        profile,
        id=f"{spec.id}[{profile}{'/' + spec.dialect if spec.dialect else ''}]",
    )
    for spec in VARIANTS
    for profile in spec.expect
]
RECOMMENDATIONS = data_root() / "mappings" / "CodeSystem-rpl-recommendation.json"


@pytest.mark.parametrize(("spec", "profile"), CASES)
async def test_scenario_gets_the_expected_cards(
    spec: ScenarioSpec, profile: str, apps: ProfileApps
) -> None:
    client, discovery = await apps.get(profile)
    service = service_for_hook(discovery, spec.hook)
    today = datetime.now(UTC).date()  # the service's today: relative dates count from it
    body = scenario_request(spec, service, today)
    response = await client.post(f"/cds-services/{service['id']}", json=body)
    assert response.status_code == 200, response.text
    cards = response.json()["cards"]
    actual = {card["source"]["topic"]["code"] for card in cards}
    expected = set(spec.expect[profile])
    assert actual == expected, _explain(spec, profile, service["id"], actual, expected, cards)


def _explain(
    spec: ScenarioSpec,
    profile: str,
    service_id: str,
    actual: set[str],
    expected: set[str],
    cards: list[dict[str, Any]],
) -> str:
    summaries = "\n".join(
        f"    {card['source']['topic']['code']}: {card.get('summary')}" for card in cards
    )
    dialect = (
        f"written as a {spec.dialect} record (scenarios/dialects.json; kept for want of an "
        f"equivalent: {list(spec.kept) or 'nothing'})\n"
        if spec.dialect
        else ""
    )
    return (
        f"\n{spec.id} ({spec.hook} -> {service_id}, profile {profile}): {spec.description}\n"
        f"  {dialect}"
        f"  expected: {sorted(expected)}\n"
        f"  actual:   {sorted(actual)}\n"
        f"  missing:  {sorted(expected - actual)}; unexpected: {sorted(actual - expected)}\n"
        f"  cards:\n{summaries or '    (none)'}"
    )


def _concept_codes(concepts: list[dict[str, Any]]) -> list[str]:
    codes = []
    for concept in concepts:
        codes.append(concept["code"])
        codes.extend(_concept_codes(concept.get("concept", [])))
    return codes


def test_every_recommendation_is_shown_and_withheld_by_some_scenario() -> None:
    """Each topic code is expected by at least one scenario (some profile) and, for the same
    hook, not expected by at least one other scenario (some profile it lists)."""
    codes = _concept_codes(json.loads(RECOMMENDATIONS.read_text(encoding="utf-8"))["concept"])
    never_shown = []
    never_withheld = []
    for code in codes:
        showing = [s for s in SCENARIOS if any(code in t for t in s.expect.values())]
        if not showing:
            never_shown.append(code)
            continue
        withholding = [
            other
            for spec in showing
            for other in SCENARIOS
            if other.id != spec.id
            and other.hook == spec.hook
            and any(code not in topics for topics in other.expect.values())
        ]
        if not withholding:
            never_withheld.append(code)
    assert not never_shown and not never_withheld, (
        f"no scenario expects: {never_shown}\n"
        f"no other scenario of the same hook leaves out: {never_withheld}"
    )
