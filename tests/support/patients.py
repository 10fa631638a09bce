"""Synthetic patients from readable scenario descriptions, and the CDS Hooks requests that carry
them. Never real patient data.

    Scenario("two losses").female().miscarriage("2024-01-10").miscarriage("2024-06-02")
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

SNOMED = "http://snomed.info/sct"
MISCARRIAGE = "17369002"
# What two dated miscarriages give a female patient under the default (ESHRE) profile; the
# scenarios in scenarios/ cover every other case.
TWO_LOSSES_ESHRE = frozenset(
    {"aps-screen", "thyroid-screen", "uterine-imaging", "lifestyle-support"}
)
# The prefetch keys of the bundled services (plandefinitions/Library-rpl-*.json).
ORDER_SAFETY_KEYS = ("patient", "conditions", "observations", "medicationRequests")
WORKUP_KEYS = (*ORDER_SAFETY_KEYS, "procedures", "reports", "serviceRequests")


@dataclass
class Scenario:
    description: str
    patient_id: str = field(default_factory=lambda: f"syn-{uuid.uuid4().hex[:12]}")
    gender: str | None = None
    conditions: list[dict[str, Any]] = field(default_factory=list)
    draft_orders: list[dict[str, Any]] = field(default_factory=list)

    def female(self) -> Scenario:
        self.gender = "female"
        return self

    def male(self) -> Scenario:
        self.gender = "male"
        return self

    def miscarriage(self, onset: str | None, *, verification: str = "confirmed") -> Scenario:
        condition: dict[str, Any] = {
            "resourceType": "Condition",
            "id": f"{self.patient_id}-c{len(self.conditions) + 1}",
            "subject": {"reference": f"Patient/{self.patient_id}"},
            "code": {"coding": [{"system": SNOMED, "code": MISCARRIAGE, "display": "Miscarriage"}]},
            "verificationStatus": {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/condition-ver-status",
                        "code": verification,
                    }
                ]
            },
        }
        if onset:
            condition["onsetDateTime"] = onset
        self.conditions.append(condition)
        return self

    def draft_service_request(self, text: str) -> Scenario:
        self.draft_orders.append(
            {
                "resourceType": "ServiceRequest",
                "id": f"draft-{len(self.draft_orders) + 1}",
                "status": "draft",
                "intent": "order",
                "subject": {"reference": f"Patient/{self.patient_id}"},
                "code": {"text": text},
            }
        )
        return self

    # The resources an EHR would hold for this patient.
    def patient(self) -> dict[str, Any]:
        patient: dict[str, Any] = {"resourceType": "Patient", "id": self.patient_id}
        if self.gender:
            patient["gender"] = self.gender
        return patient

    def searchset(self, resources: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": len(resources),
            "entry": [
                {"fullUrl": f"urn:uuid:{uuid.uuid4()}", "resource": r, "search": {"mode": "match"}}
                for r in resources
            ],
        }

    def prefetch(self, keys: tuple[str, ...]) -> dict[str, Any]:
        """Every prefetch key of a service answered: the patient, the conditions, and empty
        searchsets for the rest (these scenarios only have conditions)."""
        answers: dict[str, Any] = {key: self.searchset([]) for key in keys}
        answers["patient"] = self.patient()
        answers["conditions"] = self.searchset(self.conditions)
        return answers

    def draft_bundle(self) -> dict[str, Any]:
        return {
            "resourceType": "Bundle",
            "type": "collection",
            "entry": [{"resource": order} for order in self.draft_orders],
        }


def workup_request(scenario: Scenario, **overrides: Any) -> dict[str, Any]:
    """A patient-view call for the bundled `rpl-workup` service, with full prefetch."""
    body: dict[str, Any] = {
        "hook": "patient-view",
        "hookInstance": str(uuid.uuid4()),
        "context": {"userId": "Practitioner/syn-clinician", "patientId": scenario.patient_id},
        "prefetch": scenario.prefetch(WORKUP_KEYS),
    }
    body.update(overrides)
    return body


def order_request(scenario: Scenario, hook: str, **overrides: Any) -> dict[str, Any]:
    context: dict[str, Any] = {
        "userId": "Practitioner/syn-clinician",
        "patientId": scenario.patient_id,
        "draftOrders": scenario.draft_bundle(),
    }
    if hook == "order-select":
        context["selections"] = [
            f"{o['resourceType']}/{o['id']}" for o in scenario.draft_orders[:1]
        ]
    body: dict[str, Any] = {
        "hook": hook,
        "hookInstance": str(uuid.uuid4()),
        "context": context,
        "prefetch": scenario.prefetch(ORDER_SAFETY_KEYS),
    }
    body.update(overrides)
    return body


def topics(response_body: dict[str, Any]) -> set[str]:
    return {card["source"]["topic"]["code"] for card in response_body["cards"]}
