"""The small world the engine-function tests share: ValueSets, CodeSystems and ConceptMaps (as
the loader registers them), a unit table, the engine functions built over them, and builders for
the FHIR data the expressions read. Used by test_engine_functions, test_terminology, test_units
and test_static_check."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any

from service.engine.fhirpath import compile_expression
from service.engine.fhirpath.functions import (
    engine_functions,
)
from service.engine.registry import Registry
from service.engine.terminology import Terminology
from service.engine.units import UCUM, UnitTable

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
