"""Engine functions, terminology and unit tables, exercised through real FHIRPath (fhirpathpy).

Every behaviour is checked by compiling an expression with `compile_expression(text, functions)`
and evaluating it, so the tests cover how fhirpathpy hands values to the functions (plain data,
FP_DateTime literals, today() strings, ResourceNodes) and FHIRPath's empty propagation.
"""

from __future__ import annotations

import json
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B import get_fhir_model_class
from fhirpathpy.engine.invocations import invocation_registry

from service.engine.fhirpath import compile_expression
from service.engine.fhirpath.functions import (
    SIGNATURES,
    clinical_date,
    engine_functions,
    parse_date,
)
from service.engine.fhirpath.static_check import check_expression
from service.engine.registry import Registry
from service.engine.terminology import Terminology
from service.engine.units import UCUM, UnitTable, quantity_unit

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
LOCAL = "urn:oid:1.2.3.4.5.lab"
EX = "https://example.org"
VS_LAB = f"{EX}/ValueSet/lab-a"
VS_PARENT = f"{EX}/ValueSet/parent"
VS_EXCLUDING = f"{EX}/ValueSet/excluding"
VS_VERSIONED = f"{EX}/ValueSet/versioned"
VS_EXPANDED = f"{EX}/ValueSet/expanded"
VS_MIXED = f"{EX}/ValueSet/mixed"
VS_WHOLE = f"{EX}/ValueSet/whole-system"
VS_FILTER = f"{EX}/ValueSet/filter"
VS_CYCLE_A = f"{EX}/ValueSet/cycle-a"
VS_CYCLE_B = f"{EX}/ValueSet/cycle-b"
VS_PARTIAL = f"{EX}/ValueSet/partial"
VS_FRAGMENT = f"{EX}/ValueSet/fragment"
CS_TOPICS = f"{EX}/CodeSystem/topics"
CS_FRAGMENT = f"{EX}/CodeSystem/fragment"
TODAY = date(2024, 3, 1)


def value_set(url: str, **content: Any) -> dict[str, Any]:
    return {"resourceType": "ValueSet", "url": url, "status": "active", **content}


def include(system: str, *codes: str) -> dict[str, Any]:
    return {"system": system, "concept": [{"code": code} for code in codes]}


def target(code: str, equivalence: str, **extra: Any) -> dict[str, Any]:
    return {"code": code, "equivalence": equivalence, **extra}


RESOURCES: list[dict[str, Any]] = [
    value_set(VS_LAB, compose={"include": [include(LOINC, "4548-4", "17856-6")]}),
    value_set(
        VS_PARENT,
        compose={"include": [include(SNOMED, "1000"), {"valueSet": [VS_LAB]}]},
    ),
    value_set(
        VS_EXCLUDING,
        compose={
            "include": [{"valueSet": [VS_PARENT]}],
            "exclude": [include(LOINC, "17856-6")],
        },
    ),
    value_set(VS_VERSIONED, version="2", compose={"include": [include(SNOMED, "2000")]}),
    value_set(
        VS_EXPANDED,
        expansion={
            "timestamp": "2024-01-01T00:00:00Z",
            "contains": [
                {
                    "system": SNOMED,
                    "code": "3000",
                    "abstract": True,
                    "contains": [{"system": SNOMED, "code": "3001"}],
                },
                {"system": SNOMED, "code": "3002"},
            ],
        },
    ),
    value_set(VS_MIXED, compose={"include": [include(SNOMED, "1000"), include(LOINC, "1000")]}),
    value_set(VS_WHOLE, compose={"include": [{"system": CS_TOPICS}]}),
    value_set(
        VS_FILTER,
        compose={
            "include": [
                {
                    "system": SNOMED,
                    "filter": [{"property": "concept", "op": "is-a", "value": "1000"}],
                }
            ]
        },
    ),
    value_set(VS_CYCLE_A, compose={"include": [{"valueSet": [VS_CYCLE_B]}]}),
    value_set(VS_CYCLE_B, compose={"include": [{"valueSet": [VS_CYCLE_A]}]}),
    value_set(
        VS_PARTIAL,
        expansion={
            "timestamp": "2024-01-01T00:00:00Z",
            "total": 50,
            "contains": [{"system": SNOMED, "code": "4000"}],
        },
    ),
    value_set(VS_FRAGMENT, compose={"include": [{"system": CS_FRAGMENT}]}),
    {
        "resourceType": "CodeSystem",
        "url": CS_TOPICS,
        "status": "active",
        "content": "complete",
        "concept": [{"code": "t1", "concept": [{"code": "t1.1"}]}, {"code": "t2"}],
    },
    {"resourceType": "CodeSystem", "url": CS_FRAGMENT, "status": "active", "content": "fragment"},
    {
        "resourceType": "ConceptMap",
        "url": f"{EX}/ConceptMap/local-lab",
        "status": "active",
        "group": [
            {
                "source": LOCAL,
                "target": LOINC,
                "element": [
                    {"code": "HBA1C", "target": [target("4548-4", "equivalent")]},
                    {"code": "HBA1C-HPLC", "target": [target("4548-4", "wider")]},
                    {"code": "HBA1C-SUB", "target": [target("4548-4", "subsumes")]},
                    {"code": "HBA1C-EQ", "target": [target("17856-6", "equal")]},
                    {"code": "GLYC", "target": [target("4548-4", "narrower")]},
                    {"code": "GLYC-REL", "target": [target("4548-4", "relatedto")]},
                    {"code": "GLYC-INEXACT", "target": [target("4548-4", "inexact")]},
                    {"code": "GLYC-NO", "target": [target("4548-4", "disjoint")]},
                    {
                        "code": "COND",
                        "target": [
                            target(
                                "4548-4",
                                "equivalent",
                                dependsOn=[{"property": "specimen", "value": "blood"}],
                            )
                        ],
                    },
                ],
            }
        ],
    },
]
# R5-style `relationship` (not valid R4, so kept out of the R4B validation below).
R5_MAP: dict[str, Any] = {
    "resourceType": "ConceptMap",
    "url": f"{EX}/ConceptMap/r5-style",
    "group": [
        {
            "source": LOCAL,
            "target": LOINC,
            "element": [
                {
                    "code": "R5-NARROW",
                    "target": [
                        {"code": "4548-4", "relationship": "source-is-narrower-than-target"}
                    ],
                },
                {
                    "code": "R5-BROAD",
                    "target": [{"code": "4548-4", "relationship": "source-is-broader-than-target"}],
                },
            ],
        }
    ],
}


