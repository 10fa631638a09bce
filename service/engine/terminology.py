"""Terminology for the engine: ValueSet membership and ConceptMap translation, precomputed once.

FHIRPath's `memberOf` needs a terminology server; fhirpathpy does not implement it at all, and a
CDS call in the clinician's click path cannot afford one. So every loaded ValueSet is expanded
here once, at load time, into a frozenset of `(system, code)` pairs, and every loaded ConceptMap
is turned into a dict from a source `(system, code)` to the codes it safely stands for. On top of
both, each ValueSet gets a *closure*: its members plus every source code that translates into one
of them, so that a membership test in the request path is one set lookup per coding.

Expansion rules (FHIR R4 ValueSet):

- `expansion.contains` (nested `contains` included) is used when present; `abstract` entries are
  navigation headers, not members (as `$validate-code` treats them by default). An expansion that
  says it is partial (`offset` > 0 or `total` larger than what it contains) is a problem.
- Otherwise `compose.include`: listed `concept`s of `system`; a `system` without concepts means
  the whole code system, which can be expanded only when that CodeSystem is loaded with
  `content: complete`; nested `valueSet` references (canonical, `url|version` honoured exactly)
  are expanded recursively and cycle-safely; within one include, system part and referenced value
  sets are intersected (FHIR semantics). `compose.exclude` is subtracted the same way.
- A `filter` (intensional definition) cannot be evaluated without the code system's hierarchy and
  properties: the ValueSet is reported as a problem and has no members (`members()` is None), in
  an include as well as in an exclude (excluding too little would be unsafe).
- Code system versions (`include.version`, `Coding.version`) are ignored: codes are matched by
  system and code only.

Translation rules (ConceptMap, R4 `equivalence` and R5 `relationship`): a source code counts as a
member of a ValueSet when it maps to a member and the map says the source *is* the target or a
kind of it, so everything true of the target concept holds for the source:

- R4 `equal`, `equivalent`, `wider` (target wider than source) and `subsumes` (target subsumes
  source; the source is-a target) translate;
- R5 `equivalent` and `source-is-narrower-than-target` translate;
- `narrower`/`specializes`/`source-is-broader-than-target` (the source may mean more than the
  target), `relatedto`/`related-to`, `inexact`, `unmatched`, `disjoint` and `not-related-to` do
  not: a patient coded with a broader or merely related local code has not been shown to have
  the target concept.

Text patterns: some orders carry no code at all (lymphocyte immunotherapy, bed rest advice), and
an EHR may code a drug with a product code the ValueSet does not list. A ValueSet may therefore
carry extensions `TEXT_PATTERN_EXTENSION` (`valueString`, a Python regular expression, matched
case-insensitively anywhere in the text): a CodeableConcept whose `text`, or a Coding whose
`display`, matches one is a member too. A ValueSet of patterns alone (no `compose`) is allowed.

Translation is one step (local → standard), not chained. A translating target with `dependsOn` or
`product` is conditional on other data the engine does not evaluate: it is reported as a problem
instead of being applied unconditionally. `group.unmapped` is ignored (the source code is always
tested as itself anyway).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

Code = tuple[str, str]  # (system, code)

TEXT_PATTERN_EXTENSION = "https://fhir.rpl-cds.org/StructureDefinition/valueset-text-pattern"
_TEXT_VERDICTS_KEPT = 20_000
TRANSLATING_EQUIVALENCES = frozenset({"equal", "equivalent", "wider", "subsumes"})
TRANSLATING_RELATIONSHIPS = frozenset({"equivalent", "source-is-narrower-than-target"})


@dataclass(frozen=True)
class Terminology:
    """Expanded ValueSets and ConceptMap translations; read-only after construction."""

    # canonical (url and url|version) -> members; None when the ValueSet cannot be expanded.
    _members: Mapping[str, frozenset[Code] | None]
    # canonical -> members plus every source code translating into a member.
    _closure: Mapping[str, frozenset[Code]]
    # canonical -> the code strings, when all members share one system (for bare `code` inputs).
    _single_system_codes: Mapping[str, frozenset[str]]
    _translations: Mapping[Code, tuple[Code, ...]]
    _problems: tuple[tuple[str, str], ...] = field(default=())
    # canonical -> compiled text patterns (extension TEXT_PATTERN_EXTENSION).
    _patterns: Mapping[str, tuple[re.Pattern[str], ...]] = field(default_factory=dict)
    # (canonical, texts) -> whether a pattern matches: a record repeats its medicines' texts
    # (every repeat prescription), and a case-insensitive alternation costs a few microseconds
    # a search. Bounded; emptied when full. Only ever holds verdicts the patterns give.
    _text_verdicts: dict[tuple[str, tuple[str, ...]], bool] = field(
        default_factory=dict, compare=False, repr=False
    )

    @classmethod
    def from_resources(cls, by_canonical: Mapping[str, Mapping[str, Any]]) -> Terminology:
        """Build from canonical → resource (the shape of `Registry.by_canonical`): both `url` and
        `url|version` keys may point at the same resource; other resource types are ignored."""
        builder = _Builder(by_canonical)
        return builder.build()

    @classmethod
    def empty(cls) -> Terminology:
        return cls({}, {}, {}, {})

    def knows(self, url: str) -> bool:
        """Whether `url` names a loaded ValueSet that could be expanded."""
        return self._members.get(url) is not None

    def members(self, url: str) -> frozenset[Code] | None:
        """The ValueSet's codes; None when it is not loaded or cannot be expanded."""
        return self._members.get(url)

    def translate(self, system: str, code: str) -> tuple[Code, ...]:
        """Codes the loaded ConceptMaps say `(system, code)` safely stands for (may be empty)."""
        return self._translations.get((system, code), ())

    def in_value_set(self, codings: Iterable[Code], url: str) -> bool:
        """True when any coding, or its translation, is a member.

        Raises LookupError for a ValueSet that is not loaded or cannot be expanded: the caller must
        not read that as 'not a member'.
        """
        closure = self.closure(url)
        return any(coding in closure for coding in codings)

    def closure(self, url: str) -> frozenset[Code]:
        closure = self._closure.get(url)
        if closure is None:
            raise LookupError(f"ValueSet {url} is not loaded or cannot be expanded")
        return closure

    def has_text_patterns(self, url: str) -> bool:
        return bool(self._patterns.get(url))

    def text_matches(self, url: str, texts: Iterable[str]) -> bool:
        """Whether any text matches one of the ValueSet's text patterns."""
        key = (url, tuple(texts))
        verdict = self._text_verdicts.get(key)
        if verdict is None:
            patterns = self._patterns.get(url, ())
            verdict = any(pattern.search(text) for text in key[1] for pattern in patterns)
            if len(self._text_verdicts) >= _TEXT_VERDICTS_KEPT:
                self._text_verdicts.clear()
            self._text_verdicts[key] = verdict
        return verdict

    def single_system_codes(self, url: str) -> frozenset[str] | None:
        """The ValueSet's code strings when its members come from exactly one system, else None
        (FHIRPath `memberOf` on a bare code is only defined for such value sets)."""
        self.closure(url)  # raises for an unknown ValueSet
        return self._single_system_codes.get(url)

    def problems(self) -> list[tuple[str, str]]:
        """(canonical, reason) for each ValueSet or ConceptMap that could not be used as written."""
        return list(self._problems)

    def value_set_urls(self) -> frozenset[str]:
        return frozenset(url for url, members in self._members.items() if members is not None)


