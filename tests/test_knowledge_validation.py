"""Broken knowledge stops start-up with file, element and reason; `rpl-cds validate` reports it."""

from __future__ import annotations

import json
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from support.knowledge_problems import assert_reported, problems_for

from service.cdshooks.catalogue import load_catalogue
from service.engine.problems import KnowledgeError

VAR = "http://hl7.org/fhir/StructureDefinition/variable"


def plan(**changes: Any) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "PlanDefinition",
        "id": "test-plan",
        "url": "https://example.org/PlanDefinition/test-plan",
        "status": "active",
        "description": "test",
        "action": [
            {
                "title": "Card",
                "trigger": [{"type": "named-event", "name": "patient-view"}],
                "condition": [
                    {
                        "kind": "applicability",
                        "expression": {"language": "text/fhirpath", "expression": "true"},
                    }
                ],
            }
        ],
    }
    resource.update(changes)
    return resource


def _requirement_with_code(system: str, code: str) -> dict[str, Any]:
    return {
        "type": "Condition",
        "codeFilter": [{"path": "code", "code": [{"system": system, "code": code}]}],
    }


def with_condition(expression: str, **action: Any) -> dict[str, Any]:
    resource = plan()
    resource["action"][0]["condition"][0]["expression"]["expression"] = expression
    resource["action"][0].update(action)
    return resource


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"bad.json": "{not json"}, ["bad.json: -: not readable JSON"]),
        # A merge that leaves two equal keys must not drop one of them silently.
        (
            {"twice.json": '{"resourceType": "Library", "extension": [], "extension": []}'},
            ["twice.json: -: not readable JSON: the key 'extension' appears twice in one object"],
        ),
        ({"p.json": plan(date="yesterday")}, ["p.json: PlanDefinition.date"]),
        (
            {"p.json": plan(unknownElement=1)},
            ["p.json: PlanDefinition.unknownElement: Extra inputs"],
        ),
        (
            {"p.json": with_condition("true", priority="high")},
            ["PlanDefinition.action[0].priority: 'high' is not one of"],
        ),
        (
            {"p.json": with_condition("%x.count(")},
            ["p.json: PlanDefinition.action[0].condition[0].expression: FHIRPath does not compile"],
        ),
        (
            {"p.json": with_condition("%later > 1")},
            [
                "PlanDefinition.action[0].condition[0].expression: variable(s) used before they are defined: ['later']"
            ],
        ),
        (
            {
                "p.json": with_condition(
                    "true",
                    extension=[
                        {
                            "url": VAR,
                            "valueExpression": {
                                "name": "a",
                                "language": "text/fhirpath",
                                "expression": "%b + 1",
                            },
                        },
                        {
                            "url": VAR,
                            "valueExpression": {
                                "name": "b",
                                "language": "text/fhirpath",
                                "expression": "1",
                            },
                        },
                    ],
                )
            },
            [
                "PlanDefinition.action[0].extension[0].valueExpression: variable(s) used before they are defined: ['b']"
            ],
        ),
        (
            {
                "p.json": with_condition(
                    "true", definitionCanonical="https://example.org/ActivityDefinition/none"
                )
            },
            [
                "PlanDefinition.action[0].definitionCanonical: https://example.org/ActivityDefinition/none does not resolve"
            ],
        ),
        (
            {"a.json": plan(), "b.json": plan(id="other")},
            ["duplicate canonical https://example.org/PlanDefinition/test-plan"],
        ),
        (
            {
                "p.json": with_condition(
                    "true",
                    input=[
                        {
                            "type": "Observation",
                            "extension": [
                                {
                                    "url": "http://hl7.org/fhir/StructureDefinition/cqf-fhirQueryPattern",
                                    "valueString": "Observation?patient={{context.patientId}}&x={{context.draftOrders}}",
                                }
                            ],
                        }
                    ],
                )
            },
            ["prefetch tokens not in CDS Hooks 2.0: ['context.draftOrders']"],
        ),
        ({"p.json": plan(id=None)}, ["PlanDefinition.id: an id is required"]),
        (
            {"o.json": {"resourceType": "Observation", "status": "final", "code": {}}},
            ["o.json: Observation: unsupported resource type"],
        ),
        (
            {
                "p.json": with_condition(
                    "true",
                    condition=[
                        {
                            "kind": "start",
                            "expression": {"language": "text/fhirpath", "expression": "true"},
                        }
                    ],
                )
            },
            ["condition kind 'start' is not supported"],
        ),
        (
            {
                "p.json": with_condition(
                    "true",
                    input=[
                        {
                            "type": "Condition",
                            "codeFilter": [
                                {"path": "code", "valueSet": "https://example.org/ValueSet/missing"}
                            ],
                        }
                    ],
                )
            },
            ["ValueSet https://example.org/ValueSet/missing cannot be expanded"],
        ),
    ],
)
def test_each_problem_names_file_element_and_reason(
    tmp_path: Path, files: dict[str, Any], expected: list[str]
) -> None:
    assert_reported(tmp_path, files, expected)


