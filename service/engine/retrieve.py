"""Retrieves: the data a PlanDefinition declares it needs, selected in Python once per request.

A PlanDefinition's data requirements (`action.input`, or `dataRequirement` of its Libraries) say
which resources its logic reads: a type, and optionally codes (`codeFilter.code`) or a ValueSet
(`codeFilter.valueSet`). The same requirements give the CDS service its prefetch templates. Each
requirement with an `id` is also bound as `%<id>` for the plan's expressions, holding the matching
resources of the patient's record.

Why: filtering a whole resource type in FHIRPath (`%Observation.where(code.inValueSet(...))`) costs
fhirpathpy about a quarter of a millisecond per resource per expression, so 40 rules over 200
resources take ~100 ms. Selected here from a per-request code index, each retrieve costs a few
dictionary lookups and the expressions see only the handful of resources they are about.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

Code = tuple[str, str]


@dataclass(frozen=True)
class Retrieve:
    name: str
    resource_type: str
    # The element holding the code (`code`; `medication` reads medicationCodeableConcept).
    path: str
    # None: every resource of the type; else the codes (ValueSet closure included) that match.
    codes: frozenset[Code] | None


def retrieve_all(
    retrieves: Sequence[Retrieve], by_type: Mapping[str, list[dict[str, Any]]]
) -> dict[str, list[dict[str, Any]]]:
    indexes: dict[tuple[str, str], dict[Code, list[int]]] = {}
    bound: dict[str, list[dict[str, Any]]] = {}
    for retrieve in retrieves:
        resources = by_type.get(retrieve.resource_type, [])
        if retrieve.codes is None:
            bound[retrieve.name] = list(resources)
            continue
        key = (retrieve.resource_type, retrieve.path)
        if key not in indexes:
            indexes[key] = _index(resources, retrieve.path)
        positions = sorted(_matches(indexes[key], retrieve.codes))
        bound[retrieve.name] = [resources[p] for p in positions]  # in record order
    return bound


def _matches(index: dict[Code, list[int]], codes: frozenset[Code]) -> set[int]:
    # From the smaller side: a ValueSet's closure can hold hundreds of codes, a record's index a
    # few dozen, and this runs for every retrieve of every request.
    if len(codes) <= len(index):
        return {p for code in codes for p in index.get(code, ())}
    return {p for code, positions in index.items() if code in codes for p in positions}


def _index(resources: list[dict[str, Any]], path: str) -> dict[Code, list[int]]:
    """(system, code) -> positions of the resources coded with it, built once per request."""
    index: dict[Code, list[int]] = {}
    for position, resource in enumerate(resources):
        element = resource.get(path) or resource.get(f"{path}CodeableConcept")
        for system, code in _codes(element):
            positions = index.setdefault((system, code), [])
            if not positions or positions[-1] != position:
                positions.append(position)
    return index


def _codes(element: Any) -> list[Code]:
    """The codings of a CodeableConcept or a Coding, or of a list of them (Observation.category,
    Encounter.class): the shapes a code filter's path can point at."""
    items = element if isinstance(element, list) else [element]
    codes = []
    for item in items:
        if not isinstance(item, dict):
            continue
        for coding in item.get("coding", [item]):  # a Coding is its own single coding
            if isinstance(coding, dict) and coding.get("system") and coding.get("code"):
                codes.append((coding["system"], coding["code"]))
    return codes
