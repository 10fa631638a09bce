"""The clinical logic as Markdown, for clinicians who review it without reading JSON.

`rpl-cds render-clinical-logic` writes `docs/clinical-logic.md` from the loaded knowledge: per
PlanDefinition its variables, parameters and the patient data it reads; per top-level action (one
card, one recommendation) when it fires, what it suggests, the card text and its sources; then the
terminology (ValueSets, ConceptMaps, CodeSystems) and unit tables.

Everything here is generic: every sentence about a patient comes from the knowledge artifacts,
none from this module, so it works for any guideline's PlanDefinitions. The output depends only on
the knowledge (no dates, no absolute paths, resources sorted where the documents give no order), so
a test can tell when the committed file is stale.

What it says the logic does comes from the compiled model the engine runs (`service.engine`: which
variables, conditions, dynamic values, parameters, retrieves, ActivityDefinitions and preferred
citations an action has) and from the rules of the engine and the card encoder themselves
(`first_match_only`, `service.cdshooks.cards`), never from a copy of them: a copy could describe a
card the service does not send. The JSON is read only for what the model does not keep: titles,
descriptions, documentation, displays.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from service.cdshooks import cards
from service.cdshooks.catalogue import Catalogue, load_catalogue
from service.engine import (
    TEXT_PATTERN_EXTENSION,
    TRANSLATING_EQUIVALENCES,
    TRANSLATING_RELATIONSHIPS,
    UNIT_TABLE_SUFFIX,
    Action,
    Plan,
    default_value,
    first_match_only,
)
from service.settings import data_root

COMMAND = "rpl-cds render-clinical-logic"
DEFAULT_OUTPUT = Path("docs") / "clinical-logic.md"
_LINE_BREAKS = re.compile(r"[ \t]*(?:\r\n|\r|\n)[ \t]*")

Json = Mapping[str, Any]


def default_output() -> Path:
    return data_root() / DEFAULT_OUTPUT


def render(
    knowledge_dirs: Sequence[Path],
    *,
    root: Path | None = None,
    parameters: Mapping[str, Any] | None = None,
) -> str:
    """The Markdown for the knowledge in `knowledge_dirs`, loaded and validated as the service
    loads it (a KnowledgeError when it does not load). Paths are shown relative to `root` (default:
    the repository or data root); a path outside it is shown from its knowledge directory's name.
    `parameters` only matter for knowledge with a parameter that has no default; the document
    always shows the defaults the knowledge declares."""
    directories = [Path(directory) for directory in knowledge_dirs]
    catalogue = load_catalogue(directories, parameters)
    paths = _Paths((root or data_root()).resolve(), [d.resolve() for d in directories])
    document = _Document(catalogue, paths, directories)
    document.write()
    return document.text()


# Markdown


def _inline(text: Any) -> str:
    """One line of text (bullets and headings cannot span lines)."""
    return " ".join(str(text).split())


def _code(text: Any) -> str:
    """A code span that survives any backticks in the text (FHIRPath delimited identifiers)."""
    value = _LINE_BREAKS.sub(" ", str(text)).strip()
    if not value:
        return "(empty)"
    longest = max((len(run) for run in re.findall(r"`+", value)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if value.startswith("`") or value.endswith("`") else ""
    return f"{fence}{pad}{value}{pad}{fence}"


def _cell(text: str) -> str:
    """A table cell: one line, pipes escaped (GFM unescapes them inside code spans too)."""
    return _inline(text).replace("|", "\\|")


def _row(*cells: str) -> str:
    return "| " + " | ".join(_cell(cell) for cell in cells) + " |"


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    return [_row(*header), "|" + "---|" * len(header), *(_row(*row) for row in rows)]


def _link(label: str, url: str) -> str:
    text = _inline(label).replace("[", "\\[").replace("]", "\\]")
    target = url.strip().replace(" ", "%20")
    if any(char in target for char in "()<>"):
        target = "<" + target.replace("<", "%3C").replace(">", "%3E") + ">"
    return f"[{text}]({target})"


def _quote(text: str) -> list[str]:
    return [f"> {line}".rstrip() for line in text.strip().splitlines()]


def _value(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _coding(coding: Json) -> str:
    identifier = "|".join(str(coding[key]) for key in ("system", "code") if coding.get(key))
    parts = [_code(identifier)] if identifier else []
    if coding.get("display"):
        parts.append(_inline(coding["display"]))
    return " ".join(parts) or "(no code)"


def _concept(concept: Json) -> str:
    shown = "; ".join(_coding(coding) for coding in concept.get("coding", []))
    text = concept.get("text")
    if text:
        shown = f"{shown} (text: {_inline(text)})" if shown else _inline(text)
    return shown or "(no code)"


def _topic(action: Action) -> str | None:
    """The recommendation's topic code, as its card carries it."""
    coding = cards.topic_coding(action.raw)
    return str(coding["code"]) if coding else None


