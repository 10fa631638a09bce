"""Synthetic patients from readable scenario descriptions (JSON files in `scenarios/`), for tests,
benchmarks and `rpl-cds load-scenarios`. Never real patient data.

A description names a patient (id, gender, birth date) and the resources an EHR would hold for
them, in a short form: `code` is `system|code` (becomes the resource's code), `date` is the
clinically relevant date (onset, effective, performed or authored, by type); every other field is
FHIR as written. The generator knows no clinical content: the codes are in the descriptions.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Where each resource type keeps its clinically relevant date.
_DATE_ELEMENT = {
    "Condition": "onsetDateTime",
    "Observation": "effectiveDateTime",
    "Procedure": "performedDateTime",
    "ServiceRequest": "authoredOn",
    "MedicationRequest": "authoredOn",
    "DiagnosticReport": "effectiveDateTime",
    "AllergyIntolerance": "onsetDateTime",
}
# Defaults that make each resource valid R4 and usable (a final result, an active order...).
_DEFAULTS: dict[str, dict[str, Any]] = {
    "Observation": {"status": "final"},
    "Procedure": {"status": "completed"},
    "ServiceRequest": {"status": "active", "intent": "order"},
    "MedicationRequest": {"status": "active", "intent": "order"},
    "DiagnosticReport": {"status": "final"},
}
# The element holding the code, where it is not `code`.
_CODE_ELEMENT = {"MedicationRequest": "medicationCodeableConcept"}


@dataclass(frozen=True)
class ScenarioSpec:
    id: str
    description: str
    raw: dict[str, Any]

    @property
    def expect(self) -> dict[str, list[str]]:
        expected: dict[str, list[str]] = self.raw.get("expect", {})
        return expected

    def resources(self) -> list[dict[str, Any]]:
        """The Patient first, then each described resource with an id and the subject set."""
        patient: dict[str, Any] = {"resourceType": "Patient", "id": self.id}
        for element in ("gender", "birthDate"):
            if element in self.raw:
                patient[element] = self.raw[element]
        return [
            patient,
            *(self._resource(short, n) for n, short in enumerate(self.raw.get("resources", []), 1)),
        ]

    def _resource(self, short: dict[str, Any], number: int) -> dict[str, Any]:
        kind = short["resourceType"]
        resource: dict[str, Any] = {"resourceType": kind, "id": f"{self.id}-{number}"}
        resource.update(copy.deepcopy(_DEFAULTS.get(kind, {})))
        resource["subject"] = {"reference": f"Patient/{self.id}"}
        for key, value in short.items():
            if key == "code":
                system, _, code = str(value).partition("|")
                element = _CODE_ELEMENT.get(kind, "code")
                resource[element] = {"coding": [{"system": system, "code": code}]}
            elif key == "date":
                resource[_DATE_ELEMENT.get(kind, "date")] = value
            elif key != "resourceType":
                resource[key] = copy.deepcopy(value)
        return resource


def load_scenarios(path: Path) -> list[ScenarioSpec]:
    """Every scenario in a description file, or in every `*.json` of a directory."""
    files = sorted(path.glob("*.json")) if path.is_dir() else [path]
    specs = []
    for file in files:
        document = json.loads(file.read_text(encoding="utf-8"))
        for raw in document["scenarios"]:
            specs.append(ScenarioSpec(raw["id"], raw.get("description", ""), raw))
    return specs