class _Unexpandable(Exception):
    """A ValueSet (or one it depends on) cannot be expanded; the message says why."""


@dataclass
class _Builder:
    by_canonical: Mapping[str, Mapping[str, Any]]
    problems: list[tuple[str, str]] = field(default_factory=list)
    # id(resource) -> expansion or the reason it failed; in-progress ids guard against cycles.
    done: dict[int, frozenset[Code] | _Unexpandable] = field(default_factory=dict)
    in_progress: set[int] = field(default_factory=set)

    def build(self) -> Terminology:
        resources = _unique(self.by_canonical.values())
        translations = self._translations(
            [r for r in resources if r.get("resourceType") == "ConceptMap"]
        )
        sources_of: dict[Code, list[Code]] = {}  # target -> the source codes translating to it
        for source, targets in translations.items():
            for target in targets:
                sources_of.setdefault(target, []).append(source)
        members: dict[str, frozenset[Code] | None] = {}
        closure: dict[str, frozenset[Code]] = {}
        single: dict[str, frozenset[str]] = {}
        patterns: dict[str, tuple[re.Pattern[str], ...]] = {}
        for key, resource in self.by_canonical.items():
            if resource.get("resourceType") != "ValueSet":
                continue
            patterns[key] = _one_pattern(self._text_patterns(resource))
            expansion = self._expand(resource)
            if isinstance(expansion, _Unexpandable):
                members[key] = None
                continue
            members[key] = expansion
            closure[key] = expansion | frozenset(
                source for member in expansion for source in sources_of.get(member, ())
            )
            systems = {system for system, _ in expansion}
            if len(systems) == 1:
                single[key] = frozenset(code for _, code in expansion)
        for resource in resources:
            if resource.get("resourceType") == "ValueSet":
                failure = self.done.get(id(resource))
                if isinstance(failure, _Unexpandable):
                    self.problems.append((_canonical(resource), str(failure)))
        return Terminology(members, closure, single, translations, tuple(self.problems), patterns)

    def _text_patterns(self, resource: Mapping[str, Any]) -> tuple[re.Pattern[str], ...]:
        compiled = []
        for extension in resource.get("extension", []):
            if extension.get("url") != TEXT_PATTERN_EXTENSION:
                continue
            pattern = extension.get("valueString")
            try:
                compiled.append(re.compile(str(pattern), re.IGNORECASE))
            except re.error as error:
                reason = f"text pattern {pattern!r} is not a regular expression: {error}"
                if (_canonical(resource), reason) not in self.problems:
                    self.problems.append((_canonical(resource), reason))
            if not isinstance(pattern, str) or not pattern:
                self.problems.append((_canonical(resource), "a text pattern needs a valueString"))
        return tuple(compiled)

    # ValueSets

    def _expand(self, resource: Mapping[str, Any]) -> frozenset[Code] | _Unexpandable:
        key = id(resource)
        if key in self.done:
            return self.done[key]
        if key in self.in_progress:
            return _Unexpandable(f"includes itself (cycle through {_canonical(resource)})")
        self.in_progress.add(key)
        try:
            result: frozenset[Code] | _Unexpandable = self._expand_uncached(resource)
        except _Unexpandable as failure:
            result = failure
        finally:
            self.in_progress.discard(key)
        self.done[key] = result
        return result

    def _expand_uncached(self, resource: Mapping[str, Any]) -> frozenset[Code]:
        expansion = resource.get("expansion")
        if isinstance(expansion, Mapping) and "contains" in expansion:
            return _from_expansion(expansion)
        compose = resource.get("compose")
        if compose is None and any(
            e.get("url") == TEXT_PATTERN_EXTENSION for e in resource.get("extension", [])
        ):
            return frozenset()  # a ValueSet of text patterns only
        if not isinstance(compose, Mapping) or not compose.get("include"):
            raise _Unexpandable("has neither expansion.contains nor compose.include")
        included: set[Code] = set()
        for index, include in enumerate(compose.get("include", [])):
            included |= self._part(include, f"compose.include[{index}]")
        for index, exclude in enumerate(compose.get("exclude", [])):
            included -= self._part(exclude, f"compose.exclude[{index}]")
        return frozenset(included)

    def _part(self, part: Mapping[str, Any], where: str) -> frozenset[Code]:
        """One include or exclude: the intersection of its system part and its value sets."""
        if part.get("filter"):
            raise _Unexpandable(f"{where}.filter: intensional definitions cannot be expanded")
        sets: list[frozenset[Code]] = []
        system = part.get("system")
        if system:
            concepts = part.get("concept")
            if concepts:
                sets.append(frozenset((system, c["code"]) for c in concepts if c.get("code")))
            else:
                sets.append(self._whole_code_system(system, where))
        elif part.get("concept"):
            raise _Unexpandable(f"{where}: concepts without a system")
        for reference in part.get("valueSet", []):
            target = self.by_canonical.get(reference)
            if target is None or target.get("resourceType") != "ValueSet":
                raise _Unexpandable(f"{where}.valueSet: {reference} is not loaded")
            expansion = self._expand(target)
            if isinstance(expansion, _Unexpandable):
                raise _Unexpandable(f"{where}.valueSet: {reference} {expansion}")
            sets.append(expansion)
        if not sets:
            raise _Unexpandable(f"{where}: names neither a system nor a valueSet")
        return frozenset.intersection(*sets)

    def _whole_code_system(self, system: str, where: str) -> frozenset[Code]:
        code_system = self.by_canonical.get(system)
        if code_system is None or code_system.get("resourceType") != "CodeSystem":
            raise _Unexpandable(
                f"{where}: all of {system} requested, but that CodeSystem is not loaded"
            )
        if code_system.get("content") != "complete":
            raise _Unexpandable(
                f"{where}: all of {system} requested, but the loaded CodeSystem's content is "
                f"'{code_system.get('content')}', not 'complete'"
            )
        return frozenset((system, code) for code in _concept_codes(code_system.get("concept", [])))

    # ConceptMaps

    def _translations(self, maps: list[Mapping[str, Any]]) -> dict[Code, tuple[Code, ...]]:
        collected: dict[Code, list[Code]] = {}
        for concept_map in maps:
            canonical = _canonical(concept_map)
            for g, group in enumerate(concept_map.get("group", [])):
                usable = [
                    (f"group[{g}].element[{e}].target[{t}]", element["code"], mapped)
                    for e, element in enumerate(group.get("element", []))
                    if element.get("code")
                    for t, mapped in enumerate(element.get("target", []))
                    if _translates(mapped)
                ]
                source, target = group.get("source"), group.get("target")
                if usable and not (source and target):
                    self.problems.append(
                        (canonical, f"group[{g}]: source and target systems are required")
                    )
                    continue
                for where, code, mapped in usable:
                    if not mapped.get("code"):
                        self.problems.append((canonical, f"{where}: a target without code"))
                    elif mapped.get("dependsOn") or mapped.get("product"):
                        self.problems.append(
                            (
                                canonical,
                                f"{where}: conditional mappings (dependsOn/product) are not "
                                "supported; this mapping is not used",
                            )
                        )
                    else:
                        targets = collected.setdefault((source, code), [])
                        if (target, mapped["code"]) not in targets:
                            targets.append((target, mapped["code"]))
        return {source: tuple(targets) for source, targets in collected.items()}


