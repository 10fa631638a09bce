"""The patient record the engine evaluates: plain resource dicts (no model validation on the request
path), deduplicated by type and id across prefetch keys and pages, indexed by type, with records
that must not count left out.

Left out: Observations whose status is not final, amended or corrected (a preliminary result must
not satisfy a suggestion); Conditions verified as entered-in-error or refuted; requests and
procedures entered in error, revoked or cancelled. Codes, units and dates are read where they are
used, by the engine's functions (inValueSet with ConceptMap translation, quantityIn, clinicalDate).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

_USABLE_OBSERVATION = frozenset({"final", "amended", "corrected"})
_VOID_CONDITION = frozenset({"entered-in-error", "refuted"})
_VOID_STATUS = frozenset({"entered-in-error", "revoked", "cancelled"})
_REQUESTS = frozenset(
    {"ServiceRequest", "MedicationRequest", "DeviceRequest", "NutritionOrder", "Procedure"}
)


def counts(resource: dict[str, Any]) -> bool:
    """Whether a resource may inform decisions at all. Prefetch is not validated, so a status of
    the wrong shape is read as no status: an unusable result, a request not known to be void."""
    kind = resource.get("resourceType")
    if kind in ("Observation", "DiagnosticReport"):
        return _text(resource.get("status")) in _USABLE_OBSERVATION
    if kind == "Condition":
        return not _codes(resource.get("verificationStatus")) & _VOID_CONDITION
    if kind in _REQUESTS:
        return _text(resource.get("status")) not in _VOID_STATUS
    return True


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _codes(concept: object) -> set[str]:
    codings = concept.get("coding") if isinstance(concept, dict) else None
    if not isinstance(codings, list):
        return set()
    return {c["code"] for c in codings if isinstance(c, dict) and isinstance(c.get("code"), str)}


@dataclass
class PatientRecord:
    patient: dict[str, Any] | None = None
    by_type: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    _seen: set[tuple[str, str]] = field(default_factory=set)

    def add(self, resource: dict[str, Any]) -> None:
        resource_type = resource.get("resourceType")
        if not isinstance(resource_type, str) or resource_type == "OperationOutcome":
            return
        resource_id = resource.get("id")
        if isinstance(resource_id, str):
            if (resource_type, resource_id) in self._seen:
                return  # the same resource delivered under two keys or pages counts once
            self._seen.add((resource_type, resource_id))
        if not counts(resource):
            return
        if resource_type == "Patient":
            self.patient = resource
        self.by_type.setdefault(resource_type, []).append(resource)

    def add_all(self, resources: list[dict[str, Any]]) -> None:
        for resource in resources:
            self.add(resource)