def _expressions(value: Any) -> Iterator[Json]:
    """Every FHIR Expression (an `expression` with its `language`) inside a JSON value."""
    if isinstance(value, Mapping):
        if "language" in value and "expression" in value:
            yield value
        for item in value.values():
            yield from _expressions(item)
    elif isinstance(value, list):
        for item in value:
            yield from _expressions(item)


# The compiled model keeps expressions, not the prose their authors wrote beside them: these find
# it, for a variable by its name (unique in its scope), for a condition by its text.


def _variable_description(owner: Json, name: str) -> str | None:
    return next(
        (
            e.get("description")
            for e in _expressions(owner.get("extension", []))
            if e.get("name") == name
        ),
        None,
    )


def _condition_description(action: Json, text: str) -> str | None:
    return next(
        (
            e.get("description")
            for e in _expressions(action.get("condition", []))
            if e.get("expression") == text
        ),
        None,
    )


def _described(description: str | None, text: str) -> str:
    """`description: expression`, the way every condition and variable is shown."""
    shown = _code(text)
    return f"{_inline(description)}: {shown}" if description else f"_(no description)_ {shown}"


def _conditions(action: Action) -> list[str]:
    return [
        _described(_condition_description(action.raw, condition.text), condition.text)
        for condition in action.conditions
    ]


def _action_variables(action: Action) -> list[tuple[str, str]]:
    """(`%name`, its description and expression) for each of the action's own variables."""
    return [
        (
            _code(f"%{variable.name}"),
            _described(_variable_description(action.raw, variable.name), variable.expression.text),
        )
        for variable in action.variables
    ]


def _dynamic(action: Action, *paths: str) -> list[str]:
    """The expressions of the dynamic values that set these paths of the action."""
    return [
        dynamic.expression.text
        for dynamic in action.dynamic_values
        if dynamic.path.removeprefix("action.") in paths
    ]


def _walk_concepts(concepts: Iterable[Json]) -> Iterator[Json]:
    for concept in concepts:
        yield concept
        yield from _walk_concepts(concept.get("concept", []))


def _walk_contains(contains: Iterable[Json]) -> Iterator[Json]:
    for entry in contains:
        yield entry
        yield from _walk_contains(entry.get("contains", []))


def _value_set_displays(value_set: Json) -> dict[tuple[str, str], str]:
    displays: dict[tuple[str, str], str] = {}
    for part in value_set.get("compose", {}).get("include", []):
        for concept in part.get("concept", []):
            if part.get("system") and concept.get("code") and concept.get("display"):
                displays[(part["system"], concept["code"])] = concept["display"]
    for entry in _walk_contains(value_set.get("expansion", {}).get("contains", [])):
        if entry.get("system") and entry.get("code") and entry.get("display"):
            displays.setdefault((entry["system"], entry["code"]), entry["display"])
    return displays


