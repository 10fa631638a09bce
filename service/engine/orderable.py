"""Every suggested order placeable: an ActivityDefinition's code must come from a code system the
knowledge declares orderable for its kind.

A draft order coded only in a billing system (CPT) or only as text cannot be placed by an EHR's
order entry, which looks orders up by a clinical code. Which systems an EHR can order from is a
fact about the terminology, not about the engine, so it is knowledge: a Library (or any loaded
resource) carries one extension per (kind, system) pair,

    {"url": "https://fhir.rpl-cds.org/StructureDefinition/orderable-code-system",
     "extension": [{"url": "kind", "valueCode": "ServiceRequest"},
                   {"url": "system", "valueUri": "http://loinc.org"},
                   {"url": "use", "valueString": "laboratory tests"}]}

Once any loaded resource declares orderable systems, every loaded ActivityDefinition must carry,
in the element the engine copies into the request (`code` for a ServiceRequest,
`productCodeableConcept` for a MedicationRequest), a coding with a `code` in one of the systems
declared for its kind; a kind no declaration names is a problem too. Knowledge that declares
nothing is not checked (another guideline loaded on its own), so the check costs nothing to
knowledge that never opted in.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from service.engine.problems import Problem

ORDERABLE_EXTENSION = "https://fhir.rpl-cds.org/StructureDefinition/orderable-code-system"
# The request element each ActivityDefinition kind's order is coded in (see engine/apply.py).
CODED_ELEMENT = {"ServiceRequest": "code", "MedicationRequest": "productCodeableConcept"}


def declared_systems(
    documents: Iterable[tuple[Path, Mapping[str, Any]]], problems: list[Problem]
) -> dict[str, set[str]]:
    """kind -> orderable systems, from every orderable-code-system extension of every resource
    (a malformed declaration is a problem: it would silently allow or refuse nothing)."""
    systems: dict[str, set[str]] = {}
    for file, resource in documents:
        for index, extension in enumerate(resource.get("extension", [])):
            if not isinstance(extension, Mapping) or extension.get("url") != ORDERABLE_EXTENSION:
                continue
            where = f"{resource.get('resourceType')}.extension[{index}]"
            parts = {
                part.get("url"): part
                for part in extension.get("extension", [])
                if isinstance(part, Mapping)
            }
            kind = parts.get("kind", {}).get("valueCode")
            system = parts.get("system", {}).get("valueUri")
            if kind not in CODED_ELEMENT:
                problems.append(
                    Problem(
                        file, where, f"'kind' must be a valueCode, one of {sorted(CODED_ELEMENT)}"
                    )
                )
                continue
            if not isinstance(system, str) or not system:
                problems.append(Problem(file, where, "'system' must be a valueUri"))
                continue
            systems.setdefault(kind, set()).add(system)
    return systems


def orderable_problems(documents: Sequence[tuple[Path, Mapping[str, Any]]]) -> list[Problem]:
    problems: list[Problem] = []
    systems = declared_systems(documents, problems)
    if not systems:
        return problems
    for file, resource in documents:
        if resource.get("resourceType") != "ActivityDefinition":
            continue
        kind = resource.get("kind")
        element = CODED_ELEMENT.get(str(kind))
        if element is None:
            continue  # refused where an action uses it (engine/compiler.py)
        where = f"ActivityDefinition.{element}"
        allowed = systems.get(str(kind))
        if not allowed:
            problems.append(
                Problem(
                    file,
                    where,
                    f"no loaded knowledge declares the code systems orderable for {kind} "
                    f"(extension {ORDERABLE_EXTENSION})",
                )
            )
            continue
        concept = resource.get(element)
        codings = concept.get("coding", []) if isinstance(concept, Mapping) else []
        if not any(
            isinstance(coding, Mapping) and coding.get("system") in allowed and coding.get("code")
            for coding in codings
        ):
            found = sorted(
                {str(c.get("system")) for c in codings if isinstance(c, Mapping)} - {"None"}
            )
            problems.append(
                Problem(
                    file,
                    where,
                    f"the order cannot be placed: no coding from a system orderable for {kind} "
                    f"({', '.join(sorted(allowed))}); it has "
                    + (", ".join(found) if found else "no coding"),
                )
            )
    return problems
