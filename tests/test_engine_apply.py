"""$apply semantics on small hand-written PlanDefinitions (no clinical content), through the
`POST /PlanDefinition/{id}/$apply` operation and, for cards, through a CDS service call."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from fhir.resources.R4B.requestgroup import RequestGroup
from support.calls import assert_no_empty_fields, assert_outcome
from support.knowledge import applies, fp, variable

REPEAT_TEST = {
    "resourceType": "ActivityDefinition",
    "url": "https://example.org/ActivityDefinition/repeat",
    "status": "active",
    "kind": "ServiceRequest",
    "code": {"coding": [{"system": "https://example.org/tests", "code": "T1"}]},
    "dynamicValue": [
        {"path": "note[0].text", "expression": fp("'Repeat of ' + %context.patientId")}
    ],
}
ALTERNATIVE = {
    "resourceType": "ActivityDefinition",
    "url": "https://example.org/ActivityDefinition/alternative",
    "status": "active",
    "kind": "MedicationRequest",
    "productCodeableConcept": {"text": "the alternative"},
}

PLAN = {
    "resourceType": "PlanDefinition",
    "id": "engine-demo",
    "url": "https://example.org/PlanDefinition/engine-demo",
    "status": "active",
    "description": "Engine semantics",
    "extension": [
        variable("results", "%Observation.where(status = 'final')"),
        variable("firstPositive", "%results.where(interpretation.coding.code = 'POS').first()"),
    ],
    "action": [
        {
            "id": "positive",
            "title": "static title",
            "trigger": [{"type": "named-event", "name": "patient-view"}],
            "extension": [variable("when", "%firstPositive.effective")],
            "condition": applies("%firstPositive.exists()"),
            "dynamicValue": [
                {"path": "title", "expression": fp("'Positive on ' + %when")},
                {"path": "description", "expression": fp("%results.select(code.text)")},
                {
                    "path": "priority",
                    "expression": fp("iif(%results.count() > 1, 'urgent', 'routine')"),
                },
                {"path": "timingDateTime", "expression": fp("%when")},
            ],
            "action": [
                {
                    "id": "child-sees-parent",
                    "title": "child",
                    "condition": applies("%when.exists()"),
                }
            ],
        },
        {
            "id": "repeat",
            "title": "Repeat the test",
            "definitionCanonical": REPEAT_TEST["url"],
            "relatedAction": [
                {
                    "actionId": "positive",
                    "relationship": "after-start",
                    "offsetDuration": {
                        "value": 12,
                        "code": "wk",
                        "system": "http://unitsofmeasure.org",
                    },
                }
            ],
            "condition": applies("%firstPositive.exists()"),
            "dynamicValue": [{"path": "priority", "expression": fp("'asap'")}],
        },
        {
            "id": "other-hook-only",
            "title": "only on order-sign",
            "trigger": [{"type": "named-event", "name": "order-sign"}],
        },
        {
            "id": "broken",
            "title": "fails at run time",
            "condition": applies("%results.single().exists()"),
        },
    ],
}

ORDERS = {
    "resourceType": "PlanDefinition",
    "id": "orders-demo",
    "url": "https://example.org/PlanDefinition/orders-demo",
    "status": "active",
    "description": "Replace a draft order",
    "extension": [variable("bad", "%context.draftOrders.entry.resource.where(code.text = 'bad')")],
    "action": [
        {
            "id": "replace",
            "title": "Replace the bad order",
            "priority": "urgent",
            "trigger": [{"type": "named-event", "name": "order-sign"}],
            "condition": applies("%bad.exists()"),
            "selectionBehavior": "at-most-one",
            "action": [
                {
                    "id": "swap",
                    "title": "Cancel it and order the alternative",
                    "action": [
                        {
                            "id": "cancel",
                            "title": "Cancel the bad order",
                            "type": {
                                "coding": [
                                    {
                                        "system": "http://terminology.hl7.org/CodeSystem/action-type",
                                        "code": "remove",
                                    }
                                ]
                            },
                            "dynamicValue": [{"path": "resource", "expression": fp("%bad")}],
                        },
                        {
                            "id": "order",
                            "title": "Order the alternative",
                            "definitionCanonical": ALTERNATIVE["url"],
                        },
                    ],
                }
            ],
        }
    ],
}


@pytest.fixture
def knowledge(tmp_path: Path) -> Path:
    directory = tmp_path / "engine"
    directory.mkdir()
    for name, resource in {
        "plan.json": PLAN,
        "orders.json": ORDERS,
        "repeat.json": REPEAT_TEST,
        "alt.json": ALTERNATIVE,
    }.items():
        (directory / name).write_text(json.dumps(resource))
    return directory


def observation(oid: str, when: str, interpretation: str, status: str = "final") -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": oid,
        "status": status,
        "code": {"text": f"test {oid}"},
        "effectiveDateTime": when,
        "interpretation": [{"coding": [{"code": interpretation}]}],
    }


def parameters(*resources: dict[str, Any], **strings: str) -> dict[str, Any]:
    params: list[dict[str, Any]] = [{"name": "subject", "valueString": "Patient/p1"}]
    params += [{"name": name, "valueString": value} for name, value in strings.items()]
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"resource": r} for r in resources],
    }
    params.append({"name": "data", "resource": bundle})
    return {"resourceType": "Parameters", "parameter": params}


async def apply(client: httpx.AsyncClient, plan: str, body: dict[str, Any]) -> dict[str, Any]:
    response = await client.post(f"/PlanDefinition/{plan}/$apply", json=body)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/fhir+json"
    group: dict[str, Any] = response.json()
    RequestGroup.model_validate(group)  # a valid R4 resource, not just a dict
    return group


async def test_variables_dynamic_values_and_related_timing(
    make_client: Any, knowledge: Path
) -> None:
    data = [
        observation("o1", "2025-01-10", "POS"),
        observation("o2", "2025-03-01", "NEG"),
        observation("o3", "2024-12-01", "POS", status="preliminary"),
    ]
    async with make_client(knowledge_dirs=[knowledge], return_trace=True) as client:
        group = await apply(client, "engine-demo", parameters(*data, hook="patient-view"))

    actions = {a["id"]: a for a in group["action"]}
    assert set(actions) == {"positive", "repeat"}  # other hook filtered, broken not applicable
    positive = actions["positive"]
    assert positive["title"] == "Positive on 2025-01-10"
    assert positive["description"] == "test o1\ntest o2"
    assert positive["priority"] == "urgent"
    assert positive["timingDateTime"] == "2025-01-10"
    assert [c["id"] for c in positive["action"]] == ["child-sees-parent"]

    repeat = actions["repeat"]
    assert repeat["timingDateTime"] == "2025-04-04"  # 12 weeks after the positive result
    created = {r["id"]: r for r in group["contained"]}[repeat["resource"]["reference"][1:]]
    assert created["occurrenceDateTime"] == "2025-04-04"
    assert created["note"] == [{"text": "Repeat of p1"}]
    assert created["status"] == "draft"
    assert created["intent"] == "proposal"
    assert repeat["priority"] == "asap"

    trace = {entry["action"]: entry for entry in json.loads(group["extension"][0]["valueString"])}
    assert trace["PlanDefinition"]["inputs"][:2] == ["Observation/o1", "Observation/o2"]
    # A run-time error makes the action not applicable and is said in the trace.
    assert "single() called on 2 items" in trace["PlanDefinition.action[3]"]["error"]
    assert trace["PlanDefinition.action[3]"]["applied"] is False


async def test_no_hook_applies_every_action_and_nothing_needs_data(
    make_client: Any, knowledge: Path
) -> None:
    async with make_client(knowledge_dirs=[knowledge]) as client:
        everything = await apply(
            client, "engine-demo", parameters(observation("o1", "2025-01-10", "POS"))
        )
        empty = await apply(client, "engine-demo", parameters())
    # With one result, single() is fine, so "broken" applies too.
    assert {a["id"] for a in everything["action"]} == {
        "positive",
        "repeat",
        "other-hook-only",
        "broken",
    }
    assert {a["id"] for a in empty["action"]} == {"other-hook-only"}


async def test_a_suggestion_deletes_the_draft_order_it_replaces(
    make_client: Any, knowledge: Path
) -> None:
    draft = {
        "resourceType": "ServiceRequest",
        "id": "d1",
        "status": "draft",
        "intent": "order",
        "code": {"text": "bad"},
        "subject": {"reference": "Patient/p1"},
    }
    fine = {**draft, "id": "d2", "code": {"text": "fine"}}
    request = {
        "hook": "order-sign",
        "hookInstance": str(uuid.uuid4()),
        "context": {
            "userId": "Practitioner/1",
            "patientId": "p1",
            "draftOrders": {
                "resourceType": "Bundle",
                "type": "collection",
                "entry": [{"resource": draft}, {"resource": fine}],
            },
        },
    }
    async with make_client(knowledge_dirs=[knowledge]) as client:
        body = (await client.post("/cds-services/orders-demo", json=request)).json()
    assert_no_empty_fields(body["cards"], "cards")
    (card,) = body["cards"]
    assert card["indicator"] == "warning"
    (suggestion,) = card["suggestions"]
    assert [a["type"] for a in suggestion["actions"]] == ["delete", "create"]
    assert suggestion["actions"][0] == {
        "type": "delete",
        "description": "Cancel the bad order",
        "resourceId": "ServiceRequest/d1",
    }
    assert suggestion["actions"][1]["resource"]["medicationCodeableConcept"] == {
        "text": "the alternative"
    }


@pytest.mark.parametrize(
    ("body", "status", "mentions"),
    [
        ({"resourceType": "Bundle"}, 400, "Parameters"),
        ({"resourceType": "Parameters", "parameter": []}, 400, "subject"),
        (
            {
                "resourceType": "Parameters",
                "parameter": [{"name": "subject", "valueString": "Group/1"}],
            },
            400,
            "subject",
        ),
        (
            {
                "resourceType": "Parameters",
                "parameter": [
                    {"name": "subject", "valueString": "Patient/1"},
                    {"name": "nonsense", "valueString": "x"},
                ],
            },
            400,
            "parameter.1.name",
        ),
        (
            {
                "resourceType": "Parameters",
                "parameter": [
                    {"name": "subject", "valueString": "Patient/1"},
                    {"name": "data", "resource": {"resourceType": "Patient"}},
                ],
            },
            400,
            "Bundle",
        ),
    ],
)
async def test_apply_rejects_bad_parameters(
    make_client: Any, knowledge: Path, body: dict[str, Any], status: int, mentions: str
) -> None:
    async with make_client(knowledge_dirs=[knowledge]) as client:
        response = await client.post("/PlanDefinition/engine-demo/$apply", json=body)
    assert_outcome(response, status, mentions)


async def test_apply_unknown_plan_is_404(client: httpx.AsyncClient) -> None:
    response = await client.post("/PlanDefinition/nope/$apply", json=parameters())
    assert_outcome(response, 404, "nope")


@pytest.mark.parametrize(
    "body",
    [
        {"resourceType": "Parameters", "parameter": None},
        {"resourceType": "Parameters", "parameter": [None]},
        {
            "resourceType": "Parameters",
            "parameter": [
                {"name": "subject", "valueString": "Patient/1"},
                {"name": "subject", "valueString": "Patient/2"},
            ],
        },
        [],
        "Parameters",
    ],
)
async def test_apply_rejects_malformed_bodies_with_400(
    client: httpx.AsyncClient, body: Any
) -> None:
    response = await client.post("/PlanDefinition/rpl-workup/$apply", json=body)
    assert_outcome(response, 400, "Parameters")


TERMINOLOGY = {
    "vs.json": {
        "resourceType": "ValueSet",
        "url": "https://example.org/ValueSet/a1c",
        "status": "active",
        "compose": {
            "include": [
                {"system": "http://loinc.org", "concept": [{"code": "4548-4"}, {"code": "59261-8"}]}
            ]
        },
    },
    "cm.json": {
        "resourceType": "ConceptMap",
        "url": "https://example.org/ConceptMap/local-lab",
        "status": "active",
        "group": [
            {
                "source": "https://lab.example/codes",
                "target": "http://loinc.org",
                "element": [
                    {"code": "A1C", "target": [{"code": "4548-4", "equivalence": "equivalent"}]}
                ],
            }
        ],
    },
    "lab.units.json": {
        "conversions": [{"from": "mmol/mol", "to": "%", "factor": 0.0915, "offset": 2.15}]
    },
    "plan.json": {
        "resourceType": "PlanDefinition",
        "id": "functions-demo",
        "url": "https://example.org/PlanDefinition/functions-demo",
        "status": "active",
        "description": "Engine functions inside knowledge",
        "extension": [
            variable(
                "a1c",
                "%Observation.where(code.inValueSet('https://example.org/ValueSet/a1c')).latest()",
            ),
            variable("percent", "%a1c.value.quantityIn('%')"),
        ],
        "action": [
            {
                "id": "high",
                "title": "High",
                "condition": applies("%percent >= 6.5"),
                "dynamicValue": [
                    {
                        "path": "description",
                        "expression": fp(
                            "'Latest ' + %percent.round(1).toString() + ' % on ' + %a1c.clinicalDate() + ', ' + %a1c.clinicalDate().daysBetween(@2026-01-01).toString() + ' days before 2026'"
                        ),
                    }
                ],
            },
            {
                "id": "no-unit",
                "title": "No usable unit",
                "condition": applies(
                    "%a1c.value.exists() and %a1c.value.convertibleTo('%') != true"
                ),
            },
        ],
    },
}


def a1c(
    oid: str, when: str, value: float, unit: str | None, code: tuple[str, str]
) -> dict[str, Any]:
    quantity: dict[str, Any] = {"value": value}
    if unit:
        quantity |= {"unit": unit, "system": "http://unitsofmeasure.org", "code": unit}
    return {
        "resourceType": "Observation",
        "id": oid,
        "status": "final",
        "code": {"coding": [{"system": code[0], "code": code[1]}]},
        "effectiveDateTime": when,
        "valueQuantity": quantity,
    }


LOINC_A1C = ("http://loinc.org", "4548-4")
LOCAL_A1C = ("https://lab.example/codes", "A1C")


@pytest.mark.parametrize(
    ("observations", "expected", "description"),
    [
        # the latest, locally coded, in mmol/mol: 48 mmol/mol is 6.54 %
        (
            [
                a1c("old", "2025-01-01", 5.0, "%", LOINC_A1C),
                a1c("new", "2025-12-22", 48, "mmol/mol", LOCAL_A1C),
            ],
            {"high"},
            "Latest 6.5 % on 2025-12-22, 10 days before 2026",
        ),
        ([a1c("low", "2025-12-22", 5.9, "%", LOINC_A1C)], set(), None),
        ([a1c("unitless", "2025-12-22", 7.2, None, LOINC_A1C)], {"no-unit"}, None),
        ([a1c("other", "2025-12-22", 9.9, "%", ("http://loinc.org", "2345-7"))], set(), None),
    ],
)
async def test_engine_functions_inside_knowledge(
    make_client: Any,
    tmp_path: Path,
    observations: list[dict[str, Any]],
    expected: set[str],
    description: str | None,
) -> None:
    directory = tmp_path / "functions"
    directory.mkdir()
    for name, resource in TERMINOLOGY.items():
        (directory / name).write_text(json.dumps(resource))
    async with make_client(knowledge_dirs=[directory]) as client:
        group = await apply(client, "functions-demo", parameters(*observations))
    actions = {a["id"]: a for a in group.get("action", [])}
    assert set(actions) == expected
    if description:
        assert actions["high"]["description"] == description


async def test_named_data_requirements_are_bound_as_retrieves(
    make_client: Any, tmp_path: Path
) -> None:
    """`action.input` with an id is both a prefetch template and `%<id>`: the resources of that
    type coded in the ValueSet (local codes translated), selected without FHIRPath filtering."""
    directory = tmp_path / "retrieves"
    directory.mkdir()
    for name in ("vs.json", "cm.json"):
        (directory / name).write_text(json.dumps(TERMINOLOGY[name]))
    plan = {
        "resourceType": "PlanDefinition",
        "id": "retrieve-demo",
        "url": "https://example.org/PlanDefinition/retrieve-demo",
        "status": "active",
        "description": "Retrieves",
        "action": [
            {
                "id": "count",
                "title": "Counted",
                "trigger": [{"type": "named-event", "name": "patient-view"}],
                "input": [
                    {
                        "id": "a1cs",
                        "type": "Observation",
                        "codeFilter": [
                            {"path": "code", "valueSet": "https://example.org/ValueSet/a1c"}
                        ],
                    },
                    {"id": "allConditions", "type": "Condition"},
                ],
                "condition": applies("%a1cs.exists()"),
                "dynamicValue": [
                    {
                        "path": "description",
                        "expression": fp(
                            "%a1cs.id.join(',') + ' / ' + %allConditions.count().toString()"
                        ),
                    }
                ],
            }
        ],
    }
    (directory / "plan.json").write_text(json.dumps(plan))
    data = [
        a1c("local", "2025-01-01", 48, "mmol/mol", LOCAL_A1C),
        a1c("other", "2025-01-02", 1, "%", ("http://loinc.org", "2345-7")),
        a1c("loinc", "2025-01-03", 6, "%", LOINC_A1C),
        {"resourceType": "Condition", "id": "c1"},
    ]
    async with make_client(knowledge_dirs=[directory]) as client:
        discovery = (await client.get("/cds-services")).json()["services"][0]
        group = await apply(client, "retrieve-demo", parameters(*data))
    assert group["action"][0]["description"] == "local,loinc / 1"
    assert discovery["prefetch"]["a1cs"] == (
        "Observation?patient={{context.patientId}}"
        "&code=http://loinc.org|4548-4,http://loinc.org|59261-8,https://lab.example/codes|A1C"
    )
    assert discovery["prefetch"]["allConditions"] == "Condition?patient={{context.patientId}}"


LIBRARY = {
    "resourceType": "Library",
    "url": "https://example.org/Library/params",
    "status": "active",
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
            "name": "lookbackDays",
            "use": "in",
            "type": "integer",
            "extension": [
                {
                    "url": "http://hl7.org/fhir/StructureDefinition/cqf-defaultValue",
                    "valueInteger": 365,
                }
            ],
        },
        {"name": "label", "use": "in", "type": "string"},
    ],
}
PARAMETER_PLAN = {
    "resourceType": "PlanDefinition",
    "id": "parameter-demo",
    "url": "https://example.org/PlanDefinition/parameter-demo",
    "status": "active",
    "description": "Parameters",
    "library": [LIBRARY["url"]],
    "action": [
        {
            "id": "show",
            "title": "show",
            "dynamicValue": [
                {"path": "title", "expression": fp("%label + ' ' + %lookbackDays.toString()")}
            ],
        }
    ],
}


def parameter_knowledge(tmp_path: Path) -> Path:
    directory = tmp_path / "parameters"
    directory.mkdir()
    (directory / "library.json").write_text(json.dumps(LIBRARY))
    (directory / "plan.json").write_text(json.dumps(PARAMETER_PLAN))
    return directory


async def test_parameters_take_defaults_and_settings(make_client: Any, tmp_path: Path) -> None:
    directory = parameter_knowledge(tmp_path)
    async with make_client(knowledge_dirs=[directory], parameters={"label": "lookback"}) as client:
        default = await apply(client, "parameter-demo", parameters())
    async with make_client(
        knowledge_dirs=[directory], parameters={"label": "days", "lookbackDays": 90}
    ) as client:
        configured = await apply(client, "parameter-demo", parameters())
    assert default["action"][0]["title"] == "lookback 365"
    assert configured["action"][0]["title"] == "days 90"


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({}, "'label' has no default and RPL_CDS_PARAMETERS does not set it"),
        ({"label": "x", "lookbackDays": "a year"}, "'lookbackDays' must be of type integer"),
        ({"label": "x", "lookbackDays": True}, "'lookbackDays' must be of type integer"),
        (
            {"label": "x", "unknown": 1},
            "RPL_CDS_PARAMETERS: unknown: no loaded Library declares this parameter",
        ),
    ],
)
def test_parameter_settings_are_checked_at_load(
    tmp_path: Path, settings: dict[str, Any], expected: str
) -> None:
    from service.engine.knowledge import load_knowledge
    from service.engine.problems import KnowledgeError

    with pytest.raises(KnowledgeError) as caught:
        load_knowledge([parameter_knowledge(tmp_path)], settings)
    assert any(expected in str(problem) for problem in caught.value.problems), caught.value.problems


async def test_applicability_behavior_any_keeps_the_first_applicable(
    make_client: Any, tmp_path: Path
) -> None:
    behavior = "http://hl7.org/fhir/StructureDefinition/cqf-applicabilityBehavior"
    plan = {
        "resourceType": "PlanDefinition",
        "id": "first-match",
        "url": "https://example.org/PlanDefinition/first-match",
        "status": "active",
        "description": "First match",
        "action": [
            {
                "id": "chain",
                "title": "chain",
                "extension": [{"url": behavior, "valueCode": "any"}],
                "action": [
                    {"id": "no", "title": "no", "condition": applies("false")},
                    {"id": "first", "title": "first", "condition": applies("true")},
                    {"id": "second", "title": "second", "condition": applies("true")},
                ],
            },
            {
                "id": "all",
                "title": "all",
                "action": [{"id": "x", "title": "x"}, {"id": "y", "title": "y"}],
            },
        ],
    }
    directory = tmp_path / "first"
    directory.mkdir()
    (directory / "plan.json").write_text(json.dumps(plan))
    async with make_client(knowledge_dirs=[directory]) as client:
        group = await apply(client, "first-match", parameters())
    chain, every = group["action"]
    assert [a["id"] for a in chain["action"]] == ["first"]
    assert [a["id"] for a in every["action"]] == ["x", "y"]


async def test_activity_dynamic_values_set_the_resource_and_fail_safely(
    make_client: Any, tmp_path: Path
) -> None:
    activity = {
        "resourceType": "ActivityDefinition",
        "url": "https://example.org/ActivityDefinition/dyn",
        "status": "active",
        "kind": "ServiceRequest",
        "code": {"text": "a test"},
        "dynamicValue": [
            {
                "path": "priority",
                "expression": fp("iif(%Observation.count() > 1, 'urgent', 'routine')"),
            },
            {"path": "ServiceRequest.note[0].text", "expression": fp("%Observation.single().id")},
        ],
    }
    plan = {
        "resourceType": "PlanDefinition",
        "id": "dyn",
        "url": "https://example.org/PlanDefinition/dyn",
        "status": "active",
        "description": "Activity dynamic values",
        "action": [
            {"id": "order", "title": "Order", "definitionCanonical": activity["url"]},
            {
                "id": "codes",
                "title": "Codes",
                "condition": applies(
                    "%sct = 'http://snomed.info/sct' and %loinc = 'http://loinc.org'"
                ),
            },
            {
                "id": "categorised",
                "title": "Categorised",
                "input": [
                    {
                        "id": "vitals",
                        "type": "Observation",
                        "codeFilter": [
                            {
                                "path": "category",
                                "code": [{"system": "https://example.org/cat", "code": "vital"}],
                            }
                        ],
                    }
                ],
                "condition": applies("%vitals.exists()"),
            },
        ],
    }
    directory = tmp_path / "dyn"
    directory.mkdir()
    (directory / "a.json").write_text(json.dumps(activity))
    (directory / "p.json").write_text(json.dumps(plan))
    one = {
        "resourceType": "Observation",
        "id": "o1",
        "status": "final",
        "code": {"text": "x"},
        "category": [{"coding": [{"system": "https://example.org/cat", "code": "vital"}]}],
    }
    two = {
        **one,
        "id": "o2",
        "category": [{"coding": [{"system": "https://example.org/cat", "code": "lab"}]}],
    }
    async with make_client(knowledge_dirs=[directory], return_trace=True) as client:
        single = await apply(client, "dyn", parameters(one))
        failing = await apply(client, "dyn", parameters(one, two))
    order = single["contained"][0]
    assert order["priority"] == "routine"
    assert order["note"] == [{"text": "o1"}]
    assert [a["id"] for a in single["action"]] == ["order", "codes", "categorised"]
    # single() over two results fails: that action is left out, the call still answers.
    assert [a["id"] for a in failing["action"]] == ["codes", "categorised"]
    assert "contained" not in failing
    trace = {e["action"]: e for e in json.loads(failing["extension"][0]["valueString"])}
    assert "single() called on 2 items" in trace["PlanDefinition.action[0]"]["error"]
