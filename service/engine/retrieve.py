"""Retrieves: the data a PlanDefinition declares it needs, selected in Python once per request.

A PlanDefinition's data requirements (`action.input`, or `dataRequirement` of its Libraries) say
which resources its logic reads: a type, and optionally codes (`codeFilter.code`) or a ValueSet
(`codeFilter.valueSet`). The same requirements give the CDS service its prefetch templates. Each
requirement with an `id` is also bound as `%<id>` for the plan's expressions, holding the matching
resources of the patient's record.

Why: filtering a whole resource type in FHIRPath (`%Observation.where(code.inValueSet(...))`) costs
fhirpathpy about a quarter of a millisecond per resource per expression, so 40 rules over 200
resources take ~100 ms. Selected here in one pass over the record against an index of the
knowledge's codes built at load, each resource costs a few dictionary lookups whatever the number
of retrieves, and the expressions see only the handful of resources they are about.
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


class RetrieveIndex:
    """What a plan's retrieves can match, worked out once at load: for each resource type and
    code element, every (system, code) any of its retrieves selects (ValueSet closures included),
    with the retrieves it feeds. A request then takes one pass over the resources of each type;
    a resource none of the knowledge's codes match is looked at once and kept by no retrieve."""

    def __init__(self, retrieves: Sequence[Retrieve]) -> None:
        self.names = [retrieve.name for retrieve in retrieves]
        # Every resource of the type (no code filter).
        self.whole: list[tuple[str, str]] = []
        # (type, element) -> code -> the retrieves it feeds, in declaration order.
        self.coded: dict[tuple[str, str], dict[Code, tuple[str, ...]]] = {}
        for retrieve in retrieves:
            if retrieve.codes is None:
                self.whole.append((retrieve.name, retrieve.resource_type))
                continue
            feeds = self.coded.setdefault((retrieve.resource_type, retrieve.path), {})
            for code in retrieve.codes:
                feeds[code] = (*feeds.get(code, ()), retrieve.name)

    def select(
        self, by_type: Mapping[str, list[dict[str, Any]]]
    ) -> dict[str, list[dict[str, Any]]]:
        """Each retrieve's resources, in record order."""
        bound: dict[str, list[dict[str, Any]]] = {name: [] for name in self.names}
        for name, resource_type in self.whole:
            bound[name] = list(by_type.get(resource_type, ()))
        for (resource_type, path), feeds in self.coded.items():
            resources = by_type.get(resource_type)
            if not resources:
                continue
            alternative = f"{path}CodeableConcept"
            for resource in resources:
                element = resource.get(path) or resource.get(alternative)
                if element is None:
                    continue
                codings = element.get("coding") if type(element) is dict else None
                if type(codings) is not list:
                    self._add_other(_codes(element), feeds, bound, resource)
                    continue
                # A CodeableConcept: the common shape, read inline (thousands per call).
                for coding in codings:
                    if type(coding) is not dict:
                        continue
                    system, code = coding.get("system"), coding.get("code")
                    if type(system) is not str or type(code) is not str:
                        continue  # no code, or not one a ValueSet can hold (nor hash)
                    for name in feeds.get((system, code), ()):
                        selected = bound[name]
                        # A resource with two codes of one ValueSet is selected once.
                        if not selected or selected[-1] is not resource:
                            selected.append(resource)
        return bound

    @staticmethod
    def _add_other(
        codes: list[Code],
        feeds: Mapping[Code, tuple[str, ...]],
        bound: dict[str, list[dict[str, Any]]],
        resource: dict[str, Any],
    ) -> None:
        """A code element of another shape (a Coding, a list of concepts)."""
        for code in codes:
            if type(code[0]) is not str or type(code[1]) is not str:
                continue
            for name in feeds.get(code, ()):
                selected = bound[name]
                if not selected or selected[-1] is not resource:
                    selected.append(resource)


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
