"""What resource type a prefetch template's query answers with, and what in a delivered value is
of another type.

A value of the wrong type (an Observation under `patient`, a Bundle of Patients under a Condition
search) is not evidence of anything: it is treated as not delivered, never read as "no data".
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

_TYPE_NAME = re.compile(r"^[A-Z][A-Za-z]+$")
# Entries a searchset may carry beside its matches: resources that `_include` added, and
# OperationOutcomes with warnings (Bundle.entry.search.mode).
_SIDE_ENTRIES = frozenset({"include", "outcome"})


def expected_type(template: str) -> str | None:
    """The resource type that `template` reads or searches for: `Patient/{id}` and
    `Patient/{id}/_history/{vid}` read a Patient, `Condition?...` and `Patient/{id}/Condition`
    search Conditions. None for a shape with no single type (an operation such as `$lastn`)."""
    segments = template.split("?", 1)[0].strip("/").split("/")
    if len(segments) in (1, 2):
        name = segments[0]
    elif len(segments) == 3:
        name = segments[2]
    elif len(segments) == 4 and segments[2] == "_history":
        name = segments[0]
    else:
        return None
    return name if _TYPE_NAME.match(name) else None


def foreign_types(value: Mapping[str, Any], expected: str) -> list[str]:
    """The resource types in `value` (a resource, or a Bundle's entries) other than `expected`,
    sorted; empty when the value holds what was asked for. A Bundle is accepted for a read and a
    bare resource for a search: both carry the asked-for type without ambiguity."""
    kind = value.get("resourceType")
    if kind != "Bundle" or expected == "Bundle":
        return [] if kind == expected else [_shown(kind)]
    found: set[str] = set()
    for entry in value.get("entry") or []:
        if not isinstance(entry, dict):
            continue
        search = entry.get("search")
        if isinstance(search, dict) and search.get("mode") in _SIDE_ENTRIES:
            continue
        resource = entry.get("resource")
        kind = resource.get("resourceType") if isinstance(resource, dict) else None
        if kind not in (expected, "OperationOutcome"):
            found.add(_shown(kind))
    return sorted(found)


def _shown(kind: object) -> str:
    """A type name fit for a log line and a metric: the sender chose it, so anything that is not
    a plausible FHIR type name is shown as `?`."""
    return kind if isinstance(kind, str) and len(kind) <= 64 and _TYPE_NAME.match(kind) else "?"
