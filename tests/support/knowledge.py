"""Builders for small hand-written knowledge in tests: FHIRPath expressions, variables and
applicability conditions as PlanDefinition JSON."""

from __future__ import annotations

from typing import Any

VAR = "http://hl7.org/fhir/StructureDefinition/variable"


def fp(expression: str) -> dict[str, str]:
    return {"language": "text/fhirpath", "expression": expression}


def variable(name: str, expression: str) -> dict[str, Any]:
    return {"url": VAR, "valueExpression": {"name": name, **fp(expression)}}


def applies(expression: str) -> list[dict[str, Any]]:
    return [{"kind": "applicability", "expression": fp(expression)}]
