"""Synthetic patients from readable scenario descriptions (JSON files in `scenarios/`), for tests,
benchmarks and `rpl-cds load-scenarios`. Never real patient data. The generator knows no clinical
content: the codes are in the descriptions.

A file is `{"description": "...", "scenarios": [...]}`. A scenario has these keys (no others):

    id              the Patient's id: letters, digits, `-` and `.`, at most 50; unique in the set
    description     what the patient shows and why the expected cards follow (shown on failure)
    gender, birthDate   the Patient's (optional)
    hook            `patient-view` (default), `order-select` or `order-sign`
    resources       the record the EHR holds, in short form (below); ids `{id}-1`, `{id}-2`...
    draftOrders     order hooks only: the orders being written, in short form; ids
                    `{id}-draft-1`..., status `draft` and intent `order` unless written
    selections      the selected drafts, as 1-based indexes into draftOrders; order-select: default
                    [1]; order-sign: none unless given
    prefetchErrors  resource types (`"Observation"`) whose prefetch queries the EHR answers with an
                    error (an OperationOutcome) instead of data (optional)
    expect          {profile: [topic codes]}, profiles as in `profiles()`: the exact set of
                    card topics (`card.source.topic.code`) the hook's service answers with when the
                    deployment uses that guideline profile; only the profiles listed are tested
    dialects        `false`: the record is written in one dialect on purpose (it tests that very
                    coding or unit spelling) and is never rewritten into another (below); default
                    true

Short form of a resource (in `resources` and `draftOrders`): `resourceType`; `code`: `system|code`
(or a list of them), the codings of `code` (of `medicationCodeableConcept` for MedicationRequest,
-Statement, -Administration and -Dispense; of `vaccineCode` for Immunization); `text`: that
CodeableConcept's text (alone, it makes a text-only one); `date`: the clinically relevant date
(onset, effective, performed, occurrence or authored, by type; `date` for other types); every other
key is FHIR as written, over defaults that make the resource valid R4 (a final Observation, an
active order...). The subject (`patient` for AllergyIntolerance, Immunization and
FamilyMemberHistory) is set.

Relative dates: a string value anywhere in a resource, a draft or `birthDate` that is wholly
`today`, or `today` then a sign, a whole amount and a unit (`today-30d`, `today+6wk`, `today-13mo`,
`today-2a`: d days, wk weeks, mo calendar months, a years; months and years keep the day, clamped
to the month's end), becomes an ISO date `YYYY-MM-DD` counted from the reference date given to
`resources()` and `draft_orders()` (default `date.today()`; `rpl-cds load-scenarios` resolves them
when it loads, against `--today`). A FHIR time may follow: `today-30dT09:30:00Z`. Any other value
that starts with `today` and has no space is an error, as is any other deviation from this format.

Dialects: the same patient as EHRs of different places would write it. `dialects.json` beside the
scenario files (the one `*.json` there that is not a scenario file) is the table, read by
`load_dialects()`; `ScenarioSpec.in_dialect(dialect)` is the scenario with its record rewritten:

    {"description": "...",
     "dialects": {"us": {"description": "...", "systems": ["http://loinc.org", ...],
                         "systemsWithin": {"valueCodeableConcept": [...]} (optional)}, ...},
     "concepts": [{"concept": "Miscarriage", "codings": ["system|code", ...],
                   "us": "system|code" or null, "within": ["valueCodeableConcept"] (optional),
                   "noEquivalent": {"us": "why there is no code"} (for each null), "note": "..."}],
     "units": [{"unit": "m[IU]/L", "analyte": "...", "us": {"unit": "uIU/mL"}}]}

A dialect's `systems` are the code systems its records write codes in (`systemsWithin`: those it
writes under a key of the short form instead, e.g. SNOMED CT answers to LOINC tests). Each Coding
of a resource (the `code` short form, and every Coding in the FHIR written as is: answers,
reasons...) whose system is not one of them and that a concept lists in `codings` becomes that
concept's coding for the dialect, without display (the code alone must be recognised); with
`within`, only under those keys of the short form (`code` is the resource's code), and there
before a concept without `within` that lists the same coding. A concept with no coding for the
dialect (null, with its reason in `noEquivalent`) keeps the original coding, and the variant lists
it in `kept`: a gap of the knowledge, not of the record. Codings that no concept lists (local
codes, codes the knowledge does not read) are kept as they are. Each Quantity (any dict with a
`value`) whose unit is a `units` entry's `unit` (its UCUM `code`, else its `unit` text, as the
engine reads a Quantity) has its `unit`, `system` and `code` replaced by that entry's spelling for
the dialect; the number never changes. Nothing else changes: ids, dates, texts and the expected
cards are the same, so the cards must be too.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any

from service.dates import add_months
from service.engine import Terminology, allowed_values_url, read_documents
from service.settings import bundled_knowledge_dirs

HOOKS = ("patient-view", "order-select", "order-sign")
ORDER_HOOKS = ("order-select", "order-sign")
# The knowledge parameter RPL_CDS_GUIDELINE sets; scenarios expect cards per value of it.
PROFILE_PARAMETER = "guideline"
_KEYS = frozenset(
    {
        "id",
        "description",
        "gender",
        "birthDate",
        "hook",
        "resources",
        "draftOrders",
        "selections",
        "prefetchErrors",
        "expect",
        "dialects",
    }
)
_ID = re.compile(r"[A-Za-z0-9\-.]{1,50}")

# Where each resource type keeps its clinically relevant date.
_DATE_ELEMENT = {
    "Condition": "onsetDateTime",
    "Observation": "effectiveDateTime",
    "Procedure": "performedDateTime",
    "ServiceRequest": "authoredOn",
    "MedicationRequest": "authoredOn",
    "MedicationStatement": "effectiveDateTime",
    "MedicationAdministration": "effectiveDateTime",
    "Immunization": "occurrenceDateTime",
    "DiagnosticReport": "effectiveDateTime",
    "AllergyIntolerance": "onsetDateTime",
}
# Defaults that make each resource valid R4 and usable (a final result, an active order...).
_DEFAULTS: dict[str, dict[str, Any]] = {
    "Observation": {"status": "final"},
    "Procedure": {"status": "completed"},
    "ServiceRequest": {"status": "active", "intent": "order"},
    "MedicationRequest": {"status": "active", "intent": "order"},
    "MedicationStatement": {"status": "active"},
    "MedicationAdministration": {"status": "completed"},
    "Immunization": {"status": "completed"},
    "DiagnosticReport": {"status": "final"},
}
_DRAFT = {"status": "draft", "intent": "order"}
# The element holding the code, where it is not `code`.
_CODE_ELEMENT = {
    "MedicationRequest": "medicationCodeableConcept",
    "MedicationStatement": "medicationCodeableConcept",
    "MedicationAdministration": "medicationCodeableConcept",
    "MedicationDispense": "medicationCodeableConcept",
    "Immunization": "vaccineCode",
}
# The element referring to the patient, where it is not `subject`.
_SUBJECT_ELEMENT = {
    "AllergyIntolerance": "patient",
    "Immunization": "patient",
    "FamilyMemberHistory": "patient",
}

_RELATIVE = re.compile(
    r"today(?:([+-])(\d+)(d|wk|mo|a))?"
    r"(T\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:Z|[+-]\d{2}:\d{2}))?"
)
_LOOKS_RELATIVE = re.compile(r"today\S*")
# The dialect table's file name in a scenario directory; `load_scenarios` skips it.
DIALECT_TABLE = "dialects.json"
UCUM = "http://unitsofmeasure.org"


class ScenarioError(ValueError):
    """A scenario description that does not follow the format."""


def resolve_dates(value: Any, today: date) -> Any:
    """`value` with every relative date string in it (at any depth) made an ISO date."""
    if isinstance(value, str):
        return _resolve_date(value, today)
    if isinstance(value, list):
        return [resolve_dates(item, today) for item in value]
    if isinstance(value, dict):
        return {key: resolve_dates(item, today) for key, item in value.items()}
    return value


def _resolve_date(text: str, today: date) -> str:
    match = _RELATIVE.fullmatch(text)
    if match is None:
        if _LOOKS_RELATIVE.fullmatch(text):
            raise ScenarioError(
                f"{text!r} is not a relative date (today, today-30d, today+6wk, today-13mo, "
                "today-2a)"
            )
        return text
    sign, amount, unit, time = match.groups()
    moment = today
    if sign is not None:
        count = int(amount) * (-1 if sign == "-" else 1)
        try:
            if unit == "d":
                moment = today + timedelta(days=count)
            elif unit == "wk":
                moment = today + timedelta(weeks=count)
            else:
                moment = add_months(today, count * (12 if unit == "a" else 1))
        except (ValueError, OverflowError):
            raise ScenarioError(f"{text!r} is out of the calendar's range") from None
    return moment.isoformat() + (time or "")


@dataclass(frozen=True)
class Dialect:
    """One dialect of the table (module docstring): the code systems its records write, the
    coding each listed coding becomes (None: no equivalent, kept), the unit spellings."""

    name: str
    description: str
    systems: frozenset[str]
    # Short-form key -> the systems written under it instead (answers in another system).
    systems_within: Mapping[str, frozenset[str]]
    # (`system|code`, short-form key or None for any key) -> `system|code` or None
    codings: Mapping[tuple[str, str | None], str | None]
    units: Mapping[str, Mapping[str, str]]

    def translate(self, coding: str, key: str) -> tuple[str, bool]:
        """The coding as this dialect writes it under the short-form `key`, and whether it is
        kept for want of an equivalent (a gap)."""
        if coding.partition("|")[0] in self.systems_within.get(key, self.systems):
            return coding, False
        for where in (key, None):
            if (coding, where) in self.codings:
                target = self.codings[coding, where]
                return (coding, True) if target is None else (target, False)
        return coding, False


def load_dialects(path: Path) -> dict[str, Dialect]:
    """The dialects of a table file, or of the `dialects.json` of a scenario directory. Raises
    ScenarioError for a table that does not follow the format (module docstring)."""
    file = path / DIALECT_TABLE if path.is_dir() else path
    try:
        return _dialects(json.loads(file.read_text(encoding="utf-8")))
    except (ScenarioError, KeyError, TypeError, AttributeError) as error:
        raise ScenarioError(f"{file}: not a dialect table: {error!r}") from None


def _dialects(document: Mapping[str, Any]) -> dict[str, Dialect]:  # noqa: C901
    # A flat list of independent checks of the table's shape, each with its own message.
    names = list(document["dialects"])
    codings: dict[str, dict[tuple[str, str | None], str | None]] = {n: {} for n in names}
    for concept in document["concepts"]:
        label = concept["concept"]
        within: list[str | None] = list(concept.get("within") or [None])
        gaps = concept.get("noEquivalent", {})
        unknown = set(concept) - {"concept", "codings", "within", "noEquivalent", "note", *names}
        if unknown:
            raise ScenarioError(f"concept {label!r}: unknown keys {sorted(unknown)}")
        for name in names:
            target = concept.get(name)
            if target is None and not isinstance(gaps.get(name), str):
                raise ScenarioError(f"concept {label!r}: no {name} coding and no reason why")
            if target is not None and (not isinstance(target, str) or "|" not in target):
                raise ScenarioError(f"concept {label!r}: {name} must be 'system|code' or null")
            for source in concept["codings"]:
                if not isinstance(source, str) or "|" not in source:
                    raise ScenarioError(f"concept {label!r}: codings must be 'system|code'")
                for key in within:
                    # One coding, one meaning per key (a concept `within` a key overrides one
                    # without, for that key).
                    if (source, key) in codings[name]:
                        raise ScenarioError(f"{source} is in two concepts (one is {label!r})")
                    codings[name][source, key] = target
    units: dict[str, dict[str, dict[str, str]]] = {n: {} for n in names}
    for entry in document.get("units", []):
        for name in names:
            if name in entry:
                units[name][entry["unit"]] = dict(entry[name])
    return {
        name: Dialect(
            name,
            str(spec["description"]),
            frozenset(spec["systems"]),
            {key: frozenset(systems) for key, systems in spec.get("systemsWithin", {}).items()},
            codings[name],
            units[name],
        )
        for name, spec in document["dialects"].items()
    }


@dataclass(frozen=True)
class ScenarioSpec:
    id: str
    description: str
    raw: dict[str, Any]
    # The dialect this record was rewritten into (None: as written), and the codings it keeps
    # because the dialect has no equivalent (`system|code`, once each).
    dialect: str | None = None
    kept: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        try:
            self._check()
        except ScenarioError as error:
            raise ScenarioError(f"scenario {self.id!r}: {error}") from None

    @property
    def hook(self) -> str:
        hook: str = self.raw.get("hook", "patient-view")
        return hook

    @property
    def expect(self) -> dict[str, list[str]]:
        expected: dict[str, list[str]] = self.raw.get("expect", {})
        return expected

    @property
    def rewritable(self) -> bool:
        """False when the scenario is written in one dialect on purpose (`"dialects": false`)."""
        return self.raw.get("dialects", True) is not False

    def in_dialect(self, dialect: Dialect) -> ScenarioSpec:
        """The same patient as a record of `dialect` (module docstring); itself, unchanged,
        for a scenario that is not rewritable."""
        if not self.rewritable:
            return self
        kept: dict[str, None] = {}
        raw = dict(self.raw)
        for key in ("resources", "draftOrders"):
            if key in raw:
                raw[key] = [_rewrite_short(short, dialect, kept) for short in raw[key]]
        return ScenarioSpec(self.id, self.description, raw, dialect.name, tuple(kept))

    @property
    def prefetch_errors(self) -> list[str]:
        """Resource types whose prefetch queries answer with an error."""
        errors: list[str] = self.raw.get("prefetchErrors", [])
        return errors

    def resources(self, today: date | None = None) -> list[dict[str, Any]]:
        """The Patient first, then each described resource with an id and the subject set."""
        today = today or date.today()
        patient: dict[str, Any] = {"resourceType": "Patient", "id": self.id}
        for element in ("gender", "birthDate"):
            if element in self.raw:
                patient[element] = resolve_dates(self.raw[element], today)
        return [
            patient,
            *(
                self._resource(short, f"{self.id}-{n}", today)
                for n, short in enumerate(self.raw.get("resources", []), 1)
            ),
        ]

    def draft_orders(self, today: date | None = None) -> list[dict[str, Any]]:
        """The orders being written (order hooks), with ids, status draft and the subject set."""
        today = today or date.today()
        return [
            self._resource(short, f"{self.id}-draft-{n}", today, _DRAFT)
            for n, short in enumerate(self.raw.get("draftOrders", []), 1)
        ]

    def selections(self) -> list[str]:
        """The selected drafts as `{type}/{id}` references."""
        drafts = self.raw.get("draftOrders", [])
        if "selections" in self.raw:
            indexes: list[int] = self.raw["selections"]
        else:
            indexes = [1] if self.hook == "order-select" and drafts else []
        return [f"{drafts[n - 1]['resourceType']}/{self.id}-draft-{n}" for n in indexes]

    def _resource(
        self,
        short: Mapping[str, Any],
        resource_id: str,
        today: date,
        overrides: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        short = resolve_dates(dict(short), today)
        kind = short["resourceType"]
        resource: dict[str, Any] = {"resourceType": kind, "id": resource_id}
        resource.update(copy.deepcopy(_DEFAULTS.get(kind, {})))
        resource.update(overrides or {})
        resource[_SUBJECT_ELEMENT.get(kind, "subject")] = {"reference": f"Patient/{self.id}"}
        concept: dict[str, Any] = {}
        for key, value in short.items():
            if key == "code":
                concept["coding"] = [
                    {"system": system, "code": code}
                    for system, _, code in (str(item).partition("|") for item in _as_list(value))
                ]
            elif key == "text":
                concept["text"] = value
            elif key == "date":
                resource[_DATE_ELEMENT.get(kind, "date")] = value
            elif key != "resourceType":
                resource[key] = copy.deepcopy(value)
        if concept:
            resource[_CODE_ELEMENT.get(kind, "code")] = concept
        return resource

    def _check(self) -> None:  # noqa: C901
        # One check per field of the format, in the order the module docstring lists them.
        raw = self.raw
        unknown = sorted(set(raw) - _KEYS)
        if unknown:
            raise ScenarioError(f"unknown keys {unknown}; allowed: {sorted(_KEYS)}")
        if not isinstance(self.id, str) or not _ID.fullmatch(self.id):
            raise ScenarioError("id must be 1-50 letters, digits, '-' or '.'")
        if self.hook not in HOOKS:
            raise ScenarioError(f"hook must be one of {list(HOOKS)}")
        for key in ("resources", "draftOrders"):
            shorts = raw.get(key, [])
            if not isinstance(shorts, list) or not all(
                isinstance(short, dict) and isinstance(short.get("resourceType"), str)
                for short in shorts
            ):
                raise ScenarioError(f"{key} must be a list of objects with a resourceType")
            for n, short in enumerate(shorts, 1):
                codes = _as_list(short.get("code", []))
                if not all(isinstance(c, str) and "|" in c for c in codes):
                    raise ScenarioError(f"{key}[{n}].code must be 'system|code' or a list of them")
                if not isinstance(short.get("text", ""), str):
                    raise ScenarioError(f"{key}[{n}].text must be a string")
        drafts = raw.get("draftOrders", [])
        if drafts and self.hook not in ORDER_HOOKS:
            raise ScenarioError("draftOrders need an order hook (order-select, order-sign)")
        if "selections" in raw:
            indexes = raw["selections"]
            if self.hook not in ORDER_HOOKS:
                raise ScenarioError("selections need an order hook (order-select, order-sign)")
            if not isinstance(indexes, list) or not all(
                isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= len(drafts)
                for n in indexes
            ):
                raise ScenarioError(f"selections must be indexes 1 to {len(drafts)} of draftOrders")
        if self.hook == "order-select" and not self.selections():
            raise ScenarioError("order-select needs at least one draft order, selected")
        if not isinstance(raw.get("dialects", True), bool):
            raise ScenarioError("dialects must be true or false")
        errors = raw.get("prefetchErrors", [])
        if not isinstance(errors, list) or not all(isinstance(e, str) for e in errors):
            raise ScenarioError("prefetchErrors must be a list of resource types")
        expect = raw.get("expect")
        if not isinstance(expect, dict) or not expect:
            raise ScenarioError(f"expect must map at least one profile of {list(profiles())}")
        for profile, topics in expect.items():
            if profile not in profiles():
                raise ScenarioError(
                    f"expect: unknown profile {profile!r}; known: {list(profiles())}"
                )
            if not isinstance(topics, list) or not all(isinstance(t, str) for t in topics):
                raise ScenarioError(f"expect.{profile} must be a list of topic codes")
        # Malformed relative dates are reported when the file is read, not when used.
        self.resources()
        self.draft_orders()


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _rewrite_short(
    short: Mapping[str, Any], dialect: Dialect, kept: dict[str, None]
) -> dict[str, Any]:
    """A short-form resource in `dialect`; the codings kept for want of an equivalent are added
    to `kept`."""
    rewritten: dict[str, Any] = {}
    for key, value in short.items():
        if key == "code":
            codes = []
            for item in _as_list(value):
                code, gap = dialect.translate(str(item), key)
                if gap:
                    kept[code] = None
                if code not in codes:  # two source codings may become one
                    codes.append(code)
            rewritten[key] = codes if isinstance(value, list) else codes[0]
        elif key in ("resourceType", "text", "date"):
            rewritten[key] = value
        else:
            rewritten[key] = _rewrite_fhir(value, key, dialect, kept)
    return rewritten


def _rewrite_fhir(value: Any, key: str, dialect: Dialect, kept: dict[str, None]) -> Any:
    """FHIR as written, under the short-form `key`, with its Codings and Quantities in
    `dialect`."""
    if isinstance(value, list):
        return [_rewrite_fhir(item, key, dialect, kept) for item in value]
    if not isinstance(value, dict):
        return value
    if "value" in value:  # a Quantity (a Coding has no value)
        system, code, unit = value.get("system"), value.get("code"), value.get("unit")
        written = code if isinstance(code, str) and code else unit
        if system in (None, UCUM) and isinstance(written, str) and written in dialect.units:
            quantity = {k: v for k, v in value.items() if k not in ("unit", "system", "code")}
            return {**quantity, **dialect.units[written]}
        return dict(value)
    system, code = value.get("system"), value.get("code")
    if isinstance(system, str) and isinstance(code, str):
        target, gap = dialect.translate(f"{system}|{code}", key)
        if gap:
            kept[target] = None
        if target != f"{system}|{code}":
            # Without display: a display would let text patterns stand in for the code.
            new_system, _, new_code = target.partition("|")
            return {"system": new_system, "code": new_code}
        return dict(value)
    return {k: _rewrite_fhir(v, key, dialect, kept) for k, v in value.items()}


@lru_cache
def profiles(directories: tuple[Path, ...] | None = None) -> tuple[str, ...]:
    """The guideline profiles the knowledge allows (default: the bundled knowledge): the codes of
    the ValueSet its `guideline` Library parameter names as allowed values, sorted. Read from the
    JSON without compiling the logic; the loader checks the same ValueSet."""
    problems: list[Any] = []
    by_canonical: dict[str, dict[str, Any]] = {}
    for _, resource in read_documents(directories or tuple(bundled_knowledge_dirs()), problems):
        if resource.get("url"):
            by_canonical.setdefault(str(resource["url"]), resource)
    urls = {
        url
        for resource in by_canonical.values()
        if resource.get("resourceType") == "Library"
        for definition in resource.get("parameter", [])
        if definition.get("name") == PROFILE_PARAMETER
        and (url := allowed_values_url(definition)) is not None
    }
    terminology = Terminology.from_resources(by_canonical)
    return tuple(sorted({code for url in urls for _, code in terminology.closure(url)}))


def load_scenarios(path: Path) -> list[ScenarioSpec]:
    """Every scenario in a description file, or in every `*.json` of a directory but the dialect
    table (`dialects.json`). Raises
    ScenarioError, naming the file, for a description that does not follow the format."""
    files = (
        sorted(f for f in path.glob("*.json") if f.name != DIALECT_TABLE)
        if path.is_dir()
        else [path]
    )
    specs: list[ScenarioSpec] = []
    seen: dict[str, Path] = {}
    for file in files:
        document = json.loads(file.read_text(encoding="utf-8"))
        for raw in document["scenarios"]:
            try:
                spec = ScenarioSpec(raw.get("id"), raw.get("description", ""), raw)
            except ScenarioError as error:
                raise ScenarioError(f"{file}: {error}") from None
            if spec.id in seen:
                raise ScenarioError(f"{file}: scenario {spec.id!r} is also in {seen[spec.id]}")
            seen[spec.id] = file
            specs.append(spec)
    return specs
