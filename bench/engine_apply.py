"""Engine micro-benchmark: $apply of a 40-action PlanDefinition over a 200-resource record.

Issue target: median at most 3 ms on the project machine (2 cores). Prints figures; asserts
nothing (timings belong here, not in the test suite).

    .venv/bin/python bench/engine_apply.py [--actions 40] [--resources 200] [--runs 300]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

from service.engine.apply import Subject, apply_plan
from service.engine.knowledge import load_knowledge

VAR = "http://hl7.org/fhir/StructureDefinition/variable"
SYSTEM = "https://example.org/codes"


def fp(expression: str) -> dict[str, str]:
    return {"language": "text/fhirpath", "expression": expression}


def knowledge(directory: Path, actions: int, style: str = "retrieve") -> None:
    """A PlanDefinition shaped like real rules: each action reads the resources of one type coded
    in a ValueSet, takes the latest, reads a converted value or a date, and compares. `retrieve`
    declares the data as a named requirement (%m0...); `where` filters in FHIRPath (slow)."""
    value_sets = []
    for index in range(actions):
        value_sets.append(
            {
                "resourceType": "ValueSet",
                "url": f"https://example.org/ValueSet/vs{index}",
                "status": "active",
                "compose": {
                    "include": [
                        {
                            "system": SYSTEM,
                            "concept": [{"code": f"c{index}"}, {"code": f"c{index + 1}"}],
                        }
                    ]
                },
            }
        )
    plan_actions = []
    for index in range(actions):
        resource_type = ("Observation", "Condition", "Procedure", "MedicationRequest")[index % 4]
        value_set = f"https://example.org/ValueSet/vs{index}"
        name = f"m{index}"
        if resource_type == "Observation":
            condition = f"%{name}.latest().value.quantityIn('mg/dL') > 50"
        else:
            condition = (
                f"%{name}.exists() and %{name}.latest().clinicalDate().daysBetween(%today) < 365"
            )
        action: dict[str, Any] = {
            "id": f"a{index}",
            "title": f"Action {index}",
            "condition": [{"kind": "applicability", "expression": fp(condition)}],
            "dynamicValue": [
                {
                    "path": "description",
                    "expression": fp(f"'Seen ' + %{name}.count().toString() + ' times'"),
                }
            ],
        }
        element = "medication" if resource_type == "MedicationRequest" else "code"
        if style == "retrieve":
            action["input"] = [
                {
                    "id": name,
                    "type": resource_type,
                    "codeFilter": [{"path": element, "valueSet": value_set}],
                }
            ]
        else:
            matched = f"%{resource_type}.where({element}.inValueSet('{value_set}'))"
            action["extension"] = [{"url": VAR, "valueExpression": {"name": name, **fp(matched)}}]
        plan_actions.append(action)
    plan = {
        "resourceType": "PlanDefinition",
        "id": "bench",
        "url": "https://example.org/PlanDefinition/bench",
        "status": "active",
        "description": "benchmark",
        "extension": [
            {"url": VAR, "valueExpression": {"name": "female", **fp("%patient.gender = 'female'")}}
        ],
        "action": plan_actions,
    }
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"resource": r} for r in [plan, *value_sets]],
    }
    (directory / "bench.json").write_text(json.dumps(bundle))
    (directory / "bench.units.json").write_text(
        json.dumps({"conversions": [{"from": "mmol/L", "to": "mg/dL", "factor": 18}]})
    )


def record(size: int, codes: int, rng: random.Random) -> dict[str, list[dict[str, Any]]]:
    by_type: dict[str, list[dict[str, Any]]] = {}
    kinds = (
        "Observation",
        "Observation",
        "Observation",
        "Condition",
        "Procedure",
        "MedicationRequest",
    )
    for index in range(size):
        kind = kinds[index % len(kinds)]
        when = f"20{rng.randint(20, 25)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
        code = {"coding": [{"system": SYSTEM, "code": f"c{rng.randrange(codes + 1)}"}]}
        resource: dict[str, Any] = {"resourceType": kind, "id": f"r{index}", "code": code}
        if kind == "Observation":
            resource |= {
                "status": "final",
                "effectiveDateTime": when,
                "valueQuantity": {
                    "value": rng.uniform(1, 9),
                    "unit": "mmol/L",
                    "system": "http://unitsofmeasure.org",
                    "code": "mmol/L",
                },
            }
        elif kind == "Condition":
            resource |= {"onsetDateTime": when}
        elif kind == "Procedure":
            resource |= {"status": "completed", "performedDateTime": when}
        else:
            resource = {
                "resourceType": kind,
                "id": f"r{index}",
                "status": "active",
                "intent": "order",
                "medicationCodeableConcept": code,
                "authoredOn": when,
            }
        by_type.setdefault(kind, []).append(resource)
    return by_type


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--actions", type=int, default=40)
    parser.add_argument("--resources", type=int, default=200)
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--style", choices=["retrieve", "where"], default="retrieve")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        knowledge(Path(tmp), args.actions, args.style)
        started = time.perf_counter()
        loaded = load_knowledge([Path(tmp)])
        load_ms = (time.perf_counter() - started) * 1000
    plan = loaded.plans[0]
    subject = Subject(
        hook="patient-view",
        patient_id="p1",
        context={"userId": "Practitioner/1", "patientId": "p1"},
        patient={"resourceType": "Patient", "id": "p1", "gender": "female"},
        resources_by_type=record(args.resources, args.actions, random.Random(7)),
        today=date(2026, 1, 1),
    )
    for _ in range(20):  # warm-up
        result = apply_plan(plan, subject)
    timings = []
    for _ in range(args.runs):
        started = time.perf_counter()
        result = apply_plan(plan, subject)
        timings.append((time.perf_counter() - started) * 1000)
    timings.sort()
    applied = len(result.request_group.get("action", []))
    print(
        f"engine $apply ({args.style} style): {args.actions} actions, "
        f"{args.resources} resources, {args.runs} runs"
    )
    print(f"  load+compile: {load_ms:.0f} ms; actions applied: {applied}")
    print(
        f"  median {statistics.median(timings):.2f} ms, p90 {timings[int(0.9 * len(timings))]:.2f} ms, "
        f"p99 {timings[int(0.99 * len(timings)) - 1]:.2f} ms (target: median <= 3 ms)"
    )


if __name__ == "__main__":
    main()
