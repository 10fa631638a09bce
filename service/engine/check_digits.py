"""Check digits of codes in knowledge: a code whose check digit fails is a typo, whatever its
display says, so knowledge that carries one must not load.

Some code systems build a check digit into every code. The engine knows two, keyed by their
standard system URLs:

- SNOMED CT (`http://snomed.info/sct`): an SCTID is 6 to 18 digits, the last a Verhoeff check
  digit (SNOMED CT Technical Implementation Guide, "Check-digit"; a 16-digit extension id cut to
  15 significant digits by a spreadsheet fails it).
- LOINC (`http://loinc.org`): a code is `digits-checkdigit`, the check digit by the Mod 10
  algorithm of the LOINC Users' Guide (section 12 C). Answer (`LA...`), part (`LP...`), answer
  list (`LL...`) and group (`LG...`) ids have one too, computed by the variant the same section
  names for identifiers with letters (the OpenMRS Luhn variation): each character counts as its
  ASCII value minus 48, so the prefix takes part; for a plain number the variant equals the Mod
  10 algorithm. Checking an `LA` code's digits alone with the plain algorithm would refuse real
  codes (LA15173-0 "Pregnant").

A valid check digit shows only that a code is not mistyped; it does not show that the code means
what the knowledge says.

Where codes are found: any object with a string `system` and a string `code` (Coding, ValueSet
`expansion.contains` entries, Quantity); ValueSet `compose.include`/`exclude` `concept`s, which
take the include's `system`; CodeSystem `concept`s (nested too), which take the CodeSystem's
`url`; and ConceptMap `group.element` codes (the group's `source`) and their `target` codes (the
group's `target`). Systems not in the table are not checked here.

LOINC lists 14 old terms whose check digits are wrong (Users' Guide 12 C, e.g. 11491-6); they are
refused like any typo. None is used by the bundled knowledge.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any

# Verhoeff: the dihedral group D5 multiplication table and the position permutations.
_D5 = (
    (0, 1, 2, 3, 4, 5, 6, 7, 8, 9),
    (1, 2, 3, 4, 0, 6, 7, 8, 9, 5),
    (2, 3, 4, 0, 1, 7, 8, 9, 5, 6),
    (3, 4, 0, 1, 2, 8, 9, 5, 6, 7),
    (4, 0, 1, 2, 3, 9, 5, 6, 7, 8),
    (5, 9, 8, 7, 6, 0, 4, 3, 2, 1),
    (6, 5, 9, 8, 7, 1, 0, 4, 3, 2),
    (7, 6, 5, 9, 8, 2, 1, 0, 4, 3),
    (8, 7, 6, 5, 9, 3, 2, 1, 0, 4),
    (9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
)
_PERMUTATIONS: tuple[tuple[int, ...], ...] = ((0, 1, 2, 3, 4, 5, 6, 7, 8, 9),)
for _ in range(7):
    _PERMUTATIONS += (
        tuple(_PERMUTATIONS[-1][(1, 5, 7, 6, 2, 8, 3, 0, 9, 4)[j]] for j in range(10)),
    )

_SCTID = re.compile(r"[1-9][0-9]{5,17}")
_LOINC = re.compile(r"(L[A-Z])?([0-9]{1,10})-([0-9])")


def verhoeff_valid(number: str) -> bool:
    """Whether a string of digits ends in its Verhoeff check digit."""
    check = 0
    for position, digit in enumerate(reversed(number)):
        check = _D5[check][_PERMUTATIONS[position % 8][int(digit)]]
    return check == 0


def mod10_check_digit(body: str) -> int:
    """The LOINC Mod 10 check digit of `body` (the code before the hyphen, prefix included):
    from the right, every other character doubled with its digits summed; a letter counts as its
    ASCII value minus 48 (LOINC Users' Guide 12 C and the variant it names for LA/LP codes)."""
    total = 0
    for position, character in enumerate(reversed(body)):
        value = ord(character) - 48
        total += 2 * value - (value // 5) * 9 if position % 2 == 0 else value
    return (10 - (abs(total) + 10) % 10) % 10


def snomed_problem(code: str) -> str | None:
    if not _SCTID.fullmatch(code):
        return f"SNOMED CT id {code!r} is not 6 to 18 digits (without a leading zero)"
    if not verhoeff_valid(code):
        return f"SNOMED CT id {code} fails its Verhoeff check digit"
    return None


def loinc_problem(code: str) -> str | None:
    match = _LOINC.fullmatch(code)
    if match is None:
        return f"LOINC code {code!r} is not [LA|LP|...]digits, a hyphen and a check digit"
    body = (match.group(1) or "") + match.group(2)
    if mod10_check_digit(body) != int(match.group(3)):
        return f"LOINC code {code} fails its mod-10 check digit"
    return None


# system URL -> what is wrong with a code of it (None when its form and check digit are right).
CHECKED_SYSTEMS: Mapping[str, Callable[[str], str | None]] = {
    "http://snomed.info/sct": snomed_problem,
    "http://loinc.org": loinc_problem,
}


def code_problems(resource: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    """(element path, reason) for every code of a checked system in `resource` whose form or
    check digit is wrong; paths are FHIR element paths like `ValueSet.compose.include[0]...`."""
    resource_type = str(resource.get("resourceType", "Resource"))
    own_system = resource.get("url") if resource_type == "CodeSystem" else None
    yield from _walk(resource, resource_type, own_system if isinstance(own_system, str) else None)


def _walk(value: Any, path: str, inherited: str | None) -> Iterator[tuple[str, str]]:
    if isinstance(value, list):
        for index, item in enumerate(value):
            yield from _walk(item, f"{path}[{index}]", inherited)
        return
    if not isinstance(value, Mapping):
        return
    system = value.get("system")
    system = system if isinstance(system, str) else inherited
    code = value.get("code")
    if system and isinstance(code, str):
        check = CHECKED_SYSTEMS.get(system)
        reason = check(code) if check else None
        if reason:
            yield f"{path}.code", reason
    for key, item in value.items():
        if key == "concept":
            # ValueSet include/exclude concepts take the include's system; CodeSystem concepts,
            # nested or not, the CodeSystem's url.
            yield from _walk(item, f"{path}.{key}", system)
        elif key == "group" and path == "ConceptMap" and isinstance(item, list):
            yield from _groups(item, f"{path}.group")
        else:
            yield from _walk(item, f"{path}.{key}", None)


def _groups(groups: list[Any], path: str) -> Iterator[tuple[str, str]]:
    """ConceptMap groups: element codes are of `source`, target codes of `target`."""
    for g, group in enumerate(groups):
        if not isinstance(group, Mapping):
            continue
        source, target = group.get("source"), group.get("target")
        for e, element in enumerate(group.get("element") or []):
            if not isinstance(element, Mapping):
                continue
            where = f"{path}[{g}].element[{e}]"
            yield from _checked(element.get("code"), source, f"{where}.code")
            for t, mapped in enumerate(element.get("target") or []):
                if isinstance(mapped, Mapping):
                    yield from _checked(mapped.get("code"), target, f"{where}.target[{t}].code")
        unmapped = group.get("unmapped")
        if isinstance(unmapped, Mapping):
            yield from _checked(unmapped.get("code"), target, f"{path}[{g}].unmapped.code")


def _checked(code: Any, system: Any, path: str) -> Iterator[tuple[str, str]]:
    check = CHECKED_SYSTEMS.get(system) if isinstance(system, str) else None
    if check is not None and isinstance(code, str):
        reason = check(code)
        if reason:
            yield path, reason
