"""Engine functions for FHIRPath: what fhirpathpy lacks or gets wrong, implemented once.

`engine_functions(terminology, units)` returns a fhirpathpy user invocation table; pass it to
`compile_expression(text, functions)`. Every function follows FHIRPath's empty propagation: on an
empty input collection (or an empty argument) the result is empty, never `false`, so that
"unknown" stays distinguishable from "no". Functions that need a single input item signal an error
when given several, as the FHIRPath specification requires of singleton evaluation: a silent empty
result would read as "no data" (take `latest()` or `first()`, or map with `select(...)`). Values a
function cannot interpret (a Period where a date is expected, a Quantity without unit) give empty;
a resource where a data type is expected is an authoring mistake and raises. fhirpathpy passes a
primitive's extension (`_effectiveDateTime`) as an item of its own; such items are not values and
are skipped.

- `inValueSet(url)`: fhirpathpy has no `memberOf`. Input: Codings, CodeableConcepts or bare code
  strings. True when any coding, directly or through a loaded ConceptMap's translation of a local
  code, is in the ValueSet (see `terminology.py` for expansion and which mappings translate). False
  when every item is decidable and none is a member. Empty when the answer is unknown: no member
  found and some item could not be decided (a Coding without system or code, a CodeableConcept
  with only text, a bare code when the ValueSet spans several systems, as FHIRPath `memberOf`
  specifies). Several input items: true if any is a member (a CodeableConcept is already such a
  set of codings). A ValueSet that is not loaded raises; the loader checks literal urls
  (`check_expression`) so that happens only for computed ones.
- `quantityIn(unit)`: fhirpathpy cannot order Quantities (fhirpathpy 2.2.4 raises on
  `Observation.value > 6.5 '%'` and on `(1 'g') > (500 'mg')`), comparing `value.value` ignores
  the unit, and clinical conversions such as IFCC to NGSP HbA1c are not UCUM anyway. Input: one
  Quantity (FHIR Quantity or a FHIRPath quantity literal). Result: its value in `unit` as a
  Decimal, converted by the unit tables (`units.py`); expressions compare these decimals
  (`value.quantityIn('%') >= 6.5`). Empty when the quantity has no value, a `comparator` (`<5` is
  a bound, not a value; reading it as 5 would make `>= 5` wrongly true), no usable unit, or a unit
  the tables cannot convert to `unit`; also for a non-Quantity item such as a valueString.
- `convertibleTo(unit)`: lets knowledge tell "a number without a usable unit" from "no value".
  Input: one Quantity. True when its unit can be converted to `unit` (regardless of its value),
  false when it has no usable unit or one the tables cannot convert (or the item is not a
  Quantity); empty on empty input.
- `daysBetween(other)` / `daysBetween()`: fhirpathpy has no date difference (FHIRPath's
  `duration`/`difference` are not implemented), and its date arithmetic is awkward to compare.
  Input and `other`: FHIR date, dateTime or instant strings, or FHIRPath date values (`@2024-01-01`,
  `today()`, `%today`). Result: the Integer number of calendar days from the input to `other`,
  negative when `other` is earlier. Each side counts by its calendar date as recorded: the time
  and the time-zone offset are ignored, so a result is antisymmetric and "today" (a date, with no
  zone) compares with a clinical dateTime in the zone it was recorded in. Partial dates (`2024`,
  `2024-03`) give empty: the true distance could be anywhere within a year or a month, and
  FHIRPath itself answers empty when comparing date values of different precision. Without an
  argument the other date is the engine's `today` (prefer `daysBetween(%today)` in knowledge so
  the request's date is used).
- `latest()`: fhirpathpy's `max()` does not order resources, and sorting by date in FHIRPath
  over choice types and precisions is not possible. Input: resources. Result: the one with the
  latest clinical date (see `clinical_date`); the first one on ties; resources without any date
  are ignored; empty if none has a date.
- `clinicalDate()`: one resource's clinical date as recorded (the FHIR string), for card texts and
  `daysBetween`.

A resource's clinical date is the first present, parsable one of: `effective[x]`,
`performed[x]`, `onset[x]` (dateTime, instant, or Period.start, else Period.end), `authoredOn`
(before `occurrence[x]`: of the resources with both, all are requests, and for a request the
act reasoned about is the ordering; events such as Immunization have `occurrence[x]` only),
`occurrence[x]`, `period`, `issued`, `recordedDate`, `recorded`, `dateAsserted`. So when a
resource happened wins over when it was recorded. For ordering, each date is read as an instant:
with its offset when it has one, else as UTC, and a partial date as the start of its year or
month.

The load-time static check of expressions that call these functions is in `static_check.py`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from functools import lru_cache
from typing import Any

from service.engine.fhirpath import adapter
from service.engine.terminology import Terminology
from service.engine.units import UnitTable, quantity_unit, to_decimal

FunctionTable = dict[str, dict[str, Any]]

_get_data = adapter.get_data

# Name -> accepted numbers of arguments and their fhirpathpy parameter types. "AnyAtRoot" is what
# fhirpathpy's own `combine`/`union` use: the argument is evaluated from the expression's root (or
# `$this` inside `where`/`select`), like any FHIRPath function argument, and may be a date literal.
SIGNATURES: dict[str, dict[int, list[str]]] = {
    "inValueSet": {1: ["String"]},
    "quantityIn": {1: ["String"]},
    "convertibleTo": {1: ["String"]},
    "daysBetween": {0: [], 1: ["AnyAtRoot"]},
    "latest": {0: []},
    "clinicalDate": {0: []},
}

# Choice elements and plain elements holding a resource's clinical date, in order of preference.
_DATE_ELEMENTS = (
    ("effectiveDateTime", "effectiveInstant", "effectivePeriod"),
    ("performedDateTime", "performedPeriod"),
    ("onsetDateTime", "onsetPeriod"),
    ("authoredOn",),
    ("occurrenceDateTime", "occurrencePeriod"),
    ("period",),
    ("issued",),
    ("recordedDate",),
    ("recorded",),
    ("dateAsserted",),
)

_DATE_TIME = re.compile(
    r"(\d{4})(?:-(\d{2})(?:-(\d{2})"
    r"(?:T(?:(\d{2})(?::(\d{2})(?::(\d{2})(?:\.(\d+))?)?)?)?(Z|[+-]\d{2}:\d{2})?)?)?)?"
)


def engine_functions(
    terminology: Terminology, units: UnitTable, today: Callable[[], date] | None = None
) -> FunctionTable:
    """The user invocation table for `compile_expression(text, functions)`."""
    functions = _Functions(terminology, units, today or date.today)
    implementations: dict[str, Callable[..., Any]] = {
        "inValueSet": functions.in_value_set,
        "quantityIn": functions.quantity_in,
        "convertibleTo": functions.convertible_to,
        "daysBetween": functions.days_between,
        "latest": functions.latest,
        "clinicalDate": functions.clinical_date,
    }
    # nullable_input: empty input -> empty result before the function runs; nullable: the same
    # for an empty argument (`inValueSet(%url)` with %url empty).
    return {
        name: {"fn": fn, "arity": SIGNATURES[name], "nullable_input": True, "nullable": True}
        for name, fn in implementations.items()
    }


# Verdicts of CodeableConcepts by content, per ValueSet: a record repeats the same few concepts (a
# medicine on every refill) and the knowledge asks several ValueSets of each, about 3,000 calls a
# hook call at 5,000 resources; deciding one again cost 3 times a look-up. Bounded, for memory.
_CONCEPT_VERDICTS_KEPT = 4096


@dataclass(frozen=True)
class _Functions:
    terminology: Terminology
    units: UnitTable
    today: Callable[[], date]
    concept_verdicts: dict[tuple[str | None, ...], bool | None] = field(
        default_factory=dict, compare=False, repr=False
    )

    def in_value_set(self, inputs: list[Any], url: str) -> bool | list[Any]:
        closure = self.terminology.closure(url)  # raises for a ValueSet that is not loaded
        items = _present(inputs)
        if not items:
            return []
        undecided = False
        for item in items:
            verdict = self._member(item, url, closure)
            if verdict:
                return True
            undecided = undecided or verdict is None
        return [] if undecided else False

    def _member(self, item: Any, url: str, closure: frozenset[tuple[str, str]]) -> bool | None:
        if isinstance(item, str):
            codes = self.terminology.single_system_codes(url)
            return None if codes is None else item in codes
        if not (type(item) is dict or isinstance(item, Mapping)):  # dict: no ABC check
            return None
        _not_a_resource(item, "inValueSet", "a Coding, CodeableConcept or code")
        key = _concept_key(url, item) if type(item) is dict else None
        if key is None:
            return self._decide(item, url, closure)
        verdicts = self.concept_verdicts
        if key not in verdicts:
            if len(verdicts) >= _CONCEPT_VERDICTS_KEPT:
                verdicts.clear()
            verdicts[key] = self._decide(item, url, closure)
        return verdicts[key]

    def _decide(
        self, item: Mapping[str, Any], url: str, closure: frozenset[tuple[str, str]]
    ) -> bool | None:
        concept = "coding" in item or ("text" in item and "code" not in item)
        codings = (item.get("coding") or []) if concept else [item]
        # False only when every coding could be matched and none is a member.
        decided = bool(codings)
        for coding in codings:
            verdict = _coding_member(coding, closure)
            if verdict:
                return True
            decided = decided and verdict is not None
        if self.terminology.has_text_patterns(url):
            # The ValueSet defines what its text means, so text decides when codes do not.
            texts = [item.get("text")] + [c.get("display") for c in codings if isinstance(c, dict)]
            return self.terminology.text_matches(url, [t for t in texts if isinstance(t, str)])
        return False if decided else None

    def quantity_in(self, inputs: list[Any], unit: str) -> Decimal | list[Any]:
        value, from_unit = _quantity(_single(inputs, "quantityIn"))
        if value is None or from_unit is None:
            return []
        converted = self.units.convert(value, from_unit, unit)
        return [] if converted is None else converted

    def convertible_to(self, inputs: list[Any], unit: str) -> bool | list[Any]:
        item = _single(inputs, "convertibleTo")
        if item is None:
            return []
        _, from_unit = _quantity(item, need_value=False)
        return from_unit is not None and self.units.convertible(from_unit, unit)

    def days_between(self, inputs: list[Any], *other: list[Any]) -> int | list[Any]:
        start = _calendar_date(_single(inputs, "daysBetween"))
        if other:
            end = _calendar_date(_single([_get_data(x) for x in other[0]], "daysBetween argument"))
        else:
            end = self.today()
        if start is None or end is None:
            return []
        return (end - start).days

    def latest(self, inputs: list[Any]) -> Mapping[str, Any] | list[Any]:
        best: Mapping[str, Any] | None = None
        best_key: datetime | None = None
        for item in _present(inputs):
            found = clinical_date(_resource(item, "latest"))
            # Strictly later only: the first of equally dated resources stays.
            if found is not None and (best_key is None or found.instant > best_key):
                best, best_key = item, found.instant
        return [] if best is None else best

    def clinical_date(self, inputs: list[Any]) -> str | list[Any]:
        item = _single(inputs, "clinicalDate")
        found = None if item is None else clinical_date(_resource(item, "clinicalDate"))
        return [] if found is None else found.text


# Values


@dataclass(frozen=True)
class ParsedDate:
    """A FHIR date/dateTime/instant or FHIRPath date literal, as far as its precision goes."""

    text: str
    day: date | None  # None for partial dates (year or year-month)
    instant: datetime  # for ordering: aware, UTC when no offset, start of a partial date


# The same few date strings are read by many expressions of one request; parsing is the cost.
@lru_cache(maxsize=8192)
def parse_date(text: str) -> ParsedDate | None:
    match = _DATE_TIME.fullmatch(text)
    if match is None:
        return None
    year, month, day, hour, minute, second, fraction, zone = match.groups()
    try:
        tzinfo = UTC if zone in (None, "Z") else _offset(zone)
        instant = datetime(
            int(year),
            int(month or 1),
            int(day or 1),
            int(hour or 0),
            int(minute or 0),
            int(second or 0),
            int((fraction or "0")[:6].ljust(6, "0")),
            tzinfo=tzinfo,
        )
    except ValueError:
        return None  # 2024-02-30, 25:00, an offset beyond ±24 h: not a date
    calendar_day = instant.date() if day else None
    return ParsedDate(text, calendar_day, instant.astimezone(UTC))


def clinical_date(resource: Mapping[str, Any]) -> ParsedDate | None:
    """The resource's clinical date (see the module docstring), or None."""
    for choices in _DATE_ELEMENTS:
        for element in choices:
            if element not in resource:
                continue
            value = resource[element]
            if isinstance(value, Mapping):  # a Period
                value = value.get("start") or value.get("end")
            parsed = parse_date(value) if isinstance(value, str) else None
            if parsed is not None:
                return parsed
    return None