def test_all_problems_are_reported_at_once(tmp_path: Path) -> None:
    problems = problems_for(
        tmp_path,
        {
            "bad.json": "[",
            "p.json": with_condition("%nope = 1"),
            "q.json": plan(id="q", url="https://example.org/q", date="x"),
        },
    )
    assert len(problems) >= 3


def test_value_set_codes_become_a_prefetch_filter(tmp_path: Path) -> None:
    value_set = {
        "resourceType": "ValueSet",
        "url": "https://example.org/ValueSet/losses",
        "status": "active",
        "compose": {
            "include": [
                {
                    "system": "http://snomed.info/sct",
                    "concept": [{"code": "17369002"}, {"code": "34801009"}],
                }
            ]
        },
    }
    resource = with_condition(
        "true",
        input=[
            {
                "id": "losses",
                "type": "Condition",
                "codeFilter": [{"path": "code", "valueSet": value_set["url"]}],
            }
        ],
    )
    (tmp_path / "vs.json").write_text(json.dumps(value_set))
    (tmp_path / "p.json").write_text(json.dumps(resource))
    service = load_catalogue([tmp_path]).services["test-plan"]
    assert service.prefetch == {
        "losses": "Condition?patient={{context.patientId}}&code=http://snomed.info/sct|17369002,http://snomed.info/sct|34801009"
    }


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service.cli", *args], capture_output=True, text=True, timeout=120
    )


def test_validate_command_passes_on_the_shipped_knowledge() -> None:
    result = run_cli("validate")
    assert result.returncode == 0, result.stderr
    assert "service rpl-workup (patient-view)" in result.stdout


def test_validate_command_fails_on_broken_knowledge(tmp_path: Path) -> None:
    (tmp_path / "p.json").write_text(json.dumps(with_condition("%x.count(")))
    result = run_cli("validate", str(tmp_path))
    assert result.returncode == 1
    assert (
        "p.json: PlanDefinition.action[0].condition[0].expression: FHIRPath does not compile"
        in result.stderr
    )
    assert "1 problem(s) found" in result.stderr


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        (
            {
                "p.json": with_condition(
                    "%Observation.where(code.inValueSet('https://example.org/ValueSet/none')).exists()"
                )
            },
            ["condition[0].expression", "https://example.org/ValueSet/none"],
        ),
        (
            {"p.json": with_condition("%Observation.code.memberOf('https://example.org/vs')")},
            ["memberOf", "inValueSet"],
        ),
        (
            {"p.json": with_condition("%Observation.value.quantityIn('furlong/fortnight') > 1")},
            ["furlong/fortnight"],
        ),
        ({"bad.units.json": {"conversions": [{"from": "mg", "to": "g"}]}}, ["bad.units.json"]),
        (
            {"p.json": with_condition("true", input=[{"id": "patient", "type": "Observation"}])},
            ["input[0].id: 'patient' cannot name a retrieve"],
        ),
        (
            {"p.json": with_condition("true", input=[{"id": "two-words", "type": "Observation"}])},
            ["'two-words' cannot name a retrieve"],
        ),
        (
            {
                "p.json": with_condition(
                    "true",
                    input=[
                        {
                            "id": "x",
                            "type": "Observation",
                            "codeFilter": [
                                {"path": "code", "valueSet": "https://example.org/ValueSet/none"}
                            ],
                        }
                    ],
                )
            },
            [
                "input[0].codeFilter[0].valueSet: ValueSet https://example.org/ValueSet/none cannot be expanded"
            ],
        ),
    ],
)
def test_engine_function_and_retrieve_problems(
    tmp_path: Path, files: dict[str, Any], expected: list[str]
) -> None:
    assert_reported(tmp_path, files, expected)