def knowledge_of(resources: list[dict[str, Any]]) -> Registry:
    """Registry.by_canonical as the loader fills it: url, and url|version when versioned."""
    knowledge = Registry()
    for resource in resources:
        knowledge.by_canonical[resource["url"]] = resource
        if resource.get("version"):
            knowledge.by_canonical[f"{resource['url']}|{resource['version']}"] = resource
    return knowledge


UNIT_DOCUMENT: dict[str, Any] = {
    "description": "test conversions",
    "source": "made up for tests, except the IFCC/NGSP master equation",
    "units": ["[GPL'U]", "[MPL'U]", "mg/dL"],
    "conversions": [
        {"from": "u[IU]/mL", "to": "m[IU]/L", "factor": 1},
        {
            "from": "mmol/mol",
            "to": "%",
            "factor": 0.0915,
            "offset": 2.15,
            "note": "IFCC to NGSP master equation",
        },
    ],
}

TERMINOLOGY = Terminology.from_resources(knowledge_of([*RESOURCES, R5_MAP]).by_canonical)
UNITS = UnitTable.from_documents([(Path("test.units.json"), UNIT_DOCUMENT)])
FUNCTIONS = engine_functions(TERMINOLOGY, UNITS, today=lambda: TODAY)


def run(expression: str, resource: Any = None, **environment: Any) -> list[Any]:
    compiled = compile_expression(expression, FUNCTIONS)
    return compiled(resource if resource is not None else {}, environment)


def coding(system: str, code: str) -> dict[str, str]:
    return {"system": system, "code": code}


def concept(*codings: dict[str, str], text: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"coding": list(codings)}
    if text:
        out["text"] = text
    return out


