"""ActivityDefinitions at `$apply`: the draft request (ServiceRequest or MedicationRequest) an
applicable action's definition becomes, with the definition's dynamic values set on it."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from service.engine.fhirpath import CompiledExpression
from service.engine.plan import PATH_STEP, Activity

# ActivityDefinition elements copied onto the request it becomes (same name on both).
_ACTIVITY_FIELDS = ("priority", "doNotPerform", "bodySite")
_TIMING_TO_OCCURRENCE = {
    "timingDateTime": "occurrenceDateTime",
    "timingPeriod": "occurrencePeriod",
    "timingTiming": "occurrenceTiming",
}


def draft_request(
    activity: Activity,
    resource_id: str,
    patient_id: str,
    encounter_id: str | None,
    evaluate: Callable[[CompiledExpression], list[Any]],
) -> dict[str, Any]:
    """A draft request from an ActivityDefinition, with the definition's dynamic values applied
    (`evaluate` runs an expression in the action's environment)."""
    definition = activity.raw
    kind = definition["kind"]
    resource: dict[str, Any] = {
        "resourceType": kind,
        "id": resource_id,
        "status": "draft",
        "intent": "proposal",
        "subject": {"reference": f"Patient/{patient_id}"},
    }
    if definition.get("url"):
        resource["instantiatesCanonical"] = [definition["url"]]
    if encounter_id:
        resource["encounter"] = {"reference": f"Encounter/{encounter_id}"}
    resource.update({name: definition[name] for name in _ACTIVITY_FIELDS if name in definition})
    if kind == "MedicationRequest":
        if "productCodeableConcept" in definition:
            resource["medicationCodeableConcept"] = definition["productCodeableConcept"]
        if "dosage" in definition:
            resource["dosageInstruction"] = definition["dosage"]
    else:
        if "code" in definition:
            resource["code"] = definition["code"]
        for timing, occurrence in _TIMING_TO_OCCURRENCE.items():
            if timing in definition:
                resource[occurrence] = definition[timing]
    for dynamic in activity.dynamic_values:
        # Every path of an ActivityDefinition's dynamic value is on the resource it defines;
        # a leading type (`ServiceRequest.note`) is the same path written in full.
        result = evaluate(dynamic.expression)
        if result:
            path = dynamic.path.removeprefix(f"{kind}.")
            set_path(resource, path, result[0] if len(result) == 1 else result)
    return resource


def set_path(target: dict[str, Any], path: str, value: Any) -> None:
    """Set `a.b[0].c` on a resource, creating what is missing (dynamicValue.path is a simple
    FHIRPath: names and indexes only)."""
    if isinstance(value, dict | list):
        value = copy.deepcopy(value)  # results share objects with the request's data
    matches = [PATH_STEP.match(step) for step in path.split(".")]
    steps = [(m.group(1), m.group(2)) for m in matches if m is not None]
    if len(steps) != len(matches):
        raise ValueError(f"unsupported dynamicValue path '{path}'")
    node: Any = target
    for position, (name, index) in enumerate(steps):
        last = position == len(steps) - 1
        if index is None:
            if last:
                node[name] = value
            else:
                node = node.setdefault(name, {})
            continue
        items = node.setdefault(name, [])
        while len(items) <= int(index):
            items.append({})
        if last:
            items[int(index)] = value
        else:
            node = items[int(index)]