def test_a_variable_may_not_shadow_another_name(tmp_path: Path) -> None:
    shadowing = with_condition(
        "true",
        input=[{"id": "labs", "type": "Observation"}],
        extension=[
            {
                "url": VAR,
                "valueExpression": {"name": "labs", "language": "text/fhirpath", "expression": "1"},
            },
            {
                "url": VAR,
                "valueExpression": {
                    "name": "today",
                    "language": "text/fhirpath",
                    "expression": "1",
                },
            },
        ],
    )
    problems = problems_for(tmp_path, {"p.json": shadowing})
    assert any("variable 'labs' is already defined" in p for p in problems), problems
    assert any("variable 'today' is already defined" in p for p in problems), problems


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        (
            {
                "p.json": with_condition(
                    "true",
                    input=[
                        {
                            "id": "x",
                            "type": "Observation",
                            "codeFilter": [{"path": "code", "code": [{"code": "no-system"}]}],
                        }
                    ],
                )
            },
            ["codeFilter[0].code: every code needs a system and a code"],
        ),
        ({"p.json": with_condition("%resource.exists()")}, ["['resource']"]),
        (
            {"p.json": plan(action=[{"id": "same", "title": "a"}, {"id": "same", "title": "b"}])},
            ["PlanDefinition.action[1].id: action id 'same' is used twice"],
        ),
        (
            {
                "p.json": plan(
                    action=[{"title": "a", "trigger": [{"type": "data-changed", "name": "x"}]}]
                )
            },
            ["action[0].trigger[0]: only named-event triggers"],
        ),
        (
            {
                "p.json": plan(
                    action=[
                        {
                            "title": "a",
                            "action": [
                                {
                                    "title": "b",
                                    "trigger": [{"type": "named-event", "name": "patient-view"}],
                                }
                            ],
                        }
                    ]
                )
            },
            ["action[0].action[0].trigger[0]: triggers belong on top-level actions"],
        ),
        (
            {
                "p.json": plan(
                    extension=[
                        {
                            "url": "http://hl7.org/fhir/StructureDefinition/cqf-applicabilityBehavior",
                            "valueCode": "first",
                        }
                    ]
                )
            },
            ["PlanDefinition.extension[0]: valueCode must be any or all"],
        ),
    ],
)
def test_authoring_mistakes_are_reported(
    tmp_path: Path, files: dict[str, Any], expected: list[str]
) -> None:
    assert_reported(tmp_path, files, expected)


def test_a_wrong_parameter_value_is_one_problem(tmp_path: Path) -> None:
    library = {
        "resourceType": "Library",
        "url": "https://example.org/Library/l",
        "status": "active",
        "type": {"coding": [{"code": "logic-library"}]},
        "parameter": [{"name": "days", "use": "in", "type": "integer"}],
    }
    (tmp_path / "l.json").write_text(json.dumps(library))
    (tmp_path / "p.json").write_text(json.dumps(plan(library=[library["url"]])))
    with pytest.raises(KnowledgeError) as caught:
        load_catalogue([tmp_path], {"days": "many"})
    assert [p.reason for p in caught.value.problems] == [
        "'days' must be of type integer, not 'many'"
    ]


def test_a_retired_plan_is_not_served(tmp_path: Path) -> None:
    (tmp_path / "p.json").write_text(json.dumps(plan(status="retired")))
    assert load_catalogue([tmp_path]).services == {}


def test_date_filters_become_search_parameters(tmp_path: Path) -> None:
    resource = with_condition(
        "true",
        input=[
            {
                "id": "recent",
                "type": "Observation",
                "dateFilter": [
                    {
                        "path": "effective",
                        "searchParam": "date",
                        "valuePeriod": {"start": "2024-01-01", "end": "2024-12-31"},
                    }
                ],
            },
            {
                "id": "on",
                "type": "Procedure",
                "dateFilter": [{"path": "date", "valueDateTime": "2024-05-01"}],
            },
        ],
    )
    (tmp_path / "p.json").write_text(json.dumps(resource))
    service = load_catalogue([tmp_path]).services["test-plan"]
    assert service.prefetch == {
        "recent": "Observation?patient={{context.patientId}}&date=ge2024-01-01&date=le2024-12-31",
        "on": "Procedure?patient={{context.patientId}}&date=eq2024-05-01",
    }