def quantity(value: Any = None, code: str | None = None, **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = dict(extra)
    if value is not None:
        out["value"] = value
    if code is not None:
        out.setdefault("system", UCUM)
        out["code"] = code
        out.setdefault("unit", code)
    return out


def observation(**fields: Any) -> dict[str, Any]:
    return {"resourceType": "Observation", "status": "final", **fields}


# The test data is valid FHIR


@pytest.mark.parametrize("resource", RESOURCES, ids=lambda r: r["url"].rsplit("/", 1)[-1])
def test_fixture_resources_are_valid_r4b(resource: dict[str, Any]) -> None:
    get_fhir_model_class(resource["resourceType"]).model_validate(resource)


# Registration


def test_no_engine_function_shadows_a_fhirpathpy_builtin() -> None:
    assert set(FUNCTIONS).isdisjoint(invocation_registry)
    assert set(FUNCTIONS) == set(SIGNATURES)


@pytest.mark.parametrize(
    "expression",
    [
        f"{{}}.inValueSet('{VS_LAB}')",
        "{}.quantityIn('%')",
        "{}.convertibleTo('%')",
        "{}.daysBetween(@2024-01-01)",
        "{}.daysBetween()",
        "{}.latest()",
        "{}.clinicalDate()",
        "Observation.code.inValueSet(%missing)",
        "Observation.value.quantityIn(%missing)",
        "Observation.value.convertibleTo(%missing)",
        "Observation.effective.daysBetween(%missing)",
        "Observation.nothing.inValueSet(%unknownUrl)",
    ],
)
def test_empty_input_or_argument_gives_empty_not_false(expression: str) -> None:
    obs = observation(
        code=concept(coding(LOINC, "4548-4")),
        valueQuantity=quantity(48, "mmol/mol"),
        effectiveDateTime="2024-01-01",
    )
    assert run(expression, obs, missing=[], unknownUrl=f"{EX}/ValueSet/not-loaded") == []


def test_functions_compose_with_where_and_not() -> None:
    obs = observation(code=concept(coding(LOINC, "4548-4")))
    assert run(f"Observation.code.inValueSet('{VS_LAB}').not()", obs) == [False]
    assert run(f"Observation.code.inValueSet('{VS_LAB}').empty()", obs) == [False]
    assert run(f"Observation.nothing.inValueSet('{VS_LAB}').not()", obs) == []


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
    assert terminology.members(f"{EX}/i") == {(LOINC, "4548-4")}


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


def test_terminology_from_knowledge_and_empty() -> None:
    assert Terminology.empty().members(VS_LAB) is None
    assert Terminology.empty().problems() == []
    assert TERMINOLOGY.value_set_urls() >= {VS_LAB, VS_VERSIONED, f"{VS_VERSIONED}|2"}
    assert TERMINOLOGY.translate(LOCAL, "HBA1C") == ((LOINC, "4548-4"),)


# Units


def test_unit_table_conversions() -> None:
    assert UNITS.convert(48, "mmol/mol", "%") == Decimal("6.542")
    assert UNITS.convert(Decimal("6.542"), "%", "mmol/mol") == Decimal("48")
    assert UNITS.convert(6.5, "%", "mmol/mol") == (Decimal("6.5") - Decimal("2.15")) / Decimal(
        "0.0915"
    )
    assert UNITS.convert(3, "u[IU]/mL", "m[IU]/L") == 3
    assert UNITS.convert(3, "m[IU]/L", "u[IU]/mL") == 3
    assert UNITS.convert(1.5, "kg", "kg") == Decimal("1.5")  # identity, table or not
    assert UNITS.convert(1, "[GPL'U]", "[MPL'U]") is None  # different kinds: never
    assert UNITS.convert(1, "mmol/mol", "mmol/L") is None
    assert UNITS.convert(1, "%", "m[IU]/L") is None
    assert UNITS.convert(1, "MMOL/MOL", "%") is None  # UCUM is case-sensitive
    assert UNITS.convert(float("nan"), "%", "%") is None
    assert UNITS.knows("[GPL'U]") and UNITS.knows("%") and not UNITS.knows("kg")
    assert UNITS.convertible("kg", "kg") and not UNITS.convertible("[GPL'U]", "[MPL'U]")
    assert UNITS.problems == ()


def test_no_chaining_through_a_third_unit() -> None:
    table = UnitTable.from_documents(
        [
            (
                Path("t.units.json"),
                {
                    "conversions": [
                        {"from": "a", "to": "b", "factor": 2},
                        {"from": "b", "to": "c", "factor": 3},
                    ]
                },
            )
        ]
    )
    assert table.convert(1, "a", "b") == 2 and table.convert(1, "b", "c") == 3
    assert table.convert(1, "a", "c") is None


@pytest.mark.parametrize(
    ("document", "path", "reason"),
    [
        ([], "-", "JSON object"),
        ({"conversions": [], "author": "x"}, "author", "unknown key"),
        ({"description": 1, "conversions": []}, "description", "string"),
        ({}, "conversions", "required"),
        ({"conversions": {}}, "conversions", "required"),
        ({"conversions": ["x"]}, "conversions[0]", "JSON object"),
        ({"conversions": [{"to": "%", "factor": 1}]}, "conversions[0].from", "UCUM code"),
        (
            {"conversions": [{"from": "mg dL", "to": "%", "factor": 1}]},
            "conversions[0].from",
            "no spaces",
        ),
        ({"conversions": [{"from": "a", "to": "", "factor": 1}]}, "conversions[0].to", "UCUM code"),
        ({"conversions": [{"from": "a", "to": "b"}]}, "conversions[0].factor", "non-zero"),
        (
            {"conversions": [{"from": "a", "to": "b", "factor": 0}]},
            "conversions[0].factor",
            "non-zero",
        ),
        (
            {"conversions": [{"from": "a", "to": "b", "factor": "2"}]},
            "conversions[0].factor",
            "non-zero",
        ),
        (
            {"conversions": [{"from": "a", "to": "b", "factor": True}]},
            "conversions[0].factor",
            "non-zero",
        ),
        (
            {"conversions": [{"from": "a", "to": "b", "factor": 1, "offset": None}]},
            "conversions[0].offset",
            "number",
        ),
        (
            {"conversions": [{"from": "a", "to": "b", "factor": 1, "note": 3}]},
            "conversions[0].note",
            "string",
        ),
        (
            {"conversions": [{"from": "a", "to": "b", "factor": 1, "ofset": 3}]},
            "conversions[0].ofset",
            "unknown key",
        ),
        ({"conversions": [{"from": "a", "to": "a", "factor": 1}]}, "conversions[0]", "implicit"),
        (
            {
                "conversions": [
                    {"from": "a", "to": "b", "factor": 2},
                    {"from": "a", "to": "b", "factor": 2},
                ]
            },
            "conversions[1]",
            "already defined",
        ),
        (
            {
                "conversions": [
                    {"from": "a", "to": "b", "factor": 2},
                    {"from": "b", "to": "a", "factor": 0.5},
                ]
            },
            "conversions[1]",
            "inverse is derived",
        ),
        ({"units": "mg", "conversions": []}, "units", "list"),
        ({"units": ["mg", "m g"], "conversions": []}, "units[1]", "UCUM code"),
    ],
)
def test_unit_table_validation(document: Any, path: str, reason: str) -> None:
    file = Path("site/labs.units.json")
    table = UnitTable.from_documents([(file, document)])
    assert len(table.problems) == 1, table.problems
    problem = table.problems[0]
    assert (problem.file, problem.path) == (file, path)
    assert reason in problem.reason
    assert str(problem).startswith(f"{file}: {path}: ")


def test_invalid_entries_are_left_out_and_valid_ones_kept() -> None:
    table = UnitTable.from_documents(
        [
            (
                Path("t.units.json"),
                {
                    "conversions": [
                        {"from": "a", "to": "b", "factor": 0},
                        {"from": "c", "to": "d", "factor": 2},
                    ]
                },
            )
        ]
    )
    assert table.convert(1, "a", "b") is None
    assert table.convert(1, "c", "d") == 2
    assert len(table.problems) == 1


def test_conflicting_duplicates_are_found_across_files() -> None:
    entry = {"conversions": [{"from": "a", "to": "b", "factor": 2}]}
    other = {"conversions": [{"from": "a", "to": "b", "factor": 3}]}
    table = UnitTable.from_documents(
        [(Path("one.units.json"), entry), (Path("two.units.json"), other)]
    )
    assert [(p.file.name, p.path) for p in table.problems] == [("two.units.json", "conversions[0]")]
    assert "one.units.json conversions[0]" in table.problems[0].reason


def test_unit_tables_load_from_directories(tmp_path: Path) -> None:
    (tmp_path / "site").mkdir()
    (tmp_path / "labs.units.json").write_text(json.dumps(UNIT_DOCUMENT), encoding="utf-8")
    (tmp_path / "site" / "more.units.json").write_text(
        json.dumps({"conversions": [{"from": "g/L", "to": "g/dL", "factor": 0.1}]}),
        encoding="utf-8",
    )
    (tmp_path / "site" / "broken.units.json").write_text("{", encoding="utf-8")
    (tmp_path / "ValueSet-x.json").write_text("not looked at", encoding="utf-8")
    table = UnitTable.load([tmp_path, tmp_path / "absent"])
    assert table.convert(20, "g/L", "g/dL") == 2
    assert table.convert(48, "mmol/mol", "%") == Decimal("6.542")
    assert [(p.file.name, p.path) for p in table.problems] == [("broken.units.json", "-")]


@pytest.mark.parametrize(
    ("quantity_element", "unit"),
    [
        ({"value": 1, "system": UCUM, "code": "mmol/mol", "unit": "mmol/mol (IFCC)"}, "mmol/mol"),
        ({"value": 1, "code": "mmol/mol", "unit": "whatever"}, "mmol/mol"),
        ({"value": 1, "unit": "mmol/mol"}, "mmol/mol"),
        ({"value": 1, "system": UCUM, "unit": "mmol/mol"}, "mmol/mol"),
        ({"value": 1, "system": "urn:local-units", "code": "mmol/mol", "unit": "mmol/mol"}, None),
        ({"value": 1}, None),
        ({"value": 1, "code": ""}, None),
    ],
)
def test_quantity_unit_rule(quantity_element: dict[str, Any], unit: str | None) -> None:
    assert quantity_unit(quantity_element) == unit


# quantityIn and convertibleTo through FHIRPath


def a1c(value: Any = None, code: str | None = None, **extra: Any) -> dict[str, Any]:
    return observation(valueQuantity=quantity(value, code, **extra))


@pytest.mark.parametrize(
    ("obs", "unit", "expected"),
    [
        (a1c(6.1, "%"), "%", [Decimal("6.1")]),
        (a1c(250, "mg/dL"), "mg/dL", [Decimal("250")]),
        (a1c(12.5, "u[IU]/mL"), "m[IU]/L", [Decimal("12.5")]),
        (a1c(48, "mmol/mol"), "%", [Decimal("6.542")]),
        (a1c(Decimal("6.542"), "%"), "mmol/mol", [Decimal("48")]),
        (a1c(30, "[GPL'U]"), "[MPL'U]", []),  # different kinds: refused
        (a1c(48), "%", []),  # no unit
        (a1c(48, "mmol/L"), "%", []),  # unknown unit
        (a1c(None, "mmol/mol"), "%", []),  # no value
        (a1c(5, "%", comparator="<"), "%", []),  # a bound, not a value
        (a1c(48, "mmol/mol", system="urn:local-units"), "%", []),  # not UCUM
        (observation(valueQuantity={"value": 48, "unit": "mmol/mol"}), "%", [Decimal("6.542")]),
        (observation(valueString="6.5 %"), "%", []),
        (observation(), "%", []),
    ],
)
def test_quantity_in(obs: dict[str, Any], unit: str, expected: list[Decimal]) -> None:
    # A FHIRPath string literal escapes the apostrophe of units such as [GPL'U].
    escaped = unit.replace("'", "\\'")
    result = run(f"Observation.value.quantityIn('{escaped}')", obs)
    assert result == expected
    assert all(isinstance(v, Decimal) for v in result)


def test_quantity_in_back_and_forth() -> None:
    [percent] = run("Observation.value.quantityIn('%')", a1c(6.5, "%"))
    [mmol] = run("Observation.value.quantityIn('mmol/mol')", a1c(6.5, "%"))
    assert round(mmol, 2) == Decimal("47.54")
    assert run("%q.quantityIn('%')", q=quantity(mmol, "mmol/mol")) == [percent]


@pytest.mark.parametrize(
    ("obs", "expected"),
    [
        (a1c(48, "mmol/mol"), [True]),  # 6.542 %
        (a1c(47, "mmol/mol"), [False]),  # 6.4505 %
        (a1c(6.5, "%"), [True]),
        (a1c(6.4, "%"), [False]),
        (a1c(48, "mmol/L"), []),  # unknown unit: unknown, not false
        (a1c(48), []),
        (observation(), []),
    ],
)
def test_quantity_comparison(obs: dict[str, Any], expected: list[bool]) -> None:
    assert run("Observation.value.quantityIn('%') >= 6.5", obs) == expected


def test_quantity_literals_convert_too() -> None:
    assert run("(48 'mmol/mol').quantityIn('%')") == [Decimal("6.542")]
    assert run("(2 days).quantityIn('d')") == []  # calendar words are not UCUM
    assert run("(48 'mmol/mol').convertibleTo('%')") == [True]


def test_quantity_in_selects_over_several_with_where_and_select() -> None:
    observations = [a1c(48, "mmol/mol"), a1c(6.0, "%"), a1c(7, "mmol/L")]
    assert run("%o.where(value.quantityIn('%') >= 6.5).count()", o=observations) == [1]
    assert run("%o.select(value.quantityIn('%'))", o=observations) == [
        Decimal("6.542"),
        Decimal("6.0"),
    ]


def test_quantity_in_on_several_items_is_an_error() -> None:
    with pytest.raises(Exception, match="single item"):
        run("%o.value.quantityIn('%')", o=[a1c(48, "mmol/mol"), a1c(6.0, "%")])


def test_quantity_in_on_a_resource_is_an_authoring_error() -> None:
    with pytest.raises(Exception, match="Observation resource"):
        run("%o.quantityIn('%')", o=[a1c(48, "mmol/mol")])


@pytest.mark.parametrize(
    ("obs", "expected"),
    [
        (a1c(48, "mmol/mol"), [True]),
        (a1c(None, "mmol/mol"), [True]),  # the unit is usable, the value is missing
        (a1c(5, "%", comparator="<"), [True]),
        (a1c(48, "mmol/L"), [False]),
        (a1c(48), [False]),
        (a1c(48, "mmol/mol", system="urn:local-units"), [False]),
        (observation(valueString="6.5"), [False]),
        (observation(), []),
    ],
)
def test_convertible_to(obs: dict[str, Any], expected: list[bool]) -> None:
    assert run("Observation.value.convertibleTo('%')", obs) == expected


def test_a_number_without_a_usable_unit_is_detectable() -> None:
    expression = (
        "Observation.value.exists() and Observation.value.quantityIn('%').empty() "
        "and Observation.value.convertibleTo('%').not()"
    )
    assert run(expression, a1c(48, "mmol/L")) == [True]
    assert run(expression, a1c(48, "mmol/mol")) == [False]
    assert run(expression, observation()) == [False]


# daysBetween


@pytest.mark.parametrize(
    ("start", "end", "days"),
    [
        ("2024-01-01", "2024-03-01", 60),  # leap year
        ("2023-01-01", "2023-03-01", 59),
        ("2024-03-01", "2024-01-01", -60),
        ("2024-03-01", "2024-03-01", 0),
        # Calendar dates as recorded: time and offset are not used.
        ("2024-01-01T23:30:00+01:00", "2024-01-02T00:10:00+01:00", 1),
        ("2024-01-02T00:10:00+01:00", "2024-01-01T23:30:00+01:00", -1),
        ("2024-01-01T23:30:00-05:00", "2024-01-02", 1),
        ("2024-01-01T01:00:00+14:00", "2024-01-01T23:00:00-12:00", 0),
        ("2024-01-01T10:00:00.123Z", "2024-01-31T09:00:00Z", 30),
        ("2024-01-01T10:00:00.123456789Z", "2024-01-02", 1),
    ],
)
def test_days_between_strings(start: str, end: str, days: int) -> None:
    assert run("%a.daysBetween(%b)", a=start, b=end) == [days]


@pytest.mark.parametrize(
    ("start", "end"),
    [
        ("2024", "2024-03-01"),
        ("2024-01", "2024-03-01"),
        ("2024-01-01", "2024-03"),
        ("2024-02-30", "2024-03-01"),  # not a date
        ("2024-01-01T25:00:00Z", "2024-03-01"),
        ("next week", "2024-03-01"),
        ("2024-01-01", "20240301"),
    ],
)
def test_days_between_partial_or_invalid_dates_is_empty(start: str, end: str) -> None:
    assert run("%a.daysBetween(%b)", a=start, b=end) == []
    assert run("%b.daysBetween(%a)", a=start, b=end) == []


def test_days_between_fhirpath_date_values() -> None:
    obs = observation(effectiveDateTime="2024-01-02T10:00:00+01:00")
    assert run("Observation.effective.daysBetween(@2024-03-01)", obs) == [59]
    assert run("@2024-01-01.daysBetween(@2024-01-31)") == [30]
    assert run("@2024-01-01T23:00:00+02:00.daysBetween(@2024-01-02)") == [1]
    assert run("@2024-01.daysBetween(@2024-01-31)") == []
    assert run("@2024.daysBetween(@2024-01-31)") == []
    assert run("Observation.effective.daysBetween(%today)", obs, today="2024-01-12") == [10]
    [today] = run("today()")
    assert run("@2024-01-01.daysBetween(today())") == [
        (date.fromisoformat(str(today)) - date(2024, 1, 1)).days
    ]


def test_days_between_without_argument_counts_to_the_engine_today() -> None:
    assert run("@2024-02-01.daysBetween()") == [(TODAY - date(2024, 2, 1)).days]


def test_days_between_argument_is_evaluated_from_the_root() -> None:
    obs = observation(effectiveDateTime="2024-01-11", issued="2024-01-21T08:00:00Z")
    assert run("Observation.effective.daysBetween(Observation.issued)", obs) == [10]
    observations = [obs, observation(effectiveDateTime="2023-12-01")]
    assert run(
        "%o.where(effective.daysBetween(%today) <= 30).count()", o=observations, today="2024-01-31"
    ) == [1]


def test_days_between_on_non_dates_is_empty() -> None:
    obs = observation(effectivePeriod={"start": "2024-01-01"})
    assert run("Observation.effective.daysBetween(@2024-03-01)", obs) == []
    assert run("(5).daysBetween(@2024-03-01)") == []
    assert run("@2024-03-01.daysBetween(@T10:00)") == []


def test_days_between_on_several_items_is_an_error() -> None:
    with pytest.raises(Exception, match="single item"):
        run("%a.daysBetween(@2024-03-01)", a=["2024-01-01", "2024-01-02"])
    with pytest.raises(Exception, match="single item"):
        run("@2024-03-01.daysBetween(%a)", a=["2024-01-01", "2024-01-02"])


# latest and clinicalDate


def test_latest_among_observations_with_mixed_dates() -> None:
    observations = [
        observation(id="a", effectiveDateTime="2024-01-10"),
        observation(id="b", effectivePeriod={"start": "2024-02-01T08:00:00Z", "end": "2024-02-02"}),
        observation(id="c", issued="2024-03-01T09:00:00.000+01:00"),
        observation(id="d"),  # no date: ignored
        observation(id="e", effectiveDateTime="2024-02-15", issued="2024-06-01T00:00:00Z"),
    ]
    assert run("%o.latest().id", o=observations) == ["c"]
    assert run("%o.latest().clinicalDate()", o=observations) == ["2024-03-01T09:00:00.000+01:00"]
    # effective wins over issued: e counts as 2024-02-15, so without c, e is the latest.
    assert run("%o.where(id != 'c').latest().id", o=observations) == ["e"]


def test_latest_orders_instants_across_time_zones_and_precisions() -> None:
    observations = [
        observation(id="early", effectiveDateTime="2024-01-02T01:00:00+01:00"),  # 00:00Z
        observation(id="late", effectiveDateTime="2024-01-01T23:00:00-05:00"),  # 04:00Z
    ]
    assert run("%o.latest().id", o=observations) == ["late"]
    partial = [
        observation(id="year", effectiveDateTime="2024"),
        observation(id="day", effectiveDateTime="2023-12-31"),
    ]
    assert run("%o.latest().id", o=partial) == ["year"]
    partial.append(observation(id="june", effectiveDateTime="2024-06-01"))
    assert run("%o.latest().id", o=partial) == ["june"]


def test_latest_ties_keep_the_first() -> None:
    observations = [
        observation(id="first", effectiveDateTime="2024-01-01T10:00:00Z"),
        observation(id="second", effectiveDateTime="2024-01-01T11:00:00+01:00"),
    ]
    assert run("%o.latest().id", o=observations) == ["first"]


def test_latest_without_dated_resources_is_empty() -> None:
    assert run("%o.latest()", o=[observation(), observation(effectiveDateTime="soon")]) == []
    assert run("%o.latest()", o=[]) == []


def test_latest_result_is_navigable() -> None:
    observations = [
        a1c(48, "mmol/mol") | {"effectiveDateTime": "2024-01-01"},
        a1c(7.1, "%") | {"effectiveDateTime": "2024-02-01"},
    ]
    assert run("%o.latest().value.quantityIn('%')", o=observations) == [Decimal("7.1")]
    assert run("%o.latest().effective.daysBetween(%today)", o=observations, today="2024-02-11") == [
        10
    ]


def test_latest_on_non_resources_is_an_authoring_error() -> None:
    with pytest.raises(Exception, match="expects resources"):
        run("%o.latest()", o=["2024-01-01"])


@pytest.mark.parametrize(
    ("resource", "expected"),
    [
        (
            {
                "resourceType": "Condition",
                "onsetDateTime": "2023-05-01",
                "recordedDate": "2023-06-01",
            },
            "2023-05-01",
        ),
        (
            {"resourceType": "Condition", "onsetString": "childhood", "recordedDate": "2023-06-01"},
            "2023-06-01",
        ),
        ({"resourceType": "Condition", "onsetPeriod": {"end": "2023-04-01"}}, "2023-04-01"),
        (
            {"resourceType": "Procedure", "performedPeriod": {"start": "2022-01-01T10:00:00Z"}},
            "2022-01-01T10:00:00Z",
        ),
        ({"resourceType": "MedicationRequest", "authoredOn": "2024-01-05"}, "2024-01-05"),
        (
            {
                "resourceType": "ServiceRequest",
                "occurrenceDateTime": "2024-09-01",
                "authoredOn": "2024-01-05",
            },
            "2024-01-05",
        ),
        (
            {
                "resourceType": "Immunization",
                "occurrenceDateTime": "2021-10-01",
                "recorded": "2021-10-02",
            },
            "2021-10-01",
        ),
        (
            {"resourceType": "Encounter", "period": {"start": "2024-02-02T09:00:00+01:00"}},
            "2024-02-02T09:00:00+01:00",
        ),
        (
            {"resourceType": "Observation", "effectiveInstant": "2024-01-01T00:00:00Z"},
            "2024-01-01T00:00:00Z",
        ),
        (
            {
                "resourceType": "Observation",
                "effectiveDateTime": "garbage",
                "issued": "2024-01-03T00:00:00Z",
            },
            "2024-01-03T00:00:00Z",
        ),
        ({"resourceType": "MedicationStatement", "dateAsserted": "2024-01-04"}, "2024-01-04"),
    ],
)
def test_clinical_date(resource: dict[str, Any], expected: str) -> None:
    assert run("%r.clinicalDate()", r=resource) == [expected]
    found = clinical_date(resource)
    assert found is not None and found.text == expected


def test_clinical_date_empty_and_errors() -> None:
    assert run("%r.clinicalDate()", r={"resourceType": "Patient"}) == []
    assert run("%r.clinicalDate()", r=[]) == []
    with pytest.raises(Exception, match="single item"):
        run("%r.clinicalDate()", r=[observation(), observation()])


def test_clinical_date_feeds_days_between() -> None:
    condition = {"resourceType": "Condition", "onsetDateTime": "2024-01-01T22:00:00-03:00"}
    assert run("%r.clinicalDate().daysBetween(%today)", r=condition, today="2024-01-02") == [1]


def test_parse_date_precision() -> None:
    parsed = parse_date("2024-01-02T03:04:05.678+02:00")
    assert parsed is not None and parsed.day == date(2024, 1, 2)
    assert parsed.instant.isoformat() == "2024-01-02T01:04:05.678000+00:00"
    year = parse_date("2024")
    assert (
        year is not None
        and year.day is None
        and year.instant.isoformat() == "2024-01-01T00:00:00+00:00"
    )
    assert parse_date("2024-13-01") is None
    assert parse_date("2024-01-01T10:00:00+25:00") is None


# Static check


@pytest.mark.parametrize(
    ("expression", "problems"),
    [
        (f"Observation.code.inValueSet('{VS_LAB}')", []),
        (f"Observation.code.inValueSet('{VS_VERSIONED}|2')", []),
        ("Observation.code.inValueSet(%url)", []),  # computed: checked at run time
        (
            "Observation.value.quantityIn('%') >= 6.5 and Observation.value.convertibleTo('mg/dL')",
            [],
        ),
        ("%o.where(effective.daysBetween(%today) < 30).latest().clinicalDate()", []),
        (
            "Observation.exists() and iif(true, 1, 2) = 1 and coalesce(%a, %b, %c).exists() "
            "and trace('x', 1).exists() and today().toString().substring(0, 4) = '2024'",
            [],
        ),
        (
            f"Observation.code.inValueSet('{EX}/ValueSet/unknown')",
            [
                f"inValueSet('{EX}/ValueSet/unknown'): no such ValueSet is loaded, or it cannot be expanded"
            ],
        ),
        (
            f"Observation.code.inValueSet('{VS_VERSIONED}|1')",
            [
                f"inValueSet('{VS_VERSIONED}|1'): no such ValueSet is loaded, or it cannot be expanded"
            ],
        ),
        (
            f"Observation.code.inValueSet('{VS_FILTER}')",
            [f"inValueSet('{VS_FILTER}'): no such ValueSet is loaded, or it cannot be expanded"],
        ),
        (
            "Observation.value.quantityIn('mg/dl')",
            ["quantityIn('mg/dl'): unit 'mg/dl' is in no unit table"],
        ),
        (
            "Observation.value.convertibleTo('kg')",
            ["convertibleTo('kg'): unit 'kg' is in no unit table"],
        ),
        ("Observation.code.memberOf('x')", ["unknown function memberOf(): use inValueSet(url)"]),
        ("Observation.code.frobnicate()", ["unknown function frobnicate(): neither"]),
        ("Observation.value.quantityIn()", ["quantityIn() takes 1 argument(s), got 0"]),
        ("Observation.latest(1)", ["latest() takes 0 argument(s), got 1"]),
        ("Observation.first(2)", ["first() takes 0 argument(s), got 1"]),
        (
            "Observation.effective.daysBetween(%a, %b)",
            ["daysBetween() takes 0 or 1 argument(s), got 2"],
        ),
        (
            "Observation.where(code.inValueSet('urn:x')).select(value.quantityIn('x')).foo()",
            ["inValueSet('urn:x')", "quantityIn('x')", "unknown function foo()"],
        ),
        (f"`inValueSet`('{EX}/x')", [f"inValueSet('{EX}/x')"]),
    ],
)
def test_check_expression(expression: str, problems: list[str]) -> None:
    found = check_expression(expression, TERMINOLOGY, UNITS)
    assert len(found) == len(problems), found
    for message, expected in zip(found, problems, strict=True):
        assert message.startswith(expected)


def test_check_expression_with_escaped_literal() -> None:
    terminology = Terminology.from_resources(
        {"urn:x'y": value_set("urn:x'y", compose={"include": [include(SNOMED, "1")]})}
    )
    assert check_expression("code.inValueSet('urn:x\\'y')", terminology, UNITS) == []


# Every engine function is callable as registered


@pytest.mark.parametrize("name", sorted(SIGNATURES))
def test_every_function_is_documented(name: str) -> None:
    import service.engine.fhirpath.functions as module

    assert f"`{name}(" in (module.__doc__ or "")


def test_functions_are_plain_table_entries() -> None:
    for name, entry in FUNCTIONS.items():
        assert set(entry) == {"fn", "arity", "nullable_input", "nullable"}, name
        assert entry["arity"] == SIGNATURES[name]


# Primitive extensions: fhirpathpy passes `_element` as an item of its own


def test_primitive_extensions_are_not_values() -> None:
    absent = {
        "extension": [
            {
                "url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason",
                "valueCode": "unknown",
            }
        ]
    }
    both = observation(effectiveDateTime="2024-01-01", _effectiveDateTime=absent)
    only = observation(_effectiveDateTime=absent)
    assert run("Observation.effective.daysBetween(@2024-01-11)", both) == [10]
    assert run("Observation.effective.daysBetween(@2024-01-11)", only) == []
    assert run("@2024-01-11.daysBetween(Observation.effective)", both) == [-10]
    status = {"resourceType": "Observation", "_status": {"id": "s"}}
    assert run(f"Observation.status.inValueSet('{VS_LAB}')", status) == []
    assert run(f"Observation.status.inValueSet('{VS_LAB}')", observation(_status={"id": "s"})) == [
        False
    ]
    coded = {"resourceType": "Observation", "status": "4548-4", "_status": {"id": "s"}}
    assert run(f"Observation.status.inValueSet('{VS_LAB}')", coded) == [True]
    assert run("%q.convertibleTo('%')", q=[absent]) == []
    assert run("%q.quantityIn('%')", q=[absent]) == []
    assert run("%q.clinicalDate()", q=[absent]) == []
