"""The RequestGroup -> card mapping on a small hand-written PlanDefinition (not the RPL content),
through real HTTP: suggestions, selectionBehavior, create actions from ActivityDefinitions, links,
override reasons, priority -> indicator, summary length."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from support.calls import assert_no_empty_fields
from support.knowledge import VAR, fp

from service.settings import bundled_knowledge_dirs

OVERRIDE = "https://fhir.rpl-cds.org/StructureDefinition/cds-override-reason"
RECOMMENDED = "https://fhir.rpl-cds.org/StructureDefinition/cds-is-recommended"
TOPICS = "https://example.org/CodeSystem/topics"


ACTIVITY = {
    "resourceType": "ActivityDefinition",
    "url": "https://example.org/ActivityDefinition/a1c",
    "status": "active",
    "kind": "ServiceRequest",
    "code": {"coding": [{"system": "http://loinc.org", "code": "4548-4"}]},
}
MEDICATION = {
    "resourceType": "ActivityDefinition",
    "url": "https://example.org/ActivityDefinition/med",
    "status": "active",
    "kind": "MedicationRequest",
    "productCodeableConcept": {"text": "some medication"},
    "dosage": [{"text": "once daily"}],
}
PLAN = {
    "resourceType": "PlanDefinition",
    "id": "demo",
    "url": "https://example.org/PlanDefinition/demo",
    "status": "active",
    "title": "Demo",
    "description": "A demonstration service",
    "extension": [
        {"url": VAR, "valueExpression": {"name": "age", **fp("%patient.birthDate.exists()")}}
    ],
    "action": [
        {
            "id": "choose",
            "title": "Choose one test " + "padding " * 30,
            "description": "Pick **one**.",
            "priority": "stat",
            "code": [{"coding": [{"system": TOPICS, "code": "choose", "display": "Choose"}]}],
            "selectionBehavior": "exactly-one",
            "documentation": [
                {
                    "type": "citation",
                    "display": "A guideline",
                    "url": "https://example.org/guideline",
                },
                {"type": "documentation", "display": "More", "url": "https://example.org/more"},
            ],
            "extension": [
                {
                    "url": OVERRIDE,
                    "valueCoding": {"system": TOPICS, "code": "no", "display": "Not now"},
                },
                {"url": OVERRIDE, "valueCoding": {"system": TOPICS, "code": "nodisplay"}},
            ],
            "trigger": [{"type": "named-event", "name": "patient-view"}],
            "condition": [{"kind": "applicability", "expression": fp("%age")}],
            "action": [
                {
                    "id": "lab",
                    "title": "Order the lab",
                    "definitionCanonical": ACTIVITY["url"],
                    "extension": [{"url": RECOMMENDED, "valueBoolean": True}],
                },
                {
                    "id": "med",
                    "title": "Prescribe",
                    "description": "Start it",
                    "definitionCanonical": MEDICATION["url"],
                },
                {
                    "id": "never",
                    "title": "Not applicable",
                    "condition": [{"kind": "applicability", "expression": fp("false")}],
                },
            ],
        },
        {
            "id": "plain",
            "title": "Info only",
            "priority": "urgent",
            "condition": [
                {"kind": "applicability", "expression": fp("%patient.gender = 'female'")}
            ],
        },
    ],
}


@pytest.fixture
def demo_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "demo"
    directory.mkdir()
    for name, resource in {"plan.json": PLAN, "a.json": ACTIVITY, "m.json": MEDICATION}.items():
        (directory / name).write_text(json.dumps(resource))
    return directory


def call(prefetch: dict[str, Any]) -> dict[str, Any]:
    return {
        "hook": "patient-view",
        "hookInstance": str(uuid.uuid4()),
        "context": {"userId": "Practitioner/1", "patientId": "p1", "encounterId": "e1"},
        "prefetch": prefetch,
    }


async def test_a_plan_without_data_requirements_gets_no_patient(
    make_client: Any, demo_dir: Path
) -> None:
    async with make_client(knowledge_dirs=[demo_dir, *bundled_knowledge_dirs()[1:]]) as client:
        discovery = (await client.get("/cds-services")).json()
        response = await client.post("/cds-services/demo", json=call({}))
    assert [s["id"] for s in discovery["services"]] == ["demo"]
    assert "prefetch" not in discovery["services"][0]
    assert response.json() == {"cards": []}  # no patient: %age is false, gender is empty


async def test_suggestions_and_their_resources(make_client: Any, demo_dir: Path) -> None:
    plan = json.loads((demo_dir / "plan.json").read_text())
    plan["action"][0]["input"] = [{"id": "patient", "type": "Patient"}]
    (demo_dir / "plan.json").write_text(json.dumps(plan))
    patient = {"resourceType": "Patient", "id": "p1", "birthDate": "1990-01-01", "gender": "female"}
    request = call({"patient": patient})
    async with make_client(knowledge_dirs=[demo_dir]) as client:
        body = (await client.post("/cds-services/demo", json=request)).json()
    assert_no_empty_fields(body["cards"], "cards")
    choose, plain = body["cards"]

    assert len(choose["summary"]) < 140
    assert choose["summary"].endswith("…")
    assert choose["indicator"] == "critical"
    assert plain["indicator"] == "warning"
    assert choose["detail"] == "Pick **one**."
    assert choose["source"] == {
        "label": "A guideline",
        "url": "https://example.org/guideline",
        "topic": {"system": TOPICS, "code": "choose", "display": "Choose"},
    }
    assert {link["url"] for link in choose["links"]} == {
        "https://example.org/guideline",
        "https://example.org/more",
    }
    assert all(link["type"] == "absolute" for link in choose["links"])
    # A reason without a display is left out: CDS Hooks requires one on each.
    assert choose["overrideReasons"] == [{"system": TOPICS, "code": "no", "display": "Not now"}]

    assert choose["selectionBehavior"] == "at-most-one"
    lab, med = choose["suggestions"]
    assert lab["label"] == "Order the lab"
    assert lab["isRecommended"] is True
    created = lab["actions"][0]
    assert created["type"] == "create"
    assert created["description"] == "Order the lab"
    assert created["resource"] == {
        "resourceType": "ServiceRequest",
        "status": "draft",
        "intent": "proposal",
        "subject": {"reference": "Patient/p1"},
        "encounter": {"reference": "Encounter/e1"},
        "instantiatesCanonical": [ACTIVITY["url"]],
        "code": ACTIVITY["code"],
    }
    medication = med["actions"][0]["resource"]
    assert medication["resourceType"] == "MedicationRequest"
    assert medication["medicationCodeableConcept"] == {"text": "some medication"}
    assert medication["dosageInstruction"] == [{"text": "once daily"}]
    assert med["actions"][0]["description"] == "Start it"
    assert len({choose["uuid"], plain["uuid"], lab["uuid"], med["uuid"]}) == 4
    assert "suggestions" not in plain
    assert "selectionBehavior" not in plain
