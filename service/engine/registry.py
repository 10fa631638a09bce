"""The registry of knowledge resources: FHIR JSON read from directories (Bundles unpacked),
validated against the R4B models, and indexed by canonical url (and `url|version`)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from service.engine.knowledge_cache import KnowledgeCache
from service.engine.problems import Problem
from service.engine.strict_json import read_json

UNIT_TABLE_SUFFIX = ".units.json"
KNOWLEDGE_TYPES = frozenset(
    {"PlanDefinition", "ActivityDefinition", "Library", "ValueSet", "CodeSystem", "ConceptMap"}
)


@dataclass
class Registry:
    by_canonical: dict[str, dict[str, Any]] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)

    def resolve(self, canonical: str) -> dict[str, Any] | None:
        # `url|version` resolves to that version only: falling back to another would silently
        # run logic the author did not pin.
        return self.by_canonical.get(canonical)


def read_documents(
    directories: Iterable[Path], problems: list[Problem]
) -> Iterable[tuple[Path, dict[str, Any]]]:
    for directory in directories:
        if not directory.is_dir():
            problems.append(Problem(directory, "-", "knowledge directory does not exist"))
            continue
        for file in sorted(directory.rglob("*.json")):
            if file.name.endswith(UNIT_TABLE_SUFFIX):
                continue  # unit tables are read by units.UnitTable
            try:
                document = read_json(file)
            except (OSError, UnicodeDecodeError, ValueError) as error:
                problems.append(Problem(file, "-", f"not readable JSON: {error}"))
                continue
            yield from _resources_in(file, document, problems)


def _resources_in(
    file: Path, document: Any, problems: list[Problem]
) -> Iterable[tuple[Path, dict[str, Any]]]:
    if not isinstance(document, dict) or "resourceType" not in document:
        problems.append(Problem(file, "-", "not a FHIR resource (no resourceType)"))
        return
    if document["resourceType"] == "Bundle":
        for index, entry in enumerate(document.get("entry", [])):
            resource = entry.get("resource") if isinstance(entry, dict) else None
            if isinstance(resource, dict):
                yield from _resources_in(file, resource, problems)
            else:
                problems.append(Problem(file, f"Bundle.entry[{index}]", "entry has no resource"))
        return
    if document["resourceType"] not in KNOWLEDGE_TYPES:
        problems.append(
            Problem(
                file,
                document["resourceType"],
                f"unsupported resource type; knowledge holds {sorted(KNOWLEDGE_TYPES)}",
            )
        )
        return
    yield file, document


def register(
    knowledge: Registry,
    file: Path,
    resource: dict[str, Any],
    problems: list[Problem],
    cache: KnowledgeCache | None,
) -> None:
    resource_type = resource["resourceType"]
    if cache is None or not cache.was_validated(resource):
        # Imported here: with the cache warm, a serving process never validates, and the models
        # cost about 13 MB a process.
        from fhir.resources.R4B import get_fhir_model_class

        try:
            get_fhir_model_class(resource_type).model_validate(resource)
        except ValidationError as error:
            for detail in error.errors():
                where = ".".join(str(part) for part in (resource_type, *detail["loc"]))
                problems.append(Problem(file, where, detail["msg"]))
            return
        if cache is not None:
            cache.add_validated(resource)
    url = resource.get("url")
    if not url:
        if resource_type != "PlanDefinition":
            problems.append(Problem(file, f"{resource_type}.url", "a canonical url is required"))
        return
    keys = [url] + ([f"{url}|{resource['version']}"] if resource.get("version") else [])
    for key in keys:
        if key in knowledge.by_canonical:
            problems.append(
                Problem(
                    file,
                    f"{resource_type}.url",
                    f"duplicate canonical {key} (also in {knowledge.files[key]})",
                )
            )
            continue
        knowledge.by_canonical[key] = resource
        knowledge.files[key] = file
