"""PlanDefinition $apply over a patient record: the applicable actions as an R4 RequestGroup, plus a
trace of what each condition and variable evaluated to and which resources fed them.

Semantics (documented for authors in docs/knowledge-authoring.md):
- An action applies when every `applicability` condition evaluates to exactly `true`; empty or
  false means it does not apply (as in the CQF reference implementation). `start` and `stop`
  conditions are refused at load: a hook call is one point in time, with no workflow to start or
  stop.
- A top-level action with named-event triggers applies only to those hooks.
- PlanDefinition variables are evaluated when an expression first needs them, at most once per
  call: a card whose first condition fails costs none of the variables only its later conditions
  read (most order-sign calls need a handful of the plan's variables). One that fails stops the
  whole plan (no action applies), as it did when all were evaluated up front. An action's
  variables are evaluated in document order when the action is reached; they are visible to its
  conditions, dynamic values and children.
- A `documentation` entry with a `cds-preferred-citation` condition that is true goes first (the
  card's source); a condition that fails counts as false, the card still shows.
- `dynamicValue` paths `title`, `description`, `priority`, `timingDateTime`, `textEquivalent` set
  the RequestGroup action; `resource` names existing resources the action is about (one
  RequestGroup action per target, used to remove draft orders); any other path sets the resource
  created from the action's ActivityDefinition.
- `relatedAction` with an offset dates an action from another action's `timingDateTime` (e.g. a
  repeat test 12 weeks after an earlier result), resolved once all actions are evaluated.
- `cqf-applicabilityBehavior` `any` on the PlanDefinition or an action keeps only the first
  applicable action among its children (a first-match rule chain); `all` (default) keeps each.
- An expression that fails at run time makes its action not applicable and is recorded in the
  trace; it never fails the call.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

from service.dates import add_months
from service.engine.activity import draft_request, set_path
from service.engine.fhirpath import CompiledExpression
from service.engine.plan import (
    ACTION_PATHS,
    PREFERRED_CITATION,
    VARIABLE_EXTENSION,
    Action,
    Activity,
    DynamicValue,
    Plan,
    Variable,
    first_match_only,
)

log = logging.getLogger("rpl_cds.engine")

_COPIED_FIELDS = (
    "title",
    "description",
    "textEquivalent",
    "priority",
    "code",
    "documentation",
    "selectionBehavior",
    "groupingBehavior",
    "type",
    "relatedAction",
    "timingDateTime",
    "timingPeriod",
    "timingDuration",
    "timingRange",
    "timingTiming",
)
_BEFORE = frozenset({"before-start", "before", "before-end"})
_AFTER = frozenset({"after-start", "after", "after-end"})


@dataclass(frozen=True)
class Subject:
    """What the evaluation is about and for: the hook call's inputs, already resolved to data.
    `hook` None (a plain $apply) evaluates every top-level action whatever its triggers."""

    hook: str | None
    patient_id: str
    context: Mapping[str, Any]
    patient: Mapping[str, Any] | None
    resources_by_type: Mapping[str, list[dict[str, Any]]]
    today: date
    missing_data: tuple[str, ...] = ()
    encounter_id: str | None = None


@dataclass
class TraceEntry:
    action: str
    applied: bool
    conditions: list[Any] = field(default_factory=list)
    variables: dict[str, Any] = field(default_factory=dict)
    inputs: list[str] = field(default_factory=list)
    error: str | None = None


@dataclass
class Result:
    request_group: dict[str, Any]
    trace: list[TraceEntry]


class _PlanVariableFailed(BaseException):
    """A PlanDefinition variable failed: no action of the plan applies. A BaseException, so that
    the `except Exception` guards around each action's expressions let it through to
    apply_plan."""


def apply_plan(plan: Plan, subject: Subject) -> Result:
    environment: dict[str, Any] = {name: [] for name in plan.resource_types}
    environment.update(subject.resources_by_type)
    environment.update(plan.retrieve_index.select(subject.resources_by_type))
    environment.update({parameter.name: parameter.value for parameter in plan.parameters})
    environment.update(
        {
            "patient": dict(subject.patient) if subject.patient else [],
            "context": dict(subject.context),
            "hook": subject.hook or [],
            "missingData": list(subject.missing_data),
            "today": subject.today.isoformat(),
            # FHIRPath's own constants (fhirpathpy binds only %ucum).
            "sct": "http://snomed.info/sct",
            "loinc": "http://loinc.org",
        }
    )
    plan_trace = TraceEntry("PlanDefinition", applied=True)
    run = _Run(subject, {v.name: v for v in plan.variables}, environment, plan_trace)
    run.trace.append(plan_trace)
    candidates = [
        action
        for action in plan.actions
        if subject.hook is None or not action.hooks or subject.hook in action.hooks
    ]
    try:
        actions = run.actions(candidates, environment, first_match_only(plan.raw))
    except _PlanVariableFailed as failure:
        plan_trace.applied = False
        plan_trace.error = str(failure)
        log.warning("variable failed", extra={"detail": plan_trace.action})
        return Result(run.request_group(plan, []), run.trace)
    run.resolve_related_timing()
    return Result(run.request_group(plan, actions), run.trace)


@dataclass
class _Run:
    subject: Subject
    # The plan's variables, evaluated on first use into `root` (the plan-level environment).
    plan_variables: Mapping[str, Variable]
    root: dict[str, Any]
    plan_entry: TraceEntry
    trace: list[TraceEntry] = field(default_factory=list)
    contained: list[dict[str, Any]] = field(default_factory=list)
    by_id: dict[str, dict[str, Any]] = field(default_factory=dict)
    resources_of: dict[int, dict[str, Any]] = field(default_factory=dict)

    def entry(self, name: str) -> TraceEntry:
        entry = TraceEntry(name, applied=False)
        self.trace.append(entry)
        return entry

    def evaluate(
        self, expression: CompiledExpression, environment: dict[str, Any], entry: TraceEntry
    ) -> list[Any]:
        for name in expression.variables:
            if name in self.plan_variables:
                environment[name] = self.plan_value(name)
        result = expression.values(environment.get("patient") or {}, environment)
        entry.inputs.extend(
            f"{item['resourceType']}/{item['id']}"
            for item in result
            if isinstance(item, dict) and "resourceType" in item and "id" in item
        )
        return result

    def plan_value(self, name: str) -> list[Any]:
        """A PlanDefinition variable's value, evaluated the first time it is needed. Its own
        references are plan variables defined above it (checked at load), so this recursion ends."""
        if name not in self.plan_entry.variables:
            variable = self.plan_variables[name]
            try:
                value = self.evaluate(variable.expression, self.root, self.plan_entry)
            except Exception as error:  # fhirpathpy raises many types; _PlanVariableFailed passes
                raise _PlanVariableFailed(f"variable {name}: {error}") from error
            self.root[name] = value
            self.plan_entry.variables[name] = value
        known: list[Any] = self.plan_entry.variables[name]
        return known

    def bind(
        self, variables: list[Variable], environment: dict[str, Any], entry: TraceEntry
    ) -> bool:
        for variable in variables:
            try:
                value = self.evaluate(variable.expression, environment, entry)
            except Exception as error:  # fhirpathpy raises many types
                entry.error = f"variable {variable.name}: {error}"
                log.warning(
                    "variable failed", extra={"detail": entry.action, "variable": variable.name}
                )
                return False
            environment[variable.name] = value
            entry.variables[variable.name] = value
        return True

    def action(self, action: Action, outer: Mapping[str, Any]) -> list[dict[str, Any]]:
        environment = dict(outer)
        entry = self.entry(action.path)
        if not self.bind(action.variables, environment, entry):
            return []
        for condition in action.conditions:
            try:
                value = self.evaluate(condition, environment, entry)
            except Exception as error:  # fhirpathpy raises many types
                entry.error = f"condition: {error}"
                log.warning("condition failed", extra={"detail": action.path})
                return []
            entry.conditions.append(value)
            if value != [True]:
                return []
        out: dict[str, Any] = {"id": action.key}
        out.update({name: action.raw[name] for name in _COPIED_FIELDS if name in action.raw})
        extensions = [
            e for e in action.raw.get("extension", []) if e.get("url") != VARIABLE_EXTENSION
        ]
        if extensions:
            out["extension"] = extensions
        if action.preferred_citations:
            out["documentation"] = self.order_documentation(action, environment, entry)
        try:
            resource = (
                self.create(action.activity, action.key, environment, entry)
                if action.activity
                else None
            )
            targets = self.set_dynamic(action.dynamic_values, environment, entry, out, resource)
        except Exception as error:  # fhirpathpy raises many types
            entry.error = f"dynamicValue: {error}"
            log.warning("dynamic value failed", extra={"detail": action.path})
            return []
        entry.applied = True
        if resource is not None:
            out["resource"] = {"reference": f"#{resource['id']}"}
            self.resources_of[id(out)] = resource
        children = self.actions(action.children, environment, first_match_only(action.raw))
        if children:
            out["action"] = children
        self.by_id[action.key] = out
        if targets is None:
            return [out]
        # One RequestGroup action per existing resource the action is about.
        return [
            {**copy.deepcopy(out), "id": f"{action.key}-{index}", "resource": {"reference": target}}
            for index, target in enumerate(targets, start=1)
        ]

    def order_documentation(
        self, action: Action, environment: dict[str, Any], entry: TraceEntry
    ) -> list[dict[str, Any]]:
        """The action's documentation with the entries whose preferred-citation condition is
        true first, in document order otherwise. A condition that fails counts as false: the
        order is only a presentation choice and must never hide the card."""
        preferred: set[int] = set()
        for index, condition in action.preferred_citations:
            try:
                if self.evaluate(condition, environment, entry) == [True]:
                    preferred.add(index)
            except Exception as error:  # fhirpathpy raises many types
                entry.error = f"documentation[{index}] preferred citation: {error}"
                log.warning("preferred citation failed", extra={"detail": action.path})
        documents = [
            {
                **document,
                "extension": [
                    e for e in document.get("extension", []) if e.get("url") != PREFERRED_CITATION
                ],
            }
            for document in action.raw.get("documentation", [])
        ]
        for document in documents:
            if not document["extension"]:
                del document["extension"]
        order = sorted(range(len(documents)), key=lambda index: index not in preferred)
        return [documents[index] for index in order]

    def actions(
        self, actions: list[Action], environment: Mapping[str, Any], first_only: bool
    ) -> list[dict[str, Any]]:
        """The applicable ones; with applicability behavior `any`, only the first of them."""
        out: list[dict[str, Any]] = []
        for action in actions:
            out.extend(self.action(action, environment))
            if first_only and out:
                break
        return out

    def set_dynamic(
        self,
        values: list[DynamicValue],
        environment: dict[str, Any],
        entry: TraceEntry,
        out: dict[str, Any],
        resource: dict[str, Any] | None,
    ) -> list[Any] | None:
        """Apply dynamic values; return the `resource` targets when the action names some."""
        targets = None
        for dynamic in values:
            result = self.evaluate(dynamic.expression, environment, entry)
            path = dynamic.path.removeprefix("action.")
            if path == "resource":
                targets = [_reference(item) for item in result if _reference(item)]
            elif path in ACTION_PATHS:
                if result:
                    out[path] = "\n".join(str(item) for item in result)
            elif resource is not None and result:
                path = path.removeprefix(f"{resource['resourceType']}.")
                set_path(resource, path, result[0] if len(result) == 1 else result)
        return targets

    def create(
        self,
        activity: Activity,
        key: str,
        environment: dict[str, Any],
        entry: TraceEntry,
    ) -> dict[str, Any]:
        resource = draft_request(
            activity,
            f"{key}-{len(self.contained) + 1}",
            self.subject.patient_id,
            self.subject.encounter_id,
            lambda expression: self.evaluate(expression, environment, entry),
        )
        self.contained.append(resource)  # only once complete: a failure above adds nothing
        return resource

    def resolve_related_timing(self) -> None:
        """Date actions from the actions they follow, in document order (so chains resolve)."""
        for action in self.by_id.values():
            for related in action.get("relatedAction", []):
                base = self.by_id.get(related.get("actionId", ""), {}).get("timingDateTime")
                if not base:
                    continue  # the action it follows did not apply, or has no date
                relationship = related.get("relationship", "")
                offset = related.get("offsetDuration") or {}
                sign = -1 if relationship in _BEFORE else 1 if relationship in _AFTER else 0
                when = _shift(base, sign * float(offset.get("value", 0)), offset.get("code") or "d")
                if when is None:
                    continue
                action["timingDateTime"] = when
                resource = self.resources_of.get(id(action))
                if resource is not None and resource["resourceType"] != "MedicationRequest":
                    resource.setdefault("occurrenceDateTime", when)
                break

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


def _reference(item: Any) -> str | None:
    if isinstance(item, str) and "/" in item:
        return item
    if isinstance(item, dict) and "resourceType" in item and "id" in item:
        return f"{item['resourceType']}/{item['id']}"
    return None


def _shift(when: str, amount: float, unit: str) -> str | None:
    """`when` moved by a UCUM duration (d, wk, mo, a; h and min for date-times)."""
    try:
        moment = datetime.fromisoformat(when) if "T" in when else date.fromisoformat(when)
    except ValueError:
        return None
    if unit in ("d", "wk", "h", "min"):
        days = {"d": 1.0, "wk": 7.0, "h": 1 / 24, "min": 1 / 1440}[unit] * amount
        if isinstance(moment, datetime):
            return (moment + timedelta(days=days)).isoformat()
        return (moment + timedelta(days=round(days))).isoformat()
    if unit in ("mo", "a"):
        return add_months(moment, round(amount) * (12 if unit == "a" else 1)).isoformat()
    return None
