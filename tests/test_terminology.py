"""Terminology: ValueSet expansion and membership, ConceptMap translation, and `inValueSet`
(service/engine/terminology.py), exercised through real FHIRPath where an author would use it."""

from __future__ import annotations

from typing import Any

import pytest
from fhir.resources.R4B import get_fhir_model_class
from support.engine_fixtures import (
    CS_TOPICS,
    EX,
    LOCAL,
    LOINC,
    RESOURCES,
    SNOMED,
    TERMINOLOGY,
    VS_CYCLE_A,
    VS_CYCLE_B,
    VS_EXCLUDING,
    VS_EXPANDED,
    VS_FILTER,
    VS_FRAGMENT,
    VS_LAB,
    VS_MIXED,
    VS_PARENT,
    VS_PARTIAL,
    VS_VERSIONED,
    VS_WHOLE,
    coding,
    concept,
    include,
    observation,
    run,
    value_set,
)

from service.engine.terminology import TEXT_PATTERN_EXTENSION, Terminology

# The test data is valid FHIR


@pytest.mark.parametrize("resource", RESOURCES, ids=lambda r: r["url"].rsplit("/", 1)[-1])
def test_fixture_resources_are_valid_r4b(resource: dict[str, Any]) -> None:
    get_fhir_model_class(resource["resourceType"]).model_validate(resource)


# Terminology: ValueSet membership


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (VS_LAB, {(LOINC, "4548-4"), (LOINC, "17856-6")}),
        (VS_PARENT, {(SNOMED, "1000"), (LOINC, "4548-4"), (LOINC, "17856-6")}),
        (VS_EXCLUDING, {(SNOMED, "1000"), (LOINC, "4548-4")}),
        (VS_VERSIONED, {(SNOMED, "2000")}),
        (f"{VS_VERSIONED}|2", {(SNOMED, "2000")}),
        (VS_EXPANDED, {(SNOMED, "3001"), (SNOMED, "3002")}),
        (VS_WHOLE, {(CS_TOPICS, "t1"), (CS_TOPICS, "t1.1"), (CS_TOPICS, "t2")}),
    ],
)
def test_value_set_expansions(url: str, expected: set[tuple[str, str]]) -> None:
    assert TERMINOLOGY.members(url) == frozenset(expected)
    assert TERMINOLOGY.knows(url)


@pytest.mark.parametrize(
    "url",
    [VS_FILTER, VS_CYCLE_A, VS_CYCLE_B, VS_PARTIAL, VS_FRAGMENT, f"{VS_VERSIONED}|1", f"{EX}/x"],
)
def test_unexpandable_or_unknown_value_sets_have_no_members(url: str) -> None:
    assert TERMINOLOGY.members(url) is None
    assert not TERMINOLOGY.knows(url)
    with pytest.raises(LookupError):
        TERMINOLOGY.in_value_set([(SNOMED, "1000")], url)


def test_terminology_problems_name_the_canonical_and_the_reason() -> None:
    problems = dict(TERMINOLOGY.problems())
    assert "filter" in problems[VS_FILTER]
    assert "cycle" in problems[VS_CYCLE_A]
    assert "cycle" in problems[VS_CYCLE_B]
    assert "partial" in problems[VS_PARTIAL]
    assert "'fragment', not 'complete'" in problems[VS_FRAGMENT]
    assert "dependsOn" in problems[f"{EX}/ConceptMap/local-lab"]
    assert len(TERMINOLOGY.problems()) == 6


def test_value_set_problems_for_missing_references() -> None:
    terminology = Terminology.from_resources(
        {
            f"{EX}/a": value_set(f"{EX}/a", compose={"include": [{"valueSet": [f"{EX}/b"]}]}),
            f"{EX}/c": value_set(f"{EX}/c", compose={"include": [{"system": "urn:not-loaded"}]}),
            f"{EX}/d": value_set(f"{EX}/d"),
            f"{EX}/e": value_set(f"{EX}/e", compose={"include": [{"valueSet": [f"{EX}/a"]}]}),
        }
    )
    problems = dict(terminology.problems())
    assert f"{EX}/b is not loaded" in problems[f"{EX}/a"]
    assert "urn:not-loaded" in problems[f"{EX}/c"]
    assert "neither" in problems[f"{EX}/d"]
    assert f"{EX}/a" in problems[f"{EX}/e"]  # depends on an unexpandable one