def _offset(zone: str) -> timezone:
    sign = -1 if zone[0] == "-" else 1
    return timezone(sign * timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6])))


def _calendar_date(value: Any) -> date | None:
    if isinstance(value, adapter.DateTimeValue):
        value = value.asStr
    if not isinstance(value, str):
        return None  # a Period, a number, a time: not a date
    parsed = parse_date(value)
    return None if parsed is None else parsed.day


def _quantity(item: Any, need_value: bool = True) -> tuple[Decimal | None, str | None]:
    """(value, UCUM unit) of a FHIR Quantity or FHIRPath quantity literal; None where unusable."""
    if isinstance(item, adapter.QuantityValue):
        unit = item.unit
        # Literal units are quoted UCUM codes ('mg'); bare calendar words (days) are not UCUM.
        code = unit[1:-1] if isinstance(unit, str) and len(unit) > 2 and unit[0] == "'" else None
        return to_decimal(item.value), code
    if not isinstance(item, Mapping):
        return None, None
    _not_a_resource(item, "quantityIn/convertibleTo", "a Quantity")
    unit = quantity_unit(item)
    if need_value and item.get("comparator"):
        return None, unit
    return to_decimal(item.get("value")), unit


def _concept_key(url: str, concept: dict[str, Any]) -> tuple[str | None, ...] | None:
    """All that decides a CodeableConcept's membership in `url` (`_decide` reads its text and each
    coding's system, code and display), flat; None for a concept of another shape, decided anew.
    Type checks inline: this runs for every concept the knowledge asks about."""
    codings = concept.get("coding")
    text = concept.get("text")
    if type(codings) is not list or type(text) not in _TEXT_OR_NONE:
        return None
    key: list[str | None] = [url, text]
    for coding in codings:
        if type(coding) is not dict:
            return None
        system, code, display = coding.get("system"), coding.get("code"), coding.get("display")
        if (
            type(system) not in _TEXT_OR_NONE
            or type(code) not in _TEXT_OR_NONE
            or type(display) not in _TEXT_OR_NONE
        ):
            return None
        key += (system, code, display)
    return tuple(key)