def test_a_relative_date_filter_is_refused_with_the_reason(tmp_path: Path) -> None:
    relative = with_condition(
        "true",
        input=[
            {
                "id": "lastYear",
                "type": "Observation",
                "dateFilter": [{"path": "date", "valueDuration": {"value": 1, "code": "a"}}],
            }
        ],
    )
    problems = problems_for(tmp_path, {"p.json": relative})
    assert any("needs CDS Hooks 3.0 date tokens" in p for p in problems), problems


def test_a_dynamic_value_path_must_be_names_and_indexes(tmp_path: Path) -> None:
    bad = with_condition(
        "true",
        dynamicValue=[
            {
                "path": "note.where(x)",
                "expression": {"language": "text/fhirpath", "expression": "1"},
            }
        ],
    )
    assert_reported(
        tmp_path,
        {"p.json": bad},
        ["dynamicValue[0].path: a path is element names and [n] indexes only"],
    )


# Check digits: a code whose check digit fails is a typo and must not load, wherever it is.
SCT, LOINC = "http://snomed.info/sct", "http://loinc.org"


def value_set(**compose: Any) -> dict[str, Any]:
    return {
        "resourceType": "ValueSet",
        "url": "https://example.org/ValueSet/codes",
        "status": "active",
        **compose,
    }


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        (
            # A UK-extension id cut to 15 significant digits by a spreadsheet.
            {
                "vs.json": value_set(
                    compose={
                        "include": [{"system": SCT, "concept": [{"code": "1323351000000100"}]}]
                    }
                )
            },
            [
                "vs.json: ValueSet.compose.include[0].concept[0].code: SNOMED CT id "
                "1323351000000100 fails its Verhoeff check digit"
            ],
        ),
        (
            {
                "vs.json": value_set(
                    compose={
                        "include": [
                            {"system": LOINC, "concept": [{"code": "8099-4"}, {"code": "21668-1"}]}
                        ],
                        "exclude": [{"system": SCT, "concept": [{"code": "17369003"}]}],
                    }
                )
            },
            [
                "ValueSet.compose.include[0].concept[1].code: LOINC code 21668-1 fails its mod-10",
                "ValueSet.compose.exclude[0].concept[0].code: SNOMED CT id 17369003 fails",
            ],
        ),
        (
            # LOINC answer codes carry a check digit over the prefix too (LA15173-0 is right).
            {
                "vs.json": value_set(
                    expansion={
                        "timestamp": "2026-01-01",
                        "contains": [
                            {"system": LOINC, "code": "LA15173-0"},
                            {"system": LOINC, "code": "LA15173-1"},
                        ],
                    }
                )
            },
            ["vs.json: ValueSet.expansion.contains[1].code: LOINC code LA15173-1 fails"],
        ),
        (
            {
                "ad.json": {
                    "resourceType": "ActivityDefinition",
                    "url": "https://example.org/ActivityDefinition/a",
                    "status": "active",
                    "kind": "ServiceRequest",
                    "code": {"coding": [{"system": LOINC, "code": "24475-8"}]},
                }
            },
            ["ad.json: ActivityDefinition.code.coding[0].code: LOINC code 24475-8 fails"],
        ),
        (
            {
                "cm.json": {
                    "resourceType": "ConceptMap",
                    "url": "https://example.org/ConceptMap/m",
                    "status": "active",
                    "group": [
                        {
                            "source": "https://lab.example/codes",
                            "target": LOINC,
                            "element": [
                                {
                                    "code": "TPO",
                                    "target": [{"code": "8099-5", "equivalence": "equivalent"}],
                                }
                            ],
                        }
                    ],
                }
            },
            ["cm.json: ConceptMap.group[0].element[0].target[0].code: LOINC code 8099-5 fails"],
        ),
        (
            {"p.json": with_condition("true", input=[_requirement_with_code(SCT, "12345")])},
            ["PlanDefinition.action[0].input[0].codeFilter[0].code[0].code: SNOMED CT id '12345'"],
        ),
    ],
)
def test_a_code_with_a_wrong_check_digit_is_refused(
    tmp_path: Path, files: dict[str, Any], expected: list[str]
) -> None:
    assert_reported(tmp_path, files, expected)


