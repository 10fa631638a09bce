"""CDS services from PlanDefinitions: one service per `named-event` trigger, prefetch templates
from data requirements (HL7 "Using FHIR Clinical Reasoning with CDS Hooks")."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.engine import (
    CodeFilterError,
    Knowledge,
    KnowledgeCache,
    KnowledgeError,
    Plan,
    Problem,
    filter_codes,
    load_knowledge,
)
from service.fhir.templates import PREFETCH_TOKENS

QUERY_PATTERN_EXTENSION = "http://hl7.org/fhir/StructureDefinition/cqf-fhirQueryPattern"
# A retrieve whose data arrive through another requirement's broader query: it is bound as
# `%<id>` but is no prefetch key, so a plan can read many narrow code groups from a few queries.
RETRIEVE_ONLY_EXTENSION = "https://fhir.rpl-cds.org/StructureDefinition/retrieve-only"
# On a PlanDefinition, valueBoolean true: its services may leave out a card the clinician has
# dealt with for this patient (service/cdshooks/suppression.py).
REPEAT_SUPPRESSION_EXTENSION = "https://fhir.rpl-cds.org/StructureDefinition/repeat-suppression"
# Hooks about orders being written: each call is a new decision on new drafts, and a warning about
# a dangerous order must show however often an earlier one was overridden. No suppression there.
ORDER_HOOKS = frozenset({"order-select", "order-sign", "order-dispatch"})
_TOKEN = re.compile(r"\{\{\s*([^}]*?)\s*\}\}")


def _query_pattern(requirement: Mapping[str, Any]) -> str | None:
    """The requirement's explicit `cqf-fhirQueryPattern` template, if it has one."""
    return next(
        (
            extension.get("valueString")
            for extension in requirement.get("extension", [])
            if extension.get("url") == QUERY_PATTERN_EXTENSION
        ),
        None,
    )


def _code_path(requirement: Mapping[str, Any]) -> str | None:
    filters = requirement.get("codeFilter", [])
    return str(filters[0].get("path") or "code") if filters else None


@dataclass(frozen=True)
class CdsService:
    id: str
    hook: str
    title: str | None
    description: str
    prefetch: dict[str, str]
    plan: Plan
    # Whether a card dealt with for a patient may be left out of this service's next answers.
    suppresses_repeats: bool = False

    def discovery(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"hook": self.hook, "id": self.id, "description": self.description}
        if self.title:
            entry["title"] = self.title
        if self.prefetch:
            entry["prefetch"] = self.prefetch
        return entry


@dataclass(frozen=True)
class Catalogue:
    knowledge: Knowledge
    services: dict[str, CdsService]

    def discovery(self) -> dict[str, Any]:
        return {"services": [service.discovery() for service in self.services.values()]}

    def parameters(self) -> dict[str, Any]:
        """The values the knowledge's parameters took (the guideline profile among them)."""
        return {p.name: p.value for plan in self.knowledge.plans for p in plan.parameters}

    def plan(self, plan_id: str) -> Plan | None:
        return next((plan for plan in self.knowledge.plans if plan.id == plan_id), None)


def load_catalogue(
    directories: Iterable[Path],
    parameters: Mapping[str, Any] | None = None,
    cache: KnowledgeCache | None = None,
) -> Catalogue:
    knowledge = load_knowledge(directories, parameters, cache)
    problems: list[Problem] = []
    services: dict[str, CdsService] = {}
    for plan in knowledge.plans:
        for service in _services_of(plan, knowledge, problems):
            if service.id in services:
                problems.append(
                    Problem(plan.file, "PlanDefinition.id", f"service id '{service.id}' is taken")
                )
            services[service.id] = service
    if problems:
        raise KnowledgeError(problems)
    return Catalogue(knowledge, services)


def _services_of(plan: Plan, knowledge: Knowledge, problems: list[Problem]) -> list[CdsService]:
    raw = plan.raw
    if raw.get("status") == "retired":
        return []  # kept for the record (still validated and $apply-able), no longer served
    description = raw.get("description") or raw.get("title")
    if plan.hooks and not description:
        problems.append(Problem(plan.file, "PlanDefinition.description", "required for discovery"))
        return []
    prefetch = _prefetch(plan, knowledge, problems)
    suppression = _repeat_suppression(plan, problems)
    # A PlanDefinition with one trigger is one service named by its id; with several, each hook
    # gets its own id so EHRs that register services by id alone can tell them apart.
    return [
        CdsService(
            id=plan.id if len(plan.hooks) == 1 else f"{plan.id}-{hook}",
            hook=hook,
            title=raw.get("title"),
            description=str(description),
            prefetch=prefetch,
            plan=plan,
            suppresses_repeats=suppression,
        )
        for hook in plan.hooks
    ]


def _repeat_suppression(plan: Plan, problems: list[Problem]) -> bool:
    values = [
        extension.get("valueBoolean")
        for extension in plan.raw.get("extension", [])
        if extension.get("url") == REPEAT_SUPPRESSION_EXTENSION
    ]
    if not values:
        return False
    if len(values) > 1 or not isinstance(values[0], bool):
        problems.append(
            Problem(plan.file, "PlanDefinition.extension", "repeat-suppression: one valueBoolean")
        )
        return False
    orders = sorted(ORDER_HOOKS.intersection(plan.hooks))
    if values[0] and orders:
        problems.append(
            Problem(
                plan.file,
                "PlanDefinition.extension",
                f"repeat-suppression is refused for order hooks ({', '.join(orders)}): a warning "
                "about a new order must show however often an earlier one was overridden",
            )
        )
        return False
    return values[0]