def _translates(target: Mapping[str, Any]) -> bool:
    if "relationship" in target:
        return target["relationship"] in TRANSLATING_RELATIONSHIPS
    return target.get("equivalence") in TRANSLATING_EQUIVALENCES


def _from_expansion(expansion: Mapping[str, Any]) -> frozenset[Code]:
    codes: set[Code] = set()
    entries = 0
    for entry in _walk(expansion.get("contains", [])):
        entries += 1
        if entry.get("system") and entry.get("code") and not entry.get("abstract"):
            codes.add((entry["system"], entry["code"]))
    offset, total = expansion.get("offset"), expansion.get("total")
    if (isinstance(offset, int) and offset > 0) or (isinstance(total, int) and total > entries):
        raise _Unexpandable(
            f"expansion is partial (offset {offset}, total {total}, {entries} entries present)"
        )
    return frozenset(codes)


def _walk(contains: Iterable[Mapping[str, Any]]) -> Iterator[Mapping[str, Any]]:
    for entry in contains:
        yield entry
        yield from _walk(entry.get("contains", []))


def _concept_codes(concepts: Iterable[Mapping[str, Any]]) -> Iterator[str]:
    for concept in concepts:
        if concept.get("code"):
            yield concept["code"]
        yield from _concept_codes(concept.get("concept", []))


def _canonical(resource: Mapping[str, Any]) -> str:
    url = str(resource.get("url", f"{resource.get('resourceType')}/{resource.get('id')}"))
    return f"{url}|{resource['version']}" if resource.get("version") else url


def _unique(resources: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    seen: dict[int, Mapping[str, Any]] = {}
    for resource in resources:
        seen.setdefault(id(resource), resource)
    return list(seen.values())


_BACKREFERENCE = re.compile(r"\\[1-9]|\(\?P=")


def _one_pattern(patterns: tuple[re.Pattern[str], ...]) -> tuple[re.Pattern[str], ...]:
    """The ValueSet's patterns as one alternation: a text is searched once, not once per pattern
    (a medication ValueSet holds up to 17, tried against every order's text). Left apart where
    joining could change a pattern's meaning: numbered back-references would count the groups
    of the patterns before it, and an inline global flag is only allowed at the start."""
    if len(patterns) < 2 or any(_BACKREFERENCE.search(p.pattern) for p in patterns):
        return patterns
    try:
        joined = re.compile("|".join(f"(?:{p.pattern})" for p in patterns), re.IGNORECASE)
    except re.error:
        return patterns
    return (joined,)