def test_validate_command_names_file_and_element_of_a_wrong_check_digit(tmp_path: Path) -> None:
    bad = value_set(
        compose={
            "include": [
                {"system": SCT, "concept": [{"code": "77386006"}, {"code": "1323351000000100"}]}
            ]
        }
    )
    (tmp_path / "ValueSet-bleeding.json").write_text(json.dumps(bad))
    result = run_cli("validate", str(tmp_path))
    assert result.returncode == 1
    assert (
        "ValueSet-bleeding.json: ValueSet.compose.include[0].concept[1].code: SNOMED CT id "
        "1323351000000100 fails its Verhoeff check digit"
    ) in result.stderr
    assert "1 problem(s) found" in result.stderr


def test_right_check_digits_load(tmp_path: Path) -> None:
    """Codes with right check digits load: plain LOINC, LOINC answers, SNOMED CT (an 18-digit
    extension-form id too); systems without a check digit are not checked."""
    good = value_set(
        compose={
            "include": [
                {"system": LOINC, "concept": [{"code": "82810-3"}, {"code": "LA26683-5"}]},
                {"system": SCT, "concept": [{"code": "60001007"}, {"code": "999000011000000103"}]},
                {"system": "http://hl7.org/fhir/sid/icd-10-cm", "concept": [{"code": "O20.0"}]},
            ]
        }
    )
    (tmp_path / "vs.json").write_text(json.dumps(good))
    assert load_catalogue([tmp_path]).services == {}


def test_unit_spellings_normalise_written_forms_in_one_place() -> None:
    from service.engine.units import UnitTable

    table = {"conversions": [{"from": "u[IU]/mL", "to": "m[IU]/L", "factor": 1}]}
    spellings = {"spellings": {"µIU/mL": "u[IU]/mL", "mU/L": "m[IU]/L"}}
    units = UnitTable.from_documents(
        [(Path("t.units.json"), table), (Path("s.units.json"), spellings)]
    )
    assert not units.problems
    assert units.convert(5.5, "µIU/mL", "m[IU]/L") == Decimal("5.5")
    assert units.convertible("mU/L", "m[IU]/L")
    assert units.convert(1, "mIU/L", "m[IU]/L") is None  # not listed: not guessed


@pytest.mark.parametrize(
    ("spellings", "fragment"),
    [
        ({"GPL U/mL": "[GPL'U]/mL"}, "which no table knows"),
        ({"m[IU]/L": "m[IU]/L"}, "a UCUM code needs no spelling"),
        ({"x": "two words"}, "no spaces"),
    ],
)
def test_unit_spelling_problems(spellings: dict[str, str], fragment: str) -> None:
    from service.engine.units import UnitTable

    table = {"conversions": [{"from": "u[IU]/mL", "to": "m[IU]/L", "factor": 1}]}
    documents = [(Path("t.units.json"), table), (Path("s.units.json"), {"spellings": spellings})]
    problems = UnitTable.from_documents(documents).problems
    assert any(fragment in p.reason and p.file == Path("s.units.json") for p in problems), problems


def test_one_written_form_has_one_meaning() -> None:
    from service.engine.units import UnitTable

    table = {"conversions": [{"from": "u[IU]/mL", "to": "m[IU]/L", "factor": 1}]}
    documents = [
        (Path("t.units.json"), table),
        (Path("a.units.json"), {"spellings": {"mU/L": "m[IU]/L"}}),
        (Path("b.units.json"), {"spellings": {"mU/L": "u[IU]/mL"}}),
    ]
    problems = UnitTable.from_documents(documents).problems
    assert any("already means m[IU]/L" in p.reason for p in problems), problems


ROOT = Path(__file__).resolve().parent.parent
ORDERABLE_LIBRARY = ROOT / "plandefinitions" / "Library-orderable-code-systems.json"


