"""Compiling a PlanDefinition into the plan model (`plan.py`): every expression compiled and
checked (scope, syntax, engine functions), every reference resolved, every code the card mapping
reads checked; each problem collected with its file and element path."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from service.engine.fhirpath import (
    BUILTIN_VARIABLES,
    RESOURCE_TYPES,
    CompiledExpression,
    ExpressionError,
    compile_expression,
    parse_expression,
)
from service.engine.knowledge_cache import KnowledgeCache
from service.engine.plan import (
    ACTION_PATHS,
    APPLICABILITY_BEHAVIOR,
    PATH_STEP,
    PREFERRED_CITATION,
    VARIABLE_EXTENSION,
    Action,
    Activity,
    DynamicValue,
    Parameter,
    Plan,
    Variable,
)
from service.engine.problems import ParameterValueProblem, Problem
from service.engine.registry import Registry
from service.engine.retrieve import Retrieve
from service.engine.terminology import Terminology

DEFAULT_VALUE_EXTENSION = "http://hl7.org/fhir/StructureDefinition/cqf-defaultValue"
# A parameter whose values are codes of a ValueSet (a choice among named options, such as the
# guideline profile): the value is checked at load, so a misspelt one cannot silently match no
# branch of the logic. ParameterDefinition has no binding element in R4.
ALLOWED_VALUES_EXTENSION = "https://fhir.rpl-cds.org/StructureDefinition/parameter-allowed-values"
# ParameterDefinition types a deployment can set, and the Python values each accepts.
PARAMETER_TYPES: Mapping[str, tuple[type, ...]] = {
    "integer": (int,),
    "decimal": (int, float),
    "string": (str,),
    "code": (str,),
    "boolean": (bool,),
    "date": (str,),
    "dateTime": (str,),
}
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
FHIRPATH = "text/fhirpath"
# The request resources $apply can create from an ActivityDefinition.
ACTIVITY_KINDS = frozenset({"ServiceRequest", "MedicationRequest"})
# fhir.resources checks structure and datatypes but not code bindings; these codes drive the card
# mapping, so a misspelt one must not silently become the default.
ACTION_CODES = {
    "priority": frozenset({"routine", "urgent", "asap", "stat"}),
    "selectionBehavior": frozenset(
        {"any", "all", "all-or-none", "exactly-one", "at-most-one", "one-or-more"}
    ),
    "groupingBehavior": frozenset({"visual-group", "logical-group", "sentence-group"}),
}
# Variables the engine puts in every evaluation's environment (see engine/apply.py).
ENGINE_VARIABLES = frozenset({"patient", "context", "hook", "missingData", "today"})


def allowed_values_url(definition: Mapping[str, Any]) -> str | None:
    """The ValueSet a Library parameter's value must come from, if it names one."""
    return next(
        (
            str(extension["valueCanonical"])
            for extension in definition.get("extension", [])
            if extension.get("url") == ALLOWED_VALUES_EXTENSION and extension.get("valueCanonical")
        ),
        None,
    )


class CodeFilterError(ValueError):
    def __init__(self, element: str, reason: str) -> None:
        super().__init__(reason)
        self.element = element
        self.reason = reason


def filter_codes(
    code_filter: Mapping[str, Any], terminology: Terminology
) -> tuple[tuple[str, str], ...]:
    """The codes a DataRequirement.codeFilter matches: its listed codes, then its ValueSet's
    closure (with the local codes that ConceptMaps translate into it), sorted; no repeats. Used
    for both the prefetch query and the retrieve, so the two always agree."""
    listed = code_filter.get("code", [])
    if any(not (c.get("system") and c.get("code")) for c in listed):
        raise CodeFilterError("code", "every code needs a system and a code")
    codes = [(str(c["system"]), str(c["code"])) for c in listed]
    url = code_filter.get("valueSet")
    if url:
        if not terminology.knows(url):
            raise CodeFilterError("valueSet", f"ValueSet {url} cannot be expanded")
        codes.extend(sorted(terminology.closure(url)))
    return tuple(dict.fromkeys(codes))


