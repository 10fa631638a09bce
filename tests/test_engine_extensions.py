"""Three engine features the RPL knowledge needed: ValueSets that match order text, retrieve-only
data requirements (many code groups read from one prefetch query), and unit tables from two
knowledge sets that state the same conversion."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from service.cdshooks.catalogue import RETRIEVE_ONLY_EXTENSION, load_catalogue
from service.engine.fhirpath import compile_expression
from service.engine.fhirpath.functions import engine_functions
from service.engine.problems import KnowledgeError
from service.engine.terminology import TEXT_PATTERN_EXTENSION, Terminology
from service.engine.units import UnitTable

EX = "https://example.org"
RX = "http://www.nlm.nih.gov/research/umls/rxnorm"
VS_STEROID = f"{EX}/ValueSet/steroid"
VS_TEXT_ONLY = f"{EX}/ValueSet/text-only"


def text_patterns(*patterns: str) -> list[dict[str, str]]:
    return [{"url": TEXT_PATTERN_EXTENSION, "valueString": p} for p in patterns]


TERMINOLOGY = Terminology.from_resources(
    {
        VS_STEROID: {
            "resourceType": "ValueSet",
            "url": VS_STEROID,
            "extension": text_patterns(r"predniso(lo)?ne"),
            "compose": {"include": [{"system": RX, "concept": [{"code": "8638"}]}]},
        },
        VS_TEXT_ONLY: {
            "resourceType": "ValueSet",
            "url": VS_TEXT_ONLY,
            "extension": text_patterns(r"paternal lymphocyte", r"\blit\b"),
        },
    }
)
FUNCTIONS = engine_functions(TERMINOLOGY, UnitTable.from_documents([]))


def member(concept: dict[str, Any], url: str) -> list[Any]:
    compiled = compile_expression(f"code.inValueSet('{url}')", FUNCTIONS)
    return list(compiled({"resourceType": "ServiceRequest", "code": concept}, {}))


@pytest.mark.parametrize(
    ("concept", "url", "expected"),
    [
        ({"coding": [{"system": RX, "code": "8638"}]}, VS_STEROID, True),  # by code
        ({"text": "Prednisolone 5 mg tablets"}, VS_STEROID, True),  # text only, case-insensitive
        # Coded with a product code the ValueSet does not list: the display still says what it is.
        (
            {"coding": [{"system": RX, "code": "312615", "display": "prednisoLONE 5 MG"}]},
            VS_STEROID,
            True,
        ),
        ({"coding": [{"system": RX, "code": "1191", "display": "aspirin"}]}, VS_STEROID, False),
        ({"text": "Aspirin 75 mg"}, VS_STEROID, False),  # decided by the text: not a member
        ({"text": "Paternal lymphocyte immunization"}, VS_TEXT_ONLY, True),
        ({"text": "Split lithium dose"}, VS_TEXT_ONLY, False),  # 'lit' only as a whole word
    ],
)
def test_a_value_set_with_text_patterns_matches_text_and_displays(
    concept: dict[str, Any], url: str, expected: bool
) -> None:
    assert member(concept, url) == [expected]


@pytest.mark.parametrize(
    ("patterns", "text", "expected"),
    [
        ((r"warfarin", r"\bcoumadin\b"), "Coumadin 5 mg", True),
        ((r"warfarin", r"\bcoumadin\b"), "coumadine", False),
        # Joined naively, `\1` would name the first pattern's group and `(?i)` would not compile.
        ((r"(x)y", r"(ab)\1"), "abab", True),
        ((r"(x)y", r"(ab)\1"), "abx", False),
        ((r"warfarin", r"(?i)heparin"), "Heparin", True),
        ((r"^lit$", r"paternal"), "lit", True),
        ((r"^lit$", r"paternal"), "a lit b", False),
    ],
)
def test_text_patterns_of_one_value_set_keep_their_own_meaning(
    patterns: tuple[str, ...], text: str, expected: bool
) -> None:
    url = f"{EX}/ValueSet/patterns"
    terminology = Terminology.from_resources(
        {url: {"resourceType": "ValueSet", "url": url, "extension": text_patterns(*patterns)}}
    )
    assert terminology.text_matches(url, [text]) is expected


def test_a_broken_text_pattern_is_a_terminology_problem() -> None:
    url = f"{EX}/ValueSet/broken"
    terminology = Terminology.from_resources(
        {url: {"resourceType": "ValueSet", "url": url, "extension": text_patterns("(unclosed")}}
    )
    assert any("not a regular expression" in reason for _, reason in terminology.problems())


def write(directory: Path, name: str, resource: dict[str, Any]) -> None:
    (directory / name).write_text(json.dumps(resource))


def value_set(url: str, *codes: str) -> dict[str, Any]:
    return {
        "resourceType": "ValueSet",
        "url": url,
        "status": "active",
        "compose": {
            "include": [{"system": "http://loinc.org", "concept": [{"code": c} for c in codes]}]
        },
    }


def plan_reading(union_codes: tuple[str, ...], group_codes: tuple[str, ...], tmp_path: Path) -> Any:
    write(tmp_path, "union.json", value_set(f"{EX}/ValueSet/union", *union_codes))
    write(tmp_path, "group.json", value_set(f"{EX}/ValueSet/group", *group_codes))
    write(
        tmp_path,
        "plan.json",
        {
            "resourceType": "PlanDefinition",
            "id": "reads-groups",
            "url": f"{EX}/PlanDefinition/reads-groups",
            "status": "active",
            "description": "test",
            "action": [
                {
                    "id": "card",
                    "title": "Card",
                    "trigger": [{"type": "named-event", "name": "patient-view"}],
                    "input": [
                        {
                            "type": "Observation",
                            "id": "observations",
                            "codeFilter": [{"path": "code", "valueSet": f"{EX}/ValueSet/union"}],
                        },
                        {
                            "type": "Observation",
                            "id": "tsh",
                            "extension": [{"url": RETRIEVE_ONLY_EXTENSION, "valueBoolean": True}],
                            "codeFilter": [{"path": "code", "valueSet": f"{EX}/ValueSet/group"}],
                        },
                    ],
                    "condition": [
                        {
                            "kind": "applicability",
                            "expression": {
                                "language": "text/fhirpath",
                                "expression": "%tsh.exists()",
                            },
                        }
                    ],
                }
            ],
        },
    )
    return load_catalogue([tmp_path])


def test_a_retrieve_only_requirement_is_no_prefetch_key(tmp_path: Path) -> None:
    catalogue = plan_reading(("3016-3", "8099-4"), ("3016-3",), tmp_path)
    (service,) = catalogue.discovery()["services"]
    assert set(service["prefetch"]) == {"observations"}


def test_a_retrieve_only_requirement_outside_every_query_is_refused(tmp_path: Path) -> None:
    with pytest.raises(KnowledgeError) as caught:
        plan_reading(("8099-4",), ("3016-3",), tmp_path)
    assert any("retrieve-only requirement" in str(p) for p in caught.value.problems)


def test_two_tables_stating_the_same_conversion_agree(tmp_path: Path) -> None:
    table = {"conversions": [{"from": "mmol/mol", "to": "%", "factor": 0.0915, "offset": 2.15}]}
    other = {"conversions": [{"from": "mmol/mol", "to": "%", "factor": 0.09, "offset": 2.15}]}
    same = UnitTable.from_documents([(Path("a.units.json"), table), (Path("b.units.json"), table)])
    assert same.problems == ()
    differ = UnitTable.from_documents(
        [(Path("a.units.json"), table), (Path("b.units.json"), other)]
    )
    assert any("already defined" in p.reason for p in differ.problems)