def test_include_with_system_and_value_set_is_their_intersection() -> None:
    terminology = Terminology.from_resources(
        {
            VS_LAB: RESOURCES[0],
            f"{EX}/i": value_set(
                f"{EX}/i",
                compose={"include": [{**include(LOINC, "4548-4", "999-9"), "valueSet": [VS_LAB]}]},
            ),
        }
    )
    assert terminology.members(f"{EX}/i") == frozenset({(LOINC, "4548-4")})


@pytest.mark.parametrize(
    ("code", "translated"),
    [
        ("HBA1C", True),  # equivalent
        ("HBA1C-HPLC", True),  # wider: the local code is a kind of the target
        ("HBA1C-SUB", True),  # subsumes
        ("HBA1C-EQ", True),  # equal
        ("R5-NARROW", True),  # R5 source-is-narrower-than-target
        ("GLYC", False),  # narrower: the local code may mean more than the target
        ("GLYC-REL", False),
        ("GLYC-INEXACT", False),
        ("GLYC-NO", False),
        ("R5-BROAD", False),
        ("COND", False),  # conditional mapping: reported, not applied
        ("UNMAPPED", False),
    ],
)
def test_concept_map_translation_of_local_codes(code: str, translated: bool) -> None:
    assert bool(TERMINOLOGY.translate(LOCAL, code)) is translated
    obs = observation(code=concept(coding(LOCAL, code)))
    assert run(f"Observation.code.inValueSet('{VS_LAB}')", obs) == [translated]
    assert TERMINOLOGY.in_value_set([(LOCAL, code)], VS_LAB) is translated


def test_translation_reaches_value_sets_that_include_the_target() -> None:
    obs = observation(code=concept(coding(LOCAL, "HBA1C")))
    assert run(f"Observation.code.inValueSet('{VS_PARENT}')", obs) == [True]
    # HBA1C-EQ maps to 17856-6, which VS_EXCLUDING excludes.
    obs = observation(code=concept(coding(LOCAL, "HBA1C-EQ")))
    assert run(f"Observation.code.inValueSet('{VS_EXCLUDING}')", obs) == [False]


@pytest.mark.parametrize(
    ("url", "code", "expected"),
    [
        (VS_LAB, coding(LOINC, "4548-4"), True),
        (VS_LAB, coding(LOINC, "0000-0"), False),
        (VS_LAB, coding(SNOMED, "4548-4"), False),  # the system matters
        (VS_PARENT, coding(SNOMED, "1000"), True),  # own concept
        (VS_PARENT, coding(LOINC, "17856-6"), True),  # through the nested ValueSet
        (VS_EXCLUDING, coding(LOINC, "4548-4"), True),
        (VS_EXCLUDING, coding(LOINC, "17856-6"), False),  # excluded
        (f"{VS_VERSIONED}|2", coding(SNOMED, "2000"), True),
        (VS_VERSIONED, coding(SNOMED, "2000"), True),
        (VS_EXPANDED, coding(SNOMED, "3001"), True),
        (VS_EXPANDED, coding(SNOMED, "3000"), False),  # abstract header, not a member
        (VS_WHOLE, coding(CS_TOPICS, "t1.1"), True),
    ],
)
def test_in_value_set_with_codings(url: str, code: dict[str, str], expected: bool) -> None:
    obs = observation(code=concept(code))
    assert run(f"Observation.code.inValueSet('{url}')", obs) == [expected]
    assert run(f"Observation.code.coding.inValueSet('{url}')", obs) == [expected]


def test_codeable_concept_with_several_codings() -> None:
    several = concept(coding(SNOMED, "9999"), coding(LOCAL, "HBA1C"), coding(LOINC, "0000-0"))
    assert run(f"%c.inValueSet('{VS_LAB}')", c=several) == [True]
    none = concept(coding(SNOMED, "9999"), coding(LOINC, "0000-0"))
    assert run(f"%c.inValueSet('{VS_LAB}')", c=none) == [False]


