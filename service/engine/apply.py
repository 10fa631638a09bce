"""PlanDefinition $apply over a patient record: the applicable actions as an R4 RequestGroup, plus a
trace of what each condition and variable evaluated to.

Semantics: an action applies when every `applicability` condition evaluates to exactly `true`
(empty or false means it does not apply, as in the CQF reference implementation). A top-level
action with named-event triggers applies only to those hooks. Variables are evaluated in document
order; an action's variables are visible to its conditions and to its children. An expression that
fails at run time makes its action not applicable and is recorded in the trace, it never fails the
call.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from service.engine.knowledge import VARIABLE_EXTENSION, Action, Plan, Variable

log = logging.getLogger("rpl_cds.engine")

_COPIED_FIELDS = (
    "title",
    "description",
    "priority",
    "code",
    "documentation",
    "selectionBehavior",
    "groupingBehavior",
    "type",
)


@dataclass(frozen=True)
class Subject:
    """What the evaluation is about and for: the hook call's inputs, already resolved to data."""

    hook: str
    patient_id: str
    context: Mapping[str, Any]
    patient: Mapping[str, Any] | None
    resources_by_type: Mapping[str, list[dict[str, Any]]]
    guideline: str
    today: date
    missing_data: tuple[str, ...] = ()
    encounter_id: str | None = None


@dataclass
class TraceEntry:
    action: str
    applied: bool
    conditions: list[Any] = field(default_factory=list)
    variables: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


@dataclass
class Result:
    request_group: dict[str, Any]
    trace: list[TraceEntry]


def apply_plan(plan: Plan, subject: Subject) -> Result:
    environment: dict[str, Any] = {name: [] for name in plan.resource_types}
    environment.update(subject.resources_by_type)
    environment.update(
        {
            "patient": dict(subject.patient) if subject.patient else [],
            "context": dict(subject.context),
            "guideline": subject.guideline,
            "hook": subject.hook,
            "missingData": list(subject.missing_data),
            "today": subject.today.isoformat(),
        }
    )
    run = _Run(subject, [], [])
    plan_trace = TraceEntry("PlanDefinition", applied=True)
    run.trace.append(plan_trace)
    if not run.bind(plan.variables, environment, plan_trace):
        plan_trace.applied = False
        return Result(run.request_group(plan, []), run.trace)
    actions = [
        out
        for action in plan.actions
        if not action.hooks or subject.hook in action.hooks
        for out in [run.action(action, environment)]
        if out is not None
    ]
    return Result(run.request_group(plan, actions), run.trace)


@dataclass
class _Run:
    subject: Subject
    trace: list[TraceEntry]
    contained: list[dict[str, Any]]

    def bind(
        self, variables: list[Variable], environment: dict[str, Any], entry: TraceEntry
    ) -> bool:
        for variable in variables:
            try:
                value = variable.expression(environment.get("patient") or {}, environment)
            except Exception as error:
                entry.error = f"variable {variable.name}: {error}"
                log.warning(
                    "variable failed", extra={"detail": entry.action, "variable": variable.name}
                )
                return False
            environment[variable.name] = value
            entry.variables[variable.name] = value
        return True

    def action(self, action: Action, outer: Mapping[str, Any]) -> dict[str, Any] | None:
        environment = dict(outer)
        entry = TraceEntry(action.path, applied=False)
        self.trace.append(entry)
        if not self.bind(action.variables, environment, entry):
            return None
        for condition in action.conditions:
            try:
                value = condition(environment.get("patient") or {}, environment)
            except Exception as error:
                entry.error = f"condition: {error}"
                log.warning("condition failed", extra={"detail": action.path})
                return None
            entry.conditions.append(value)
            if value != [True]:
                return None
        entry.applied = True
        out: dict[str, Any] = {"id": action.key}
        out.update({name: action.raw[name] for name in _COPIED_FIELDS if name in action.raw})
        extensions = [
            e for e in action.raw.get("extension", []) if e.get("url") != VARIABLE_EXTENSION
        ]
        if extensions:
            out["extension"] = extensions
        if action.activity is not None:
            out["resource"] = {"reference": f"#{self.create(action.activity, action.key)}"}
        children = [c for child in action.children if (c := self.action(child, environment))]
        if children:
            out["action"] = children
        return out

    def create(self, activity: Mapping[str, Any], key: str) -> str:
        """A draft request from an ActivityDefinition (ServiceRequest or MedicationRequest)."""
        resource_id = f"{key}-{len(self.contained) + 1}"
        resource: dict[str, Any] = {
            "resourceType": activity["kind"],
            "id": resource_id,
            "status": "draft",
            "intent": "proposal",
            "subject": {"reference": f"Patient/{self.subject.patient_id}"},
        }
        if activity.get("url"):
            resource["instantiatesCanonical"] = [activity["url"]]
        if self.subject.encounter_id:
            resource["encounter"] = {"reference": f"Encounter/{self.subject.encounter_id}"}
        if activity["kind"] == "MedicationRequest":
            if "productCodeableConcept" in activity:
                resource["medicationCodeableConcept"] = activity["productCodeableConcept"]
            if "dosage" in activity:
                resource["dosageInstruction"] = activity["dosage"]
        elif "code" in activity:
            resource["code"] = activity["code"]
        self.contained.append(resource)
        return resource_id

    def request_group(self, plan: Plan, actions: list[dict[str, Any]]) -> dict[str, Any]:
        group: dict[str, Any] = {
            "resourceType": "RequestGroup",
            "status": "draft",
            "intent": "proposal",
            "subject": {"reference": f"Patient/{self.subject.patient_id}"},
        }
        if plan.url:
            group["instantiatesCanonical"] = [plan.url]
        if self.contained:
            group["contained"] = self.contained
        if actions:
            group["action"] = actions
        return group
