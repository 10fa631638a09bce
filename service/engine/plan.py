"""The compiled plan: what `$apply` walks. A PlanDefinition's actions, variables, conditions and
dynamic values with their FHIRPath compiled, its ActivityDefinitions, parameters and retrieves."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from service.engine.fhirpath import CompiledExpression
from service.engine.retrieve import Retrieve, RetrieveIndex

VARIABLE_EXTENSION = "http://hl7.org/fhir/StructureDefinition/variable"
APPLICABILITY_BEHAVIOR = "http://hl7.org/fhir/StructureDefinition/cqf-applicabilityBehavior"
# On an action's `documentation` entry (a citation): a FHIRPath condition; the entries whose
# condition is true go first (so the card's source is, e.g., the active profile's guideline).
PREFERRED_CITATION = "https://fhir.rpl-cds.org/StructureDefinition/cds-preferred-citation"
# One step of a dynamicValue path: an element name, optionally indexed (`note[0]`).
PATH_STEP = re.compile(r"^([A-Za-z][A-Za-z0-9]*)(?:\[(\d+)\])?$")
# dynamicValue paths that set the RequestGroup action itself; any other path sets the resource
# created from the action's ActivityDefinition ("resource" names existing resources, see apply.py).
ACTION_PATHS = frozenset(
    {"title", "description", "priority", "timingDateTime", "textEquivalent", "resource"}
)


def first_match_only(owner: Mapping[str, Any]) -> bool:
    """Whether a PlanDefinition or action keeps only the first applicable action among its
    children (`cqf-applicabilityBehavior` any); `all`, the default, keeps each."""
    return any(
        extension.get("url") == APPLICABILITY_BEHAVIOR and extension.get("valueCode") == "any"
        for extension in owner.get("extension", [])
    )


@dataclass(frozen=True)
class Variable:
    name: str
    expression: CompiledExpression


@dataclass(frozen=True)
class Parameter:
    """An input of the logic (Library.parameter, use `in`), bound as %<name>: its default, or the
    deployment's value from RPL_CDS_PARAMETERS."""

    name: str
    type: str
    value: Any


@dataclass(frozen=True)
class DynamicValue:
    path: str
    expression: CompiledExpression


@dataclass(frozen=True)
class Activity:
    """An ActivityDefinition, compiled once however many actions use it."""

    raw: dict[str, Any]
    dynamic_values: list[DynamicValue]


@dataclass
class Action:
    raw: dict[str, Any]
    path: str
    key: str
    hooks: frozenset[str]
    variables: list[Variable]
    conditions: list[CompiledExpression]
    dynamic_values: list[DynamicValue]
    children: list[Action]
    activity: Activity | None
    # (index in `documentation`, condition): entries put first when their condition is true.
    preferred_citations: list[tuple[int, CompiledExpression]] = field(default_factory=list)


@dataclass
class Plan:
    raw: dict[str, Any]
    file: Path
    id: str
    url: str | None
    hooks: list[str]
    variables: list[Variable]
    actions: list[Action]
    # Resource types read as %Condition, %Observation, ...: always bound, empty when absent.
    resource_types: frozenset[str] = frozenset()
    # (element path, DataRequirement) from Libraries and action inputs: prefetch and retrieves.
    data_requirements: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    retrieves: list[Retrieve] = field(default_factory=list)
    parameters: list[Parameter] = field(default_factory=list)
    # The retrieves' codes, indexed at load (the retrieves do not change after compiling).
    retrieve_index: RetrieveIndex = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.retrieve_index = RetrieveIndex(self.retrieves)
