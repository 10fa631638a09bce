"""A card's source: the knowledge says which citation belongs to which deployment (the
`cds-preferred-citation` condition on a `documentation` entry) and the engine puts the entries
whose condition holds first, so the card's `source` is the active profile's own guideline.

First the engine semantics on a hand-written plan (no clinical content), then the bundled
knowledge over the scenario corpus: under each guideline profile, every card that cites the
profile's guideline has it as its source, every card citing ESHRE states the ESHRE strength, and
the suggested medicines say how to dose them and when to stop.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from support.knowledge import fp, variable
from support.knowledge_problems import assert_reported
from support.scenario_calls import ProfileApps, scenario_request, service_for_hook

from service.authoring.synthetic import load_scenarios, profiles
from service.engine import PREFERRED_CITATION
from service.settings import data_root


def citation(display: str, condition: str | None = None, kind: str = "citation") -> dict[str, Any]:
    entry: dict[str, Any] = {
        "type": kind,
        "display": display,
        "url": f"https://example.org/{display}",
    }
    if condition is not None:
        entry["extension"] = [{"url": PREFERRED_CITATION, "valueExpression": fp(condition)}]
    return entry


PLAN = {
    "resourceType": "PlanDefinition",
    "id": "sources-demo",
    "url": "https://example.org/PlanDefinition/sources-demo",
    "status": "active",
    "description": "Sources in a profile's order",
    "library": ["https://example.org/Library/sources-demo"],
    "action": [
        {
            "id": "cites",
            "title": "Cites three sources",
            "trigger": [{"type": "named-event", "name": "patient-view"}],
            "extension": [variable("local", "%guideline = 'asrm'")],
            "documentation": [
                citation("trial"),
                citation("guideline-a", "%guideline = 'rcog'"),
                citation("guideline-b", "%local"),  # an action variable is in scope
                citation("broken", "%context.patientId.single().toInteger() > 0"),
            ],
        }
    ],
}


# The profile is knowledge: this plan reads it as %guideline, a parameter of its own Library.
LIBRARY = {
    "resourceType": "Library",
    "id": "sources-demo",
    "url": "https://example.org/Library/sources-demo",
    "status": "draft",
    "type": {
        "coding": [
            {
                "system": "http://terminology.hl7.org/CodeSystem/library-type",
                "code": "logic-library",
            }
        ]
    },
    "parameter": [
        {
            "name": "guideline",
            "use": "in",
            "type": "code",
            "extension": [
                {
                    "url": "http://hl7.org/fhir/StructureDefinition/cqf-defaultValue",
                    "valueCode": "eshre",
                }
            ],
        }
    ],
}


@pytest.fixture
def knowledge(tmp_path: Path) -> Path:
    directory = tmp_path / "sources"
    directory.mkdir()
    (directory / "plan.json").write_text(json.dumps(PLAN))
    (directory / "library.json").write_text(json.dumps(LIBRARY))
    return directory


@pytest.mark.parametrize(
    ("guideline", "order"),
    [
        ("rcog", ["guideline-a", "trial", "guideline-b", "broken"]),
        ("asrm", ["guideline-b", "trial", "guideline-a", "broken"]),
        # No condition holds: the order is the author's.
        ("eshre", ["trial", "guideline-a", "guideline-b", "broken"]),
    ],
)
async def test_the_entries_whose_condition_holds_come_first(
    make_client: Any, knowledge: Path, guideline: str, order: list[str]
) -> None:
    request = {
        "hook": "patient-view",
        "hookInstance": str(uuid.uuid4()),
        # Not a number: the last entry's condition fails at run time, and counts as false.
        "context": {"userId": "Practitioner/1", "patientId": "p-1"},
    }
    async with make_client(knowledge_dirs=[knowledge], guideline=guideline) as client:
        response = await client.post("/cds-services/sources-demo", json=request)
    assert response.status_code == 200, response.text
    (card,) = response.json()["cards"]
    assert card["source"]["label"] == order[0]
    assert [link["label"] for link in card["links"]] == order


def test_a_preferred_entry_must_be_a_citation_with_a_valid_condition(tmp_path: Path) -> None:
    plan = json.loads(json.dumps(PLAN))
    plan["action"][0]["documentation"] = [
        citation("not-a-citation", "%guideline = 'rcog'", kind="documentation"),
        citation("unknown-variable", "%nowhere"),
    ]
    assert_reported(
        tmp_path,
        {"plan.json": plan},
        [
            "documentation[0].type",
            "a preferred entry must be of type citation",
            "documentation[1].extension[0].valueExpression",
            "nowhere",
        ],
    )


# --- The bundled knowledge over the scenario corpus -------------------------------------------

SCENARIOS = load_scenarios(data_root() / "scenarios")
PROFILES = profiles()
# Each profile's own guideline, by the address its citations link to.
GUIDELINE_URLS = {
    "eshre": (
        "pmc.ncbi.nlm.nih.gov/articles/PMC9982362",
        "pmc.ncbi.nlm.nih.gov/articles/PMC6276652",
    ),
    "rcog": (
        "rcog.org.uk/guidance/browse-all-guidance/green-top-guidelines/the-investigation-and-treatment-of-couples-with-recurrent-miscarriage",
    ),
    "asrm": (
        "asrm.org/practice-guidance/practice-committee-documents/evaluation-and-treatment-of-recurrent-pregnancy-loss",
    ),
}
# ESHRE's grading: strong or conditional with the quality of the evidence, or a good practice point.
ESHRE_STRENGTH = re.compile(
    r"good practice point"
    r"|(strong|conditional)\b[^.]*?\b(very low|low|moderate|high)[- ]quality",
    re.IGNORECASE,
)
SENTENCE = re.compile(r"(?<=[.;])\s+(?=[A-Z*])|\n+")
# Cards citing ESHRE whose strength could not yet be checked against the guideline text: the
# search tool reached only two ESHRE 2017 recommendation tables (hoy004TB7, immunological testing;
# hoy004TB13, antithrombotic treatment) and the 2022 update's abstract, and a strength is never
# written from memory. Take a topic off when its strength is added (the test says when one is);
# a new card citing ESHRE must state its strength.
ESHRE_STRENGTH_UNVERIFIED = frozenset(
    {
        "aps-screen",
        "genetic-counselling",
        "hba1c-diabetes-range",
        "info-septum-resection",
        "parental-karyotype",
        "poc-genetics",
        "septum-resection-info",
        "thrombophilia-testing",
        "thyroid-screen",
        "thyroid-treatment",  # strong / conditional are stated, the evidence quality is not
        "uterine-imaging",
        "warn-antithrombotic-unexplained",
        "warn-bed-rest",
        "warn-glucocorticoid",
        "warn-hcg",
        "warn-ivig",
        "warn-lit",
        "warn-metformin",
        "warn-pgt-a",
        # supportive care for unexplained RPL: neither the 2022 update nor the 2017 table
        # reachable through the search tool states its strength
        "workup-complete",
    }
)


def cites(card: dict[str, Any], urls: tuple[str, ...]) -> bool:
    return any(any(url in link["url"] for url in urls) for link in card.get("links", []))


@pytest.fixture(scope="module")
async def cards_by_profile(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[dict[str, list[tuple[str, dict[str, Any]]]]]:
    """Every scenario (as written) under every profile: (scenario id, card) pairs per profile."""
    found: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    async with AsyncExitStack() as stack:
        apps = ProfileApps(stack, tmp_path_factory)
        today = datetime.now(UTC).date()
        for profile in PROFILES:
            client, discovery = await apps.get(profile)
            found[profile] = []
            for spec in SCENARIOS:
                service = service_for_hook(discovery, spec.hook)
                response = await client.post(
                    f"/cds-services/{service['id']}", json=scenario_request(spec, service, today)
                )
                assert response.status_code == 200, response.text
                found[profile].extend((spec.id, card) for card in response.json()["cards"])
        yield found


@pytest.mark.parametrize("profile", PROFILES)
def test_a_card_citing_the_profiles_guideline_has_it_as_source(
    profile: str, cards_by_profile: dict[str, list[tuple[str, dict[str, Any]]]]
) -> None:
    urls = GUIDELINE_URLS[profile]
    wrong = {
        card["source"]["topic"]["code"]: f"{card['source']['label']} (scenario {scenario})"
        for scenario, card in cards_by_profile[profile]
        if cites(card, urls) and not any(url in card["source"].get("url", "") for url in urls)
    }
    assert not wrong, f"under {profile}, cards citing its guideline with another source: {wrong}"


def test_every_card_citing_eshre_states_the_eshre_strength(
    cards_by_profile: dict[str, list[tuple[str, dict[str, Any]]]],
) -> None:
    missing: set[str] = set()
    stated: set[str] = set()
    for cards in cards_by_profile.values():
        for _, card in cards:
            if not cites(card, GUIDELINE_URLS["eshre"]):
                continue
            topic = card["source"]["topic"]["code"]
            # The strength belongs to the sentence that names ESHRE (another guideline's grade in
            # the same paragraph does not count).
            sentences = SENTENCE.split(card.get("detail", ""))
            ok = any(ESHRE_STRENGTH.search(s) for s in sentences if "ESHRE" in s)
            (stated if ok else missing).add(topic)
    assert not missing - ESHRE_STRENGTH_UNVERIFIED, (
        f"cards citing ESHRE without its strength: {sorted(missing - ESHRE_STRENGTH_UNVERIFIED)}"
    )
    assert not stated & ESHRE_STRENGTH_UNVERIFIED, (
        f"now stated, take them off ESHRE_STRENGTH_UNVERIFIED: {sorted(stated & ESHRE_STRENGTH_UNVERIFIED)}"
    )


def _created(card: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        action["resource"]
        for suggestion in card.get("suggestions", [])
        for action in suggestion.get("actions", [])
        if action.get("type") == "create"
    ]


def _dosage(resource: dict[str, Any]) -> str:
    return " ".join(d.get("text", "") for d in resource.get("dosageInstruction", []))


@pytest.mark.parametrize(
    ("topic", "product", "notes"),
    [
        # RCOG GTG 17: until 34 weeks; RCOG GTG 37a: dose by booking weight, 6 weeks postnatal.
        ("aps-treatment", "enoxaparin", ("34 weeks", "under 50 kg 20 mg", "at least 6 weeks")),
        ("aps-treatment", "aspirin", ("before conception", "34 weeks")),
        # ATA 2017: TSH every 4 weeks to mid-pregnancy, target below 2.5 mIU/L.
        ("thyroid-treatment", "levothyroxine", ("every 4 weeks", "2.5 mIU/L")),
        ("progesterone-bleeding", "progesterone", ("16 completed weeks", "four 100 mg units")),
    ],
)
def test_a_suggested_medicine_says_when_to_stop_and_how_to_dose(
    cards_by_profile: dict[str, list[tuple[str, dict[str, Any]]]],
    topic: str,
    product: str,
    notes: tuple[str, ...],
) -> None:
    dosages = [
        _dosage(resource)
        for cards in cards_by_profile.values()
        for _, card in cards
        if card["source"]["topic"]["code"] == topic
        for resource in _created(card)
        if product in json.dumps(resource.get("medicationCodeableConcept", {})).lower()
    ]
    assert dosages, f"no scenario gets a {topic} card suggesting {product}"
    for dosage in dosages:
        assert all(note in dosage for note in notes), dosage


def test_the_pregnant_aps_card_gives_the_heparin_dose_and_the_stop_dates(
    cards_by_profile: dict[str, list[tuple[str, dict[str, Any]]]],
) -> None:
    details = [
        card.get("detail", "")
        for cards in cards_by_profile.values()
        for _, card in cards
        if card["source"]["topic"]["code"] == "aps-treatment"
        and any("enoxaparin" in json.dumps(r).lower() for r in _created(card))
    ]
    assert details
    for detail in details:
        assert "booking weight" in detail and "until 34 weeks" in detail, detail
        assert "at least 6 weeks" in detail, detail