_TEXT_OR_NONE = (str, type(None))


def _coding_member(coding: Any, closure: frozenset[tuple[str, str]]) -> bool | None:
    if not (type(coding) is dict or isinstance(coding, Mapping)):
        return None
    system, code = coding.get("system"), coding.get("code")
    if not (isinstance(system, str) and system and isinstance(code, str) and code):
        return None  # cannot be matched safely: a bare code could mean anything
    return (system, code) in closure


def _present(inputs: Sequence[Any]) -> list[Any]:
    """The items without fhirpathpy's stand-ins for primitive extensions.

    fhirpathpy hands a primitive's `_element` (`{"extension": [...]}`, as in a data-absent-reason
    on `_effectiveDateTime`) to functions as an item of its own, beside the value; FHIRPath
    treats the two as one node. Such a stand-in is not a value."""
    return [
        item
        for item in inputs
        if not (
            (type(item) is dict or isinstance(item, Mapping))
            # A resource's keys are not collected into a set to learn that it has more than two.
            and 0 < len(item) <= 2
            and set(item) <= {"id", "extension"}
        )
    ]


def _single(inputs: Sequence[Any], name: str) -> Any:
    """The one item (None when there is none), or an error as FHIRPath's singleton rule says."""
    items = _present(inputs)
    if len(items) > 1:
        raise ValueError(
            f"{name} expects a single item, got {len(items)} (use latest(), first() or select(...))"
        )
    return items[0] if items else None


def _resource(item: Any, name: str) -> Mapping[str, Any]:
    if not isinstance(item, Mapping):
        raise TypeError(f"{name} expects resources, got {type(item).__name__}")
    return item


def _not_a_resource(item: Mapping[str, Any], name: str, expected: str) -> None:
    if "resourceType" in item:
        raise TypeError(f"{name} expects {expected}, got a {item['resourceType']} resource")
