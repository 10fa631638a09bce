"""Prefetch resolution, key by key (CDS Hooks 2.0): a provided value is used, `null` means no data,
an OperationOutcome is an error for that key, and a missing key must be fetched from `fhirServer`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from service.errors import ServiceError


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
                return  # the same resource delivered under two keys counts once
            self._seen.add((resource_type, resource_id))
        if resource_type == "Patient":
            self.patient = resource
        self.by_type.setdefault(resource_type, []).append(resource)


@dataclass
class Resolution:
    record: PatientRecord
    failed: list[str]  # keys whose value was an error; their data is missing
    missing: list[str]  # keys the client did not send; they must be fetched


def _is_error(value: Mapping[str, Any]) -> bool:
    """An OperationOutcome, or a Bundle holding nothing but error OperationOutcomes (a failed
    search). A Bundle with results and an OperationOutcome beside them carries warnings only."""
    if value.get("resourceType") == "OperationOutcome":
        return True
    if value.get("resourceType") != "Bundle":
        return False
    resources = [e.get("resource") or {} for e in value.get("entry", []) if isinstance(e, dict)]
    outcomes = [r for r in resources if r.get("resourceType") == "OperationOutcome"]
    return (
        bool(outcomes)
        and len(outcomes) == len(resources)
        and any(
            issue.get("severity") in ("error", "fatal")
            for outcome in outcomes
            for issue in outcome.get("issue", [])
        )
    )


def resolve_prefetch(
    templates: Mapping[str, str], provided: Mapping[str, dict[str, Any] | None] | None
) -> Resolution:
    provided = provided or {}
    record = PatientRecord()
    failed: list[str] = []
    missing: list[str] = []
    for key in templates:
        if key not in provided:
            missing.append(key)
            continue
        value = provided[key]
        if value is None:
            continue
        if _is_error(value):
            failed.append(key)
            continue
        if value.get("resourceType") == "Bundle":
            for entry in value.get("entry", []):
                resource = entry.get("resource") if isinstance(entry, dict) else None
                if isinstance(resource, dict):
                    record.add(resource)
        else:
            record.add(value)
    return Resolution(record, failed, missing)


def require_fetchable(resolution: Resolution, fhir_server: str | None) -> None:
    """CDS Hooks 2.0: when required data is missing and cannot be fetched, answer 412."""
    if resolution.missing and fhir_server is None:
        raise ServiceError(
            412,
            "prefetch is missing keys and no fhirServer was given to fetch them: "
            + ", ".join(resolution.missing),
        )