def test_undecidable_items_give_empty_unless_a_member_is_found() -> None:
    no_system = {"code": "4548-4"}
    assert run(f"%c.inValueSet('{VS_LAB}')", c=concept(no_system)) == []
    assert run(f"%c.inValueSet('{VS_LAB}')", c=concept(coding(LOINC, "0"), no_system)) == []
    assert run(f"%c.inValueSet('{VS_LAB}')", c=concept(coding(LOINC, "4548-4"), no_system)) == [
        True
    ]
    assert run(f"%c.inValueSet('{VS_LAB}')", c={"text": "HbA1c"}) == []
    assert run(f"%c.inValueSet('{VS_LAB}')", c=[{"text": "x"}, concept(coding(LOINC, "0"))]) == []


def test_several_input_items_are_a_member_when_any_is() -> None:
    conditions = [
        {"resourceType": "Condition", "code": concept(coding(SNOMED, "9"))},
        {"resourceType": "Condition", "code": concept(coding(SNOMED, "1000"))},
    ]
    assert run(f"%Condition.code.inValueSet('{VS_PARENT}')", Condition=conditions) == [True]
    assert run(
        f"%Condition.where(code.inValueSet('{VS_PARENT}')).count()", Condition=conditions
    ) == [1]
    assert run(f"%Condition.code.inValueSet('{VS_LAB}')", Condition=conditions) == [False]


def test_bare_codes_need_a_single_system_value_set() -> None:
    assert run(f"'4548-4'.inValueSet('{VS_LAB}')") == [True]
    assert run(f"'0000-0'.inValueSet('{VS_LAB}')") == [False]
    assert run(f"'1000'.inValueSet('{VS_MIXED}')") == []  # two systems: undecidable (memberOf)
    obs = observation(code=concept(coding(LOINC, "17856-6")))
    assert run(f"Observation.code.coding.code.inValueSet('{VS_LAB}')", obs) == [True]


def test_in_value_set_on_a_resource_is_an_authoring_error() -> None:
    with pytest.raises(Exception, match="Condition resource"):
        run(f"%c.inValueSet('{VS_LAB}')", c={"resourceType": "Condition"})


def test_in_value_set_with_an_unknown_computed_url_raises() -> None:
    with pytest.raises(Exception, match="not loaded"):
        run("'x'.inValueSet(%url)", url=f"{EX}/ValueSet/not-loaded")
    with pytest.raises(Exception, match="not loaded"):
        run(f"'x'.inValueSet('{VS_FILTER}')")  # loaded but not expandable


def test_terminology_from_resources_and_empty() -> None:
    assert Terminology.empty().members(VS_LAB) is None
    assert Terminology.empty().problems() == []
    assert TERMINOLOGY.value_set_urls() >= {VS_LAB, VS_VERSIONED, f"{VS_VERSIONED}|2"}
    assert TERMINOLOGY.translate(LOCAL, "HBA1C") == ((LOINC, "4548-4"),)


def test_text_verdicts_are_remembered_within_a_bound() -> None:
    terminology = Terminology.from_resources(
        {
            "urn:vs:heparin": {
                "resourceType": "ValueSet",
                "url": "urn:vs:heparin",
                "status": "active",
                "extension": [
                    {
                        "url": TEXT_PATTERN_EXTENSION,
                        "valueString": "heparin",
                    }
                ],
                "compose": {"include": [{"system": "urn:s", "concept": [{"code": "h"}]}]},
            }
        }
    )
    assert terminology.text_matches("urn:vs:heparin", ["Heparin 5000 units"])
    assert not terminology.text_matches("urn:vs:heparin", ["Aspirin"])
    # Asked again, the same verdicts (now remembered); many texts never grow the memory past
    # its bound.
    assert terminology.text_matches("urn:vs:heparin", ["Heparin 5000 units"])
    assert not terminology.text_matches("urn:vs:heparin", ["Aspirin"])
    for n in range(25_000):
        terminology.text_matches("urn:vs:heparin", [f"medicine {n}"])
    assert len(terminology._text_verdicts) <= 20_000
    assert terminology.text_matches("urn:vs:heparin", ["low molecular weight heparin"])