def _prefetch(plan: Plan, knowledge: Knowledge, problems: list[Problem]) -> dict[str, str]:
    builder = _PrefetchBuilder(knowledge, plan.file, problems)
    templates: dict[str, str] = {}
    fetched = [(p, r) for p, r in plan.data_requirements if not _retrieve_only(r)]
    for path, requirement in plan.data_requirements:
        if _retrieve_only(requirement):
            builder.check_covered(requirement, path, fetched)
            continue
        key = requirement.get("id") or requirement.get("type", "data")
        template = builder.template(requirement, path)
        if template is None:
            continue
        if key in templates and templates[key] != template:
            builder.problem(path, f"prefetch key '{key}' is used for two different queries")
            continue
        templates[key] = template
    return templates


def _retrieve_only(requirement: Mapping[str, Any]) -> bool:
    return any(
        extension.get("url") == RETRIEVE_ONLY_EXTENSION and extension.get("valueBoolean") is True
        for extension in requirement.get("extension", [])
    )


@dataclass
class _PrefetchBuilder:
    knowledge: Knowledge
    file: Path
    problems: list[Problem]

    def problem(self, path: str, reason: str) -> None:
        self.problems.append(Problem(self.file, path, reason))

    def check_covered(
        self,
        requirement: Mapping[str, Any],
        path: str,
        fetched: list[tuple[str, dict[str, Any]]],
    ) -> None:
        """A retrieve-only requirement must be inside one prefetch query of its plan (same type,
        same code element, a superset of its codes); otherwise its data would never arrive."""
        wanted = self._codes(requirement)
        if wanted is None:
            return  # its code filter is reported by the knowledge check already
        for _, other in fetched:
            # An explicit query pattern may fetch anything: it cannot prove coverage.
            if other.get("type") != requirement.get("type") or _query_pattern(other):
                continue
            if _code_path(other) not in (None, _code_path(requirement)):
                continue
            covering = self._codes(other)
            if covering is not None and (not covering or wanted <= covering):
                return
        self.problem(
            path,
            "retrieve-only requirement: no prefetch requirement of this PlanDefinition (same "
            "type and code path, a code filter holding all its codes) fetches its data",
        )

    def _codes(self, requirement: Mapping[str, Any]) -> frozenset[tuple[str, str]] | None:
        """Its code filter's codes; empty for no filter (everything); None when unusable."""
        filters = requirement.get("codeFilter", [])
        if not filters:
            return frozenset()
        try:
            return frozenset(filter_codes(filters[0], self.knowledge.terminology))
        except CodeFilterError:
            return None

    def template(self, requirement: dict[str, Any], path: str) -> str | None:
        """The explicit `cqf-fhirQueryPattern`, else a query built from the requirement."""
        template = _query_pattern(requirement) or self._query(requirement, path)
        if template is None:
            return None
        bad = [token for token in _TOKEN.findall(template) if token not in PREFETCH_TOKENS]
        if bad:
            self.problem(path, f"prefetch tokens not in CDS Hooks 2.0: {bad}")
            return None
        return template

    def _query(self, requirement: dict[str, Any], path: str) -> str | None:
        resource_type = requirement["type"]
        if resource_type == "Patient":
            return "Patient/{{context.patientId}}"
        params = ["patient={{context.patientId}}"]
        for index, code_filter in enumerate(requirement.get("codeFilter", [])):
            where = f"{path}.codeFilter[{index}]"
            search_param = code_filter.get("searchParam") or code_filter.get("path")
            if not search_param:
                self.problem(where, "needs searchParam or path")
                return None
            try:
                codes = filter_codes(code_filter, self.knowledge.terminology)
            except CodeFilterError as error:
                self.problem(f"{where}.{error.element}", error.reason)
                return None
            params.append(f"{search_param}={','.join(f'{s}|{c}' for s, c in codes)}")
        for index, date_filter in enumerate(requirement.get("dateFilter", [])):
            dates = self._date_params(date_filter, f"{path}.dateFilter[{index}]")
            if dates is None:
                return None
            params.extend(dates)
        return f"{resource_type}?{'&'.join(params)}"

    def _date_params(self, date_filter: dict[str, Any], where: str) -> list[str] | None:
        """Absolute date filters as search parameters. A relative one (valueDuration, "the last
        year") needs CDS Hooks 3.0's today() token, which a 2.0 EHR does not expand; lookbacks
        belong in the expressions (daysBetween) instead."""
        search_param = date_filter.get("searchParam") or date_filter.get("path")
        if not search_param:
            self.problem(where, "needs searchParam or path")
            return None
        if "valueDateTime" in date_filter:
            return [f"{search_param}=eq{date_filter['valueDateTime']}"]
        period = date_filter.get("valuePeriod")
        if isinstance(period, dict) and (period.get("start") or period.get("end")):
            bounds = [("ge", period.get("start")), ("le", period.get("end"))]
            return [f"{search_param}={prefix}{value}" for prefix, value in bounds if value]
        self.problem(
            where,
            "only valueDateTime and valuePeriod filters can be prefetch queries; a relative "
            "valueDuration needs CDS Hooks 3.0 date tokens (use daysBetween in expressions)",
        )
        return None