def activity(kind: str, concept: dict[str, Any], name: str = "order-x") -> dict[str, Any]:
    element = "code" if kind == "ServiceRequest" else "productCodeableConcept"
    return {
        "resourceType": "ActivityDefinition",
        "url": f"https://example.org/ActivityDefinition/{name}",
        "status": "active",
        "kind": kind,
        element: concept,
    }


def test_validate_refuses_an_order_that_cannot_be_placed(tmp_path: Path) -> None:
    """With the bundled declaration of orderable systems, an order coded only by text or only in
    CPT is refused by `rpl-cds validate`, naming the file, element and the systems allowed."""
    (tmp_path / "Library-orderable.json").write_text(ORDERABLE_LIBRARY.read_text())
    text_only = activity("ServiceRequest", {"text": "Referral to genetic counselling"}, "a")
    cpt_only = activity(
        "ServiceRequest",
        {"coding": [{"system": "http://www.ama-assn.org/go/cpt", "code": "88230"}]},
        "b",
    )
    drug_text = activity("MedicationRequest", {"text": "Progesterone 400 mg pessary"}, "c")
    placeable = activity("ServiceRequest", {"coding": [{"system": LOINC, "code": "3016-3"}]}, "d")
    for name, resource in {"a": text_only, "b": cpt_only, "c": drug_text, "d": placeable}.items():
        (tmp_path / f"ActivityDefinition-{name}.json").write_text(json.dumps(resource))
    result = run_cli("validate", str(tmp_path))
    assert result.returncode == 1
    assert (
        "ActivityDefinition-a.json: ActivityDefinition.code: the order cannot be placed: no coding"
        " from a system orderable for ServiceRequest (http://loinc.org, http://snomed.info/sct);"
        " it has no coding"
    ) in result.stderr
    assert "ActivityDefinition-b.json: ActivityDefinition.code:" in result.stderr
    assert "it has http://www.ama-assn.org/go/cpt" in result.stderr
    assert (
        "ActivityDefinition-c.json: ActivityDefinition.productCodeableConcept: the order cannot"
        " be placed" in result.stderr
    )
    assert "ActivityDefinition-d.json" not in result.stderr
    assert "3 problem(s) found" in result.stderr


def test_orderable_systems_are_knowledge(tmp_path: Path) -> None:
    """The systems come from the loaded declaration, not the engine: without any declaration
    nothing is checked; a declaration that names only ServiceRequest leaves a MedicationRequest
    order unplaceable; a malformed declaration is a problem of its own."""
    drug = activity("MedicationRequest", {"text": "aspirin"})
    (tmp_path / "ActivityDefinition-x.json").write_text(json.dumps(drug))
    assert load_catalogue([tmp_path]).services == {}
    declaration = json.loads(ORDERABLE_LIBRARY.read_text())
    declaration["extension"] = [
        e
        for e in declaration["extension"]
        if {"url": "kind", "valueCode": "ServiceRequest"} in e["extension"]
    ] + [{"url": declaration["extension"][0]["url"], "extension": [{"url": "kind"}]}]
    assert_reported(
        tmp_path,
        {"Library-orderable.json": declaration},
        [
            "ActivityDefinition-x.json: ActivityDefinition.productCodeableConcept: no loaded "
            "knowledge declares the code systems orderable for MedicationRequest",
            "Library-orderable.json: Library.extension[2]: 'kind' must be a valueCode",
        ],
    )


def test_every_bundled_order_is_placeable() -> None:
    """Each bundled ActivityDefinition carries a coding from a declared orderable system (the
    load check above, run on the shipped knowledge, with the codes spelt out)."""
    declared: dict[str, set[str]] = {}
    for extension in json.loads(ORDERABLE_LIBRARY.read_text())["extension"]:
        parts = {p["url"]: p for p in extension["extension"]}
        declared.setdefault(parts["kind"]["valueCode"], set()).add(parts["system"]["valueUri"])
    files = sorted((ROOT / "plandefinitions").glob("ActivityDefinition-*.json"))
    assert files
    for file in files:
        resource = json.loads(file.read_text())
        element = "code" if resource["kind"] == "ServiceRequest" else "productCodeableConcept"
        systems = {c["system"] for c in resource[element].get("coding", []) if c.get("code")}
        assert systems & declared[resource["kind"]], file.name