@dataclass(frozen=True)
class _Paths:
    root: Path
    directories: list[Path]

    def show(self, path: Path) -> str:
        """Relative to the root, else from the knowledge directory's name: never absolute."""
        resolved = path.resolve()
        if resolved.is_relative_to(self.root):
            return resolved.relative_to(self.root).as_posix() or "."
        for directory in self.directories:
            if resolved.is_relative_to(directory):
                return (Path(directory.name) / resolved.relative_to(directory)).as_posix()
        return resolved.name


@dataclass
class _Document:
    catalogue: Catalogue
    paths: _Paths
    directories: list[Path]
    lines: list[str] = field(default_factory=list)

    def text(self) -> str:
        while self.lines and not self.lines[-1]:
            self.lines.pop()
        return "\n".join(line.rstrip() for line in self.lines) + "\n"

    def add(self, *lines: str) -> None:
        self.lines.extend(lines)

    def block(self, *lines: str) -> None:
        """Lines followed by a blank line."""
        self.lines.extend(lines)
        self.lines.append("")

    def resources(self, resource_type: str) -> list[tuple[Json, Path]]:
        """Each loaded resource of the type once (it is registered under url and url|version),
        sorted by url and version."""
        knowledge = self.catalogue.knowledge
        unique: dict[int, tuple[Json, Path]] = {}
        for key, resource in knowledge.by_canonical.items():
            if resource.get("resourceType") == resource_type:
                unique.setdefault(id(resource), (resource, knowledge.files[key]))
        return sorted(
            unique.values(),
            key=lambda item: (str(item[0].get("url", "")), str(item[0].get("version", ""))),
        )

    # The document

    def write(self) -> None:
        plans = self.catalogue.knowledge.plans
        shown = ", ".join(_code(f"{self.paths.show(d).rstrip('/')}/") for d in self.directories)
        self.block("# Clinical logic")
        self.block(
            "<!-- Generated file: do not edit by hand. "
            f"Regenerate with `{COMMAND}` after changing the knowledge. -->"
        )
        self.block(
            f"> **Generated** by `{COMMAND}` from the knowledge in {shown}. Do not edit this "
            "file by hand: change the PlanDefinitions or the terminology and run the command "
            "again (a test fails when this file is out of date)."
        )
        self.block(
            "Each recommendation below is one CDS Hooks card. Conditions and values are shown "
            "with their author's description followed by the FHIRPath expression the engine "
            "actually runs; when the two disagree, the expression is what happens."
        )
        self.overview(plans)
        for plan in plans:
            self.plan(plan)
        self.terminology()

    def overview(self, plans: Sequence[Plan]) -> None:
        self.block("## Overview")
        rows = [
            (
                _inline(plan.raw.get("title") or plan.id),
                " ".join(
                    part
                    for part in (
                        _code(_topic(action)) if _topic(action) else "",
                        _inline(action.raw.get("title") or "Recommendation"),
                    )
                    if part
                ),
                self.indicator(action),
                ", ".join(self.hooks(plan, action)),
            )
            for plan in plans
            for action in plan.actions
        ]
        if rows:
            self.block(*_table(("PlanDefinition", "recommendation", "card", "hooks"), rows))
        else:
            self.block("No PlanDefinitions are loaded.")

    def indicator(self, action: Action) -> str:
        if _dynamic(action, "priority"):
            return "set when the card fires"
        return cards.indicator(action.raw)

    def hooks(self, plan: Plan, action: Action) -> list[str]:
        return sorted(action.hooks) or list(plan.hooks)

    # PlanDefinitions

    def plan(self, plan: Plan) -> None:
        raw = plan.raw
        self.block(f"## PlanDefinition: {_inline(raw.get('title') or raw.get('name') or plan.id)}")
        facts = [f"id {_code(plan.id)}"]
        if plan.url:
            facts.append(f"url {_code(plan.url)}")
        for key in ("version", "status"):
            if raw.get(key):
                facts.append(f"{key} {_code(raw[key])}")
        facts.append(f"file {_code(self.paths.show(plan.file))}")
        self.block(" · ".join(facts))
        if raw.get("description"):
            self.block(*str(raw["description"]).strip().splitlines())
        self.block(f"**Served as:** {self.services(plan)}")
        if any(s.suppresses_repeats for s in self.catalogue.services.values() if s.plan is plan):
            self.block(
                "**Repeat suppression:** a card the clinician overrode with a reason it offers "
                "whose `suppresses-repeat` property is true is not shown again to that patient "
                "until the record changes or `RPL_CDS_SUPPRESSION_DAYS` pass."
            )
        if first_match_only(raw):
            self.block(
                "**Only the first recommendation that applies is shown**, in the order below "
                "(`cqf-applicabilityBehavior` any)."
            )
        self.plan_variables(plan)
        self.parameters(plan)
        self.data(plan)
        for action in plan.actions:
            self.recommendation(plan, action)

    def services(self, plan: Plan) -> str:
        services = sorted(
            (service for service in self.catalogue.services.values() if service.plan is plan),
            key=lambda service: service.id,
        )
        if services:
            return ", ".join(f"{_code(service.id)} ({service.hook})" for service in services)
        if plan.raw.get("status") == "retired":
            return "no service: the PlanDefinition is retired (it can still be run with `$apply`)"
        return "no service: no action has a named-event trigger (it can be run with `$apply`)"

    def plan_variables(self, plan: Plan) -> None:
        if not plan.variables:
            return
        self.block("**Values computed for every call** (PlanDefinition variables, in this order):")
        self.block(
            *_table(
                ("name", "meaning", "FHIRPath"),
                (
                    (
                        _code(f"%{variable.name}"),
                        _inline(_variable_description(plan.raw, variable.name) or ""),
                        _code(variable.expression.text),
                    )
                    for variable in plan.variables
                ),
            )
        )

    def parameters(self, plan: Plan) -> None:
        rows = []
        for parameter in plan.parameters:
            # The document shows the default the knowledge declares, not the value a deployment
            # gave the parameter, so it reads the declaration (which also has the documentation).
            definition = self.parameter_definition(plan, parameter.name)
            default = default_value(definition)
            rows.append(
                (
                    _code(f"%{parameter.name}"),
                    parameter.type,
                    _code(_value(default)) if default is not None else "none",
                    _inline(definition.get("documentation", "")),
                )
            )
        if not rows:
            return
        self.block(
            "**Parameters** (from the Libraries it lists; a deployment can change them with "
            "`RPL_CDS_PARAMETERS`):"
        )
        self.block(*_table(("name", "type", "default", "meaning"), rows))

    def parameter_definition(self, plan: Plan, name: str) -> Json:
        """The Library's declaration of the plan's parameter `name`."""
        for canonical in plan.raw.get("library", []):
            library = self.catalogue.knowledge.resolve(canonical) or {}
            for definition in library.get("parameter", []):
                if definition.get("name") == name and definition.get("use") == "in":
                    return dict(definition)
        return {}

    def data(self, plan: Plan) -> None:
        rows: list[tuple[str, str, str]] = []
        retrieved = {retrieve.name for retrieve in plan.retrieves}
        for _, requirement in plan.data_requirements:
            resource_type = str(requirement.get("type", ""))
            name = requirement.get("id")
            # The patient is %patient to every expression; other requirements are bound by name.
            shown = (
                "%patient"
                if resource_type == "Patient"
                else f"%{name}"
                if name in retrieved
                else ""
            )
            row = (
                _code(shown) if shown else "(prefetch only)",
                resource_type,
                self.requirement_codes(requirement),
            )
            if row not in rows:
                rows.append(row)
        if not rows:
            return
        self.block("**Patient data it reads** (data requirements: prefetch and retrieves):")
        self.block(*_table(("name", "resource type", "coded as"), rows))

    def requirement_codes(self, requirement: Json) -> str:
        parts: list[str] = []
        for code_filter in requirement.get("codeFilter", []):
            parts.extend(_coding(code) for code in code_filter.get("code", []))
            url = code_filter.get("valueSet")
            if url:
                value_set = self.catalogue.knowledge.resolve(url) or {}
                title = value_set.get("title") or value_set.get("name")
                parts.append(
                    f"ValueSet {_inline(title)} ({_code(url)})"
                    if title
                    else f"ValueSet {_code(url)}"
                )
        return "; ".join(parts) or "any"

    # Recommendations

    def recommendation(self, plan: Plan, action: Action) -> None:
        raw = action.raw
        topic = _topic(action)
        title = _inline(raw.get("title") or "Recommendation")
        self.block(f"### {_code(topic)} {title}" if topic else f"### {title}")
        facts = [f"**Card:** {self.indicator(action)}"]
        if raw.get("priority"):
            facts[0] += f" (priority {raw['priority']})"
        hooks = sorted(action.hooks)
        if hooks:
            facts.append(f"**Hooks:** {', '.join(hooks)}")
        else:
            facts.append(
                f"**Hooks:** every hook of this PlanDefinition ({', '.join(plan.hooks) or 'none'})"
            )
        topic_coding = cards.topic_coding(raw)
        if topic_coding:
            facts.append(f"**Topic:** {_coding(topic_coding)}")
        if raw.get("id"):
            facts.append(f"**Action id:** {_code(raw['id'])}")
        self.block(" · ".join(facts))
        self.when(action)
        self.suggestions(action)
        self.card_text(action)
        self.evidence(action)

    def when(self, action: Action) -> None:
        self.block("**When it fires** (every condition must be true):")
        conditions = _conditions(action)
        self.block(*[f"- {c}" for c in conditions] or ["- always (no conditions)"])
        variables = _action_variables(action)
        if variables:
            self.block("Values defined for this recommendation (action variables, in this order):")
            self.block(*(f"- {name}: {described}" for name, described in variables))

    def suggestions(self, action: Action) -> None:
        self.block("**What it suggests:**")
        if not action.children:
            self.block("- nothing to order: the card informs only")
            return
        lines: list[str] = []
        for child in action.children:
            lines.extend(self.suggestion(child, 0))
        self.block(*lines)
        if cards.selection_behavior(action.raw) == "at-most-one":
            self.block("The clinician can choose at most one of these.")
        if first_match_only(action.raw):
            self.block("Only the first suggestion that applies is offered.")

    def suggestion(self, action: Action, depth: int) -> list[str]:
        raw = action.raw
        indent = "  " * depth
        title = raw.get("title")
        line = f"{indent}- **{_inline(title)}**" if title else f"{indent}- _(untitled step)_"
        if depth == 0 and not cards.becomes_suggestion(raw):
            line += " (not shown: a suggestion needs a title)"
        if cards.is_recommended(raw):
            line += " (recommended)"
        description = raw.get("description")
        if description and _inline(description) != _inline(title or ""):
            line += f": {_inline(description)}"
        details: list[str] = []
        details.extend(f"only when: {condition}" for condition in _conditions(action))
        details.extend(
            f"using {name}: {described}" for name, described in _action_variables(action)
        )
        if cards.action_type(raw) == "remove":
            targets = _dynamic(action, "resource")
            details.append(
                "cancels the draft order" + "".join(f" given by {_code(t)}" for t in targets)
            )
        if action.activity is not None:
            details.extend(self.activity(str(raw["definitionCanonical"]), action.activity.raw))
        lines = [line, *(f"{indent}  - {detail}" for detail in details)]
        for child in action.children:
            lines.extend(self.suggestion(child, depth + 1))
        return lines

    def activity(self, canonical: str, definition: Json) -> list[str]:
        name = definition.get("title") or definition.get("name")
        named = f" ({_inline(name)})" if name else ""
        lines = [
            f"creates a draft **{definition.get('kind', 'request')}** from ActivityDefinition "
            f"{_code(canonical)}{named}"
        ]
        if definition.get("code"):
            lines.append(f"code: {_concept(definition['code'])}")
        if definition.get("productCodeableConcept"):
            lines.append(f"product: {_concept(definition['productCodeableConcept'])}")
        reference = definition.get("productReference")
        if reference:
            lines.append(
                f"product: {_inline(reference.get('display') or reference.get('reference', ''))}"
            )
        lines.extend(
            f"dosage: {_inline(dosage['text'])}"
            for dosage in definition.get("dosage", [])
            if dosage.get("text")
        )
        return lines

    def card_text(self, action: Action) -> None:
        self.block("**Card text:**")
        computed = [path for path in ("title", "description") if _dynamic(action, path)]
        if computed:
            self.block(
                f"The card's {' and '.join(computed)} {'is' if len(computed) == 1 else 'are'} "
                "computed when it fires (dynamicValue); shown here as written."
            )
        description = action.raw.get("description")
        self.block(*_quote(str(description)) if description else ["_No card text._"])

    def evidence(self, action: Action) -> None:
        self.block("**Evidence and sources:**")
        preferred = {index: condition.text for index, condition in action.preferred_citations}
        lines = []
        for index, document in enumerate(action.raw.get("documentation", [])):
            label = document.get("display") or document.get("label") or document.get("url")
            url = document.get("url")
            text = _link(str(label), str(url)) if url else _inline(label or "(no label)")
            kind = str(document.get("type", "documentation"))
            if index in preferred:
                kind += f"; the card's source when {_code(preferred[index])}"
            lines.append(f"- {text} ({kind})")
        self.block(*lines or ["- none listed"])
        reasons = cards.override_reasons(action.raw)
        if reasons:
            self.block("Override reasons offered:")
            self.block(
                *(
                    f"- {_inline(coding['display'])}"
                    + (f" ({_code(coding['code'])})" if coding.get("code") else "")
                    for coding in reasons
                )
            )

    # Terminology

    def terminology(self) -> None:
        self.block("## Terminology")
        self.value_sets()
        self.concept_maps()
        self.code_systems()
        self.unit_tables()

    def heading_facts(self, resource: Json, file: Path) -> None:
        title = resource.get("title") or resource.get("name") or resource.get("id") or "(untitled)"
        self.block(f"#### {_inline(title)}")
        facts = [f"url {_code(resource.get('url', ''))}"]
        if resource.get("version"):
            facts.append(f"version {_code(resource['version'])}")
        facts.append(f"file {_code(self.paths.show(file))}")
        self.block(" · ".join(facts))
        if resource.get("description"):
            self.block(*str(resource["description"]).strip().splitlines())

    def value_sets(self) -> None:
        value_sets = self.resources("ValueSet")
        self.block("### Value sets")
        if not value_sets:
            self.block("None loaded.")
            return
        known = self.known_displays()
        terminology = self.catalogue.knowledge.terminology
        self.recognised_at_a_glance(value_sets)
        for value_set, file in value_sets:
            self.heading_facts(value_set, file)
            own = _value_set_displays(value_set)
            members = terminology.members(str(value_set.get("url", "")))
            if members is None:
                self.block("_This ValueSet cannot be expanded._")
            elif members:
                self.block(
                    *_table(
                        ("system", "code", "display"),
                        (
                            (
                                _code(system),
                                _code(code),
                                own.get((system, code)) or known.get((system, code), ""),
                            )
                            for system, code in sorted(members)
                        ),
                    )
                )
            patterns = [
                extension.get("valueString", "")
                for extension in value_set.get("extension", [])
                if extension.get("url") == TEXT_PATTERN_EXTENSION
            ]
            if patterns:
                self.block(
                    "Also matches a code's text or display that contains (regular expression, "
                    "ignoring case):"
                )
                self.block(*(f"- {_code(pattern)}" for pattern in patterns))
            elif not members:
                self.block("_No codes._")

    def recognised_at_a_glance(self, value_sets: Sequence[tuple[Json, Path]]) -> None:
        """One row per concept (ValueSet): every system and code it recognises, grouped by
        system, plus the local codes a loaded ConceptMap translates into it and the number of
        text patterns, so a terminologist checks coverage without reading each section."""
        terminology = self.catalogue.knowledge.terminology
        translated: dict[tuple[str, str], set[tuple[str, str]]] = {}
        for concept_map, _ in self.resources("ConceptMap"):
            for group in concept_map.get("group", []):
                for element in group.get("element", []):
                    source = (str(group.get("source")), str(element.get("code")))
                    for target in terminology.translate(*source):
                        translated.setdefault(target, set()).add(source)
        rows = []
        for value_set, _ in value_sets:
            members = terminology.members(str(value_set.get("url", ""))) or frozenset()
            by_system: dict[str, list[str]] = {}
            for system, code in sorted(members):
                by_system.setdefault(system, []).append(code)
            local = sorted({s for m in members for s in translated.get(m, set())})
            parts = [
                f"{_code(system)}: {', '.join(_code(c) for c in codes)}"
                for system, codes in by_system.items()
            ]
            if local:
                parts.append(
                    "mapped local codes: " + ", ".join(_code(f"{s}|{c}") for s, c in local)
                )
            patterns = sum(
                1
                for extension in value_set.get("extension", [])
                if extension.get("url") == TEXT_PATTERN_EXTENSION
            )
            if patterns:
                parts.append(f"{patterns} text pattern(s)")
            title = value_set.get("title") or value_set.get("name") or value_set.get("id") or ""
            rows.append((_inline(title), "<br>".join(parts) or "_nothing_"))
        self.block(
            "Recognised codes at a glance: per concept, every code system and code it matches "
            "(local codes through the loaded concept maps, and text patterns, counted); details "
            "and sources follow."
        )
        self.block(*_table(("concept", "systems and codes recognised"), rows))

    def known_displays(self) -> dict[tuple[str, str], str]:
        """Displays from every loaded CodeSystem and ValueSet, for codes a ValueSet lists bare."""
        displays: dict[tuple[str, str], str] = {}
        for code_system, _ in self.resources("CodeSystem"):
            for concept in _walk_concepts(code_system.get("concept", [])):
                if concept.get("code") and concept.get("display"):
                    displays[(str(code_system.get("url")), concept["code"])] = concept["display"]
        for value_set, _ in self.resources("ValueSet"):
            for key, display in _value_set_displays(value_set).items():
                displays.setdefault(key, display)
        return displays

    def concept_maps(self) -> None:
        concept_maps = self.resources("ConceptMap")
        self.block("### Concept maps")
        if not concept_maps:
            self.block("None loaded.")
            return
        self.block(
            "A local code counts as the standard code it maps to (in ValueSets, retrieves and "
            "prefetch queries) only when the mapping says it is that concept or a kind of it: "
            f"equivalence {', '.join(sorted(TRANSLATING_EQUIVALENCES))}, or relationship "
            f"{', '.join(sorted(TRANSLATING_RELATIONSHIPS))}."
        )
        known = self.known_displays()
        terminology = self.catalogue.knowledge.terminology
        for concept_map, file in concept_maps:
            self.heading_facts(concept_map, file)
            for group in concept_map.get("group", []):
                target_system = str(group.get("target", ""))
                source_system = str(group.get("source", ""))
                self.block(
                    f"From {_code(group.get('source', '(no system)'))} "
                    f"to {_code(group.get('target', '(no system)'))}:"
                )
                rows = []
                for element in group.get("element", []):
                    targets = element.get("target") or [{}]
                    # What the engine translates this code into: a row counts when it is there.
                    translations = terminology.translate(source_system, str(element.get("code")))
                    for target in targets:
                        relation = target.get("relationship") or target.get("equivalence") or ""
                        used = (target_system, str(target.get("code"))) in translations
                        rows.append(
                            (
                                _code(element.get("code", "")),
                                str(element.get("display", "")),
                                _code(target["code"]) if target.get("code") else "(none)",
                                str(
                                    target.get("display")
                                    or known.get((target_system, str(target.get("code"))), "")
                                ),
                                relation,
                                "yes" if used else "no",
                            )
                        )
                self.block(
                    *_table(
                        (
                            "source code",
                            "source display",
                            "target code",
                            "target display",
                            "mapping",
                            "counts as the target",
                        ),
                        rows,
                    )
                )

    def code_systems(self) -> None:
        code_systems = self.resources("CodeSystem")
        self.block("### Code systems")
        if not code_systems:
            self.block("None loaded.")
            return
        for code_system, file in code_systems:
            self.heading_facts(code_system, file)
            concepts = list(_walk_concepts(code_system.get("concept", [])))
            # Declared properties (e.g. which override reasons suppress a repeated card) are a
            # column each: they are part of what the code means to the service.
            properties = [str(p.get("code")) for p in code_system.get("property", [])]
            for declared in code_system.get("property", []):
                if declared.get("description"):
                    self.block(f"Property `{declared.get('code')}`: {declared['description']}")
            if concepts:
                self.block(
                    *_table(
                        ("code", "display", "definition", *properties),
                        (
                            (
                                _code(concept.get("code", "")),
                                str(concept.get("display", "")),
                                str(concept.get("definition", "")),
                                *(_property(concept, name) for name in properties),
                            )
                            for concept in concepts
                        ),
                    )
                )

    def unit_tables(self) -> None:
        tables: dict[Path, str] = {}
        for directory in self.directories:
            if directory.is_dir():
                for file in directory.rglob(f"*{UNIT_TABLE_SUFFIX}"):
                    tables.setdefault(file.resolve(), self.paths.show(file))
        self.block("### Unit tables")
        if not tables:
            self.block("None loaded.")
            return
        self.block(
            "A conversion means `to = from * factor + offset`; the reverse direction is derived. "
            "Nothing else converts."
        )
        for file, shown in sorted(tables.items(), key=lambda item: item[1]):
            document = json.loads(file.read_text(encoding="utf-8"))
            if not isinstance(document, dict):
                continue
            self.block(f"#### {_inline(document.get('description') or file.name)}")
            self.block(f"file {_code(shown)}")
            if document.get("source"):
                self.block(f"Source: {_inline(document['source'])}")
            conversions = [c for c in document.get("conversions", []) if isinstance(c, dict)]
            if conversions:
                self.block(
                    *_table(
                        ("from", "to", "factor", "offset", "note"),
                        (
                            (
                                _code(conversion.get("from", "")),
                                _code(conversion.get("to", "")),
                                _value(conversion.get("factor", "")),
                                _value(conversion.get("offset", 0)),
                                str(conversion.get("note", "")),
                            )
                            for conversion in conversions
                        ),
                    )
                )
            units = document.get("units") or []
            if units:
                self.block(
                    "Further units expressions may use (no conversion needed): "
                    + ", ".join(_code(unit) for unit in units)
                )


def _property(concept: Mapping[str, Any], name: str) -> str:
    """A concept's value of one property, as written (empty when it has none)."""
    values = [
        str(value).lower() if isinstance(value, bool) else str(value)
        for entry in concept.get("property", [])
        if entry.get("code") == name
        for key, value in entry.items()
        if key.startswith("value")
    ]
    return ", ".join(values)