def default_value(definition: Mapping[str, Any]) -> Any:
    """A Library parameter's default: the value of its cqf-defaultValue extension, else None."""
    return next(
        (
            value
            for extension in definition.get("extension", [])
            if extension.get("url") == DEFAULT_VALUE_EXTENSION
            for key, value in extension.items()
            if key.startswith("value")
        ),
        None,
    )


def _no_static_problems(_: Mapping[str, Any]) -> list[str]:
    return []


@dataclass
class PlanCompiler:
    knowledge: Registry
    terminology: Terminology
    file: Path
    problems: list[Problem]
    functions: Mapping[str, Any] = field(default_factory=dict)
    cache: KnowledgeCache | None = None
    static_check: Callable[[Mapping[str, Any]], list[str]] = _no_static_problems
    settings: Mapping[str, Any] = field(default_factory=dict)
    activities: dict[str, Activity] = field(default_factory=dict)
    resource_types: set[str] = field(default_factory=set)
    action_ids: set[str] = field(default_factory=set)
    # Expressions compiled so far, by text: a compiled expression holds no context (its variables
    # are bound when it is evaluated), so one text is compiled once, whichever plans repeat it.
    compiled: dict[str, CompiledExpression] = field(default_factory=dict)

    def compile(self, resource: dict[str, Any]) -> Plan | None:
        plan_id = resource.get("id")
        if not plan_id:
            self._problem("PlanDefinition.id", "an id is required (it names the CDS service)")
            return None
        for index, canonical in enumerate(resource.get("library", [])):
            library = self.knowledge.resolve(canonical)
            if library is None or library.get("resourceType") != "Library":
                self._problem(
                    f"PlanDefinition.library[{index}]", f"{canonical} is not a loaded Library"
                )
        self._check_applicability_behavior(resource, "PlanDefinition")
        requirements = list(self._data_requirements(resource))
        retrieves = self._retrieves(requirements)
        parameters = self._parameters(resource)
        known = set(ENGINE_VARIABLES) | {retrieve.name for retrieve in retrieves}
        for parameter in parameters:
            if parameter.name in known:
                self._problem("PlanDefinition.library", f"parameter '{parameter.name}' clashes")
            known.add(parameter.name)
        variables = self._variables(resource, "PlanDefinition", known)
        actions = [
            self._action(action, f"PlanDefinition.action[{index}]", known)
            for index, action in enumerate(resource.get("action", []))
        ]
        self._check_related(resource.get("action", []), "PlanDefinition.action")
        hooks = sorted({hook for action in actions for hook in action.hooks})
        return Plan(
            resource,
            self.file,
            plan_id,
            resource.get("url"),
            hooks,
            variables,
            actions,
            frozenset(self.resource_types),
            requirements,
            retrieves,
            parameters,
        )

    def _parameters(self, resource: dict[str, Any]) -> list[Parameter]:
        parameters = []
        for index, canonical in enumerate(resource.get("library", [])):
            library = self.knowledge.resolve(canonical) or {}
            for number, definition in enumerate(library.get("parameter", [])):
                if definition.get("use") != "in":
                    continue
                where = f"Library {canonical} parameter[{number}] (PlanDefinition.library[{index}])"
                parameter = self._parameter(definition, where)
                if parameter is not None:
                    parameters.append(parameter)
        return parameters

    def _parameter(self, definition: dict[str, Any], where: str) -> Parameter | None:
        name, kind = definition.get("name", ""), definition.get("type", "")
        if not _IDENTIFIER.fullmatch(name) or kind not in PARAMETER_TYPES:
            self._problem(
                where, f"needs a name usable as %name and a type in {sorted(PARAMETER_TYPES)}"
            )
            return None
        default = default_value(definition)
        value = self.settings.get(name, default)
        # A value that is refused still declares the parameter, so the expressions reading it
        # are not reported too: one problem, the one to fix.
        if value is None:
            self._problem(where, f"'{name}' has no default and RPL_CDS_PARAMETERS does not set it")
            return Parameter(name, kind, value)
        allowed = PARAMETER_TYPES[kind]
        # bool is an int to Python, but true is not an integer to an author.
        if (isinstance(value, bool) and bool not in allowed) or not isinstance(value, allowed):
            self._value_problem(where, name, f"must be of type {kind}, not {value!r}")
            return Parameter(name, kind, value)
        url = allowed_values_url(definition)
        if url is not None:
            if not self.terminology.knows(url):
                self._problem(
                    where, f"'{name}': allowed values {url} is not an expandable ValueSet"
                )
                return Parameter(name, kind, value)
            codes = sorted({code for _, code in self.terminology.closure(url)})
            if value not in codes:
                self._value_problem(
                    where, name, f"must be one of {codes} (ValueSet {url}), not {value!r}"
                )
        return Parameter(name, kind, value)

    def _value_problem(self, where: str, name: str, reason: str) -> None:
        """A value the deployment set is a setting to fix; the knowledge's own default, the
        knowledge."""
        if name in self.settings:
            self.problems.append(
                ParameterValueProblem(self.file, where, f"'{name}' {reason}", name)
            )
        else:
            self._problem(where, f"'{name}' (its default) {reason}")

    def _data_requirements(self, resource: dict[str, Any]) -> Iterable[tuple[str, dict[str, Any]]]:
        for index, canonical in enumerate(resource.get("library", [])):
            library = self.knowledge.resolve(canonical) or {}
            for number, requirement in enumerate(library.get("dataRequirement", [])):
                yield f"PlanDefinition.library[{index}].dataRequirement[{number}]", requirement

        def walk(
            actions: Sequence[dict[str, Any]], path: str
        ) -> Iterable[tuple[str, dict[str, Any]]]:
            for index, action in enumerate(actions):
                for number, requirement in enumerate(action.get("input", [])):
                    yield f"{path}[{index}].input[{number}]", requirement
                yield from walk(action.get("action", []), f"{path}[{index}].action")

        yield from walk(resource.get("action", []), "PlanDefinition.action")

    def _retrieves(self, requirements: list[tuple[str, dict[str, Any]]]) -> list[Retrieve]:
        """Each named requirement becomes `%<id>` (the patient is `%patient` already)."""
        retrieves: dict[str, Retrieve] = {}
        for path, requirement in requirements:
            name, resource_type = requirement.get("id"), requirement.get("type")
            if not name or resource_type == "Patient":
                continue
            if not _IDENTIFIER.fullmatch(name) or name in ENGINE_VARIABLES:
                self._problem(f"{path}.id", f"'{name}' cannot name a retrieve (%{name})")
                continue
            filters = requirement.get("codeFilter", [])
            if len(filters) > 1:
                self._problem(f"{path}.codeFilter", "one codeFilter per requirement is supported")
                continue
            codes: frozenset[tuple[str, str]] | None = None
            element = "code"
            if filters:
                element = filters[0].get("path") or "code"
                codes = self._filter_codes(filters[0], f"{path}.codeFilter[0]")
                if codes is None:
                    continue
            retrieve = Retrieve(name, str(resource_type), element, codes)
            if name in retrieves and retrieves[name] != retrieve:
                self._problem(f"{path}.id", f"'{name}' names two different requirements")
                continue
            retrieves[name] = retrieve
        return list(retrieves.values())

    def _filter_codes(
        self, code_filter: dict[str, Any], path: str
    ) -> frozenset[tuple[str, str]] | None:
        try:
            return frozenset(filter_codes(code_filter, self.terminology))
        except CodeFilterError as error:
            self._problem(f"{path}.{error.element}", error.reason)
            return None

    def _problem(self, path: str, reason: str) -> None:
        self.problems.append(Problem(self.file, path, reason))

    def _action(self, raw: dict[str, Any], path: str, known: set[str]) -> Action:
        scope = set(known)  # variables of an action are visible to it and its children only
        self._check_action_shape(raw, path)
        for element, allowed in ACTION_CODES.items():
            if element in raw and raw[element] not in allowed:
                self._problem(
                    f"{path}.{element}", f"'{raw[element]}' is not one of {sorted(allowed)}"
                )
        variables = self._variables(raw, path, scope)
        conditions = []
        for index, condition in enumerate(raw.get("condition", [])):
            where = f"{path}.condition[{index}]"
            if condition.get("kind") != "applicability":
                self._problem(where, f"condition kind '{condition.get('kind')}' is not supported")
                continue
            compiled = self._expression(
                condition.get("expression", {}), f"{where}.expression", scope
            )
            if compiled is not None:
                conditions.append(compiled)
        dynamic_values = self._dynamic_values(raw, path, scope)
        preferred = self._preferred_citations(raw, path, scope)
        if raw.get("id"):
            self.action_ids.add(raw["id"])
        children = [
            self._action(child, f"{path}.action[{index}]", scope)
            for index, child in enumerate(raw.get("action", []))
        ]
        hooks = frozenset(
            trigger["name"]
            for trigger in raw.get("trigger", [])
            if trigger.get("type") == "named-event" and trigger.get("name")
        )
        key = raw.get("id") or _topic_code(raw) or path
        activity = self._activity(raw, path)
        for index, dynamic in enumerate(dynamic_values):
            target = dynamic.path.removeprefix("action.")
            if target not in ACTION_PATHS and activity is None:
                self._problem(
                    f"{path}.dynamicValue[{index}].path",
                    f"'{dynamic.path}' sets a created resource, but the action has no "
                    f"definitionCanonical (action paths: {sorted(ACTION_PATHS)})",
                )
        return Action(
            raw,
            path,
            key,
            hooks,
            variables,
            conditions,
            dynamic_values,
            children,
            activity,
            preferred,
        )

    def _preferred_citations(
        self, raw: dict[str, Any], path: str, scope: set[str]
    ) -> list[tuple[int, CompiledExpression]]:
        preferred = []
        for index, document in enumerate(raw.get("documentation", [])):
            extensions = [
                (number, extension)
                for number, extension in enumerate(document.get("extension", []))
                if extension.get("url") == PREFERRED_CITATION
            ]
            if not extensions:
                continue
            where = f"{path}.documentation[{index}]"
            if len(extensions) > 1:
                self._problem(where, "one cds-preferred-citation condition per entry")
                continue
            if document.get("type") != "citation":
                # Only a citation can become the card's source: a preferred `documentation`
                # entry would be moved first and change nothing the clinician sees.
                self._problem(f"{where}.type", "a preferred entry must be of type citation")
                continue
            number, extension = extensions[0]
            compiled = self._expression(
                extension.get("valueExpression", {}),
                f"{where}.extension[{number}].valueExpression",
                scope,
            )
            if compiled is not None:
                preferred.append((index, compiled))
        return preferred

    def _check_action_shape(self, raw: dict[str, Any], path: str) -> None:
        action_id = raw.get("id")
        if action_id and action_id in self.action_ids:
            # Card and suggestion uuids are derived from action ids: two would collide.
            self._problem(f"{path}.id", f"action id '{action_id}' is used twice")
        top_level = path.count(".action[") == 1
        for index, trigger in enumerate(raw.get("trigger", [])):
            where = f"{path}.trigger[{index}]"
            if trigger.get("type") != "named-event" or not trigger.get("name"):
                self._problem(where, "only named-event triggers (a CDS Hooks hook) are supported")
            elif not top_level:
                self._problem(where, "triggers belong on top-level actions")
        self._check_applicability_behavior(raw, path)

    def _check_applicability_behavior(self, owner: dict[str, Any], path: str) -> None:
        for index, extension in enumerate(owner.get("extension", [])):
            behavior = extension.get("valueCode")
            if extension.get("url") == APPLICABILITY_BEHAVIOR and behavior not in ("any", "all"):
                self._problem(f"{path}.extension[{index}]", "valueCode must be any or all")

    def _dynamic_values(
        self, owner: dict[str, Any], path: str, scope: set[str]
    ) -> list[DynamicValue]:
        values = []
        for index, dynamic in enumerate(owner.get("dynamicValue", [])):
            where = f"{path}.dynamicValue[{index}]"
            if not dynamic.get("path"):
                self._problem(f"{where}.path", "a dynamicValue needs a path")
                continue
            if not all(PATH_STEP.match(step) for step in dynamic["path"].split(".")):
                self._problem(f"{where}.path", "a path is element names and [n] indexes only")
                continue
            compiled = self._expression(dynamic.get("expression", {}), f"{where}.expression", scope)
            if compiled is not None:
                values.append(DynamicValue(dynamic["path"], compiled))
        return values

    def _check_related(self, actions: list[dict[str, Any]], path: str) -> None:
        for index, action in enumerate(actions):
            for number, related in enumerate(action.get("relatedAction", [])):
                if related.get("actionId") not in self.action_ids:
                    self._problem(
                        f"{path}[{index}].relatedAction[{number}].actionId",
                        f"no action with id '{related.get('actionId')}' in this PlanDefinition",
                    )
            self._check_related(action.get("action", []), f"{path}[{index}].action")

    def _variables(self, owner: dict[str, Any], path: str, scope: set[str]) -> list[Variable]:
        variables = []
        for index, extension in enumerate(owner.get("extension", [])):
            if extension.get("url") != VARIABLE_EXTENSION:
                continue
            where = f"{path}.extension[{index}].valueExpression"
            expression = extension.get("valueExpression", {})
            name = expression.get("name")
            if not name:
                self._problem(where, "a variable needs a name")
                continue
            if name in scope:
                # Shadowing makes an expression read a different value than its author saw.
                self._problem(
                    where,
                    f"variable '{name}' is already defined (or is an engine "
                    "variable or a data requirement)",
                )
            compiled = self._expression(expression, where, scope)
            scope.add(name)  # defined from here on, also when it failed (one report is enough)
            if compiled is not None:
                variables.append(Variable(name, compiled))
        return variables

    def _expression(
        self, expression: dict[str, Any], path: str, scope: set[str]
    ) -> CompiledExpression | None:
        if expression.get("language") != FHIRPATH:
            self._problem(path, f"language must be {FHIRPATH}, not {expression.get('language')}")
            return None
        text = expression.get("expression")
        if not text:
            self._problem(path, "expression text is missing")
            return None
        compiled = self.compiled.get(text)
        if compiled is None:
            try:
                tree = parse_expression(text, self.cache)
            except ExpressionError as error:
                self._problem(path, f"FHIRPath does not compile: {error}")
                return None
            problems = self.static_check(tree)
            for reason in problems:
                self._problem(path, reason)
            compiled = compile_expression(text, self.functions, tree=tree)
            if not problems:
                self.compiled[text] = compiled
        free = compiled.variables - scope - BUILTIN_VARIABLES
        # Collections of the patient's resources are offered as %Condition, %Observation, ...
        types = free & RESOURCE_TYPES
        self.resource_types.update(types)
        undefined = sorted(free - types)
        if undefined:
            self._problem(path, f"variable(s) used before they are defined: {undefined}")
        return compiled

    def _activity(self, raw: dict[str, Any], path: str) -> Activity | None:
        canonical = raw.get("definitionCanonical")
        if not canonical:
            return None
        if canonical in self.activities:
            return self.activities[canonical]
        target = self.knowledge.resolve(canonical)
        where = f"{path}.definitionCanonical"
        if target is None or target.get("resourceType") != "ActivityDefinition":
            self._problem(where, f"{canonical} does not resolve to an ActivityDefinition")
            return None
        if target.get("kind") not in ACTIVITY_KINDS:
            kind = target.get("kind")
            self._problem(where, f"kind '{kind}' is not one of {sorted(ACTIVITY_KINDS)}")
            return None
        # An ActivityDefinition's expressions see the engine's variables, not the action's.
        scope = set(ENGINE_VARIABLES)
        activity = Activity(target, self._dynamic_values(target, "ActivityDefinition", scope))
        self.activities[canonical] = activity
        return activity


def _topic_code(action: dict[str, Any]) -> str | None:
    for concept in action.get("code", []):
        for coding in concept.get("coding", []):
            if coding.get("code"):
                return str(coding["code"])
    return None
