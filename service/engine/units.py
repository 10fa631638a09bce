"""Unit conversion tables: the only unit knowledge the engine has, read from `*.units.json` files.

Why it exists: FHIRPath Quantity comparison needs UCUM arithmetic, which fhirpathpy lacks (it
raises when asked to order two Quantities), and clinical conversions such as IFCC HbA1c (mmol/mol)
to NGSP (%) are not UCUM conversions at all but published equations. FHIR
has no resource for such a table, so it is a small JSON document beside the ValueSets:

    {
      "description": "what these conversions are for",
      "source": "where the factors come from",
      "units": ["mg/dL"],
      "conversions": [
        {"from": "u[IU]/mL", "to": "m[IU]/L", "factor": 1},
        {"from": "mmol/mol", "to": "%", "factor": 0.0915, "offset": 2.15,
         "note": "IFCC to NGSP master equation"}
      ]
    }

`spellings` (optional) maps the ways EHRs write a unit that are not UCUM codes to the UCUM code they
mean: `{"uIU/mL": "u[IU]/mL", "GPL U/mL": "[GPL'U]/mL"}`. It is the one place written forms are
normalised: a Quantity's unit is looked up there first (exactly, case and all), and the analyte
tables then convert UCUM codes only. A spelling translates the writing, never the quantity (`mU/L`
of TSH is `m[IU]/L`; factors belong in `conversions`); its target must be a unit some table knows,
and one written form has one meaning across all tables. A document of spellings alone needs no
`conversions`.

A conversion means `to = from * factor + offset`. Its inverse, `from = (to - offset) / factor`, is
derived automatically (so each pair is written once; writing both directions is a problem, since
two rounded published factors are rarely exact inverses). Converting a unit to itself is always the
identity, whether or not the table mentions it. Nothing else converts: there is no chaining
through a third unit and no UCUM algebra, so two units of different kinds (say [GPL'U] and
[MPL'U]) are never converted unless a table says how. `units` lists further units the knowledge
may ask for that need no conversion; it only feeds the static check that a unit an expression asks
for is known (catching `mg/dl` for `mg/dL`).

Units are UCUM codes compared exactly (UCUM is case-sensitive: `mg` and `Mg` differ). The unit of a
FHIR Quantity is its `code` when `system` is UCUM or absent, and its `unit` display text when there
is no `code` (many EHRs send only `unit`, usually written as the UCUM code; it is still compared
exactly, so a display like `mg per dL` simply is not known). A Quantity whose
`system` is not UCUM has no usable unit: its codes mean something else.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from service.engine.problems import Problem
from service.engine.strict_json import read_json

UCUM = "http://unitsofmeasure.org"
UNIT_TABLE_SUFFIX = ".units.json"

_DOCUMENT_KEYS = frozenset({"description", "source", "units", "conversions", "spellings"})
_ENTRY_KEYS = frozenset({"from", "to", "factor", "offset", "note"})


@dataclass(frozen=True)
class _Conversion:
    factor: Decimal
    offset: Decimal
    inverse: bool  # apply (value - offset) / factor instead of value * factor + offset
    origin: str

    def apply(self, value: Decimal) -> Decimal:
        if self.inverse:
            return (value - self.offset) / self.factor
        return value * self.factor + self.offset


@dataclass(frozen=True)
class UnitTable:
    _conversions: Mapping[tuple[str, str], _Conversion] = field(default_factory=dict)
    units: frozenset[str] = frozenset()
    problems: tuple[Problem, ...] = ()
    # written form (not UCUM) -> the UCUM code it means
    _spellings: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, directories: Iterable[Path]) -> UnitTable:
        """Every `*.units.json` below the directories (missing directories are the knowledge
        loader's to report). Problems are in `.problems`; the table holds the valid entries."""
        documents: list[tuple[Path, Any]] = []
        problems: list[Problem] = []
        for directory in directories:
            if not directory.is_dir():
                continue
            for file in sorted(directory.rglob(f"*{UNIT_TABLE_SUFFIX}")):
                try:
                    documents.append((file, read_json(file)))
                except (OSError, UnicodeDecodeError, ValueError) as error:
                    problems.append(Problem(file, "-", f"not readable JSON: {error}"))
        table = cls.from_documents(documents)
        return cls(table._conversions, table.units, (*problems, *table.problems), table._spellings)

    @classmethod
    def from_documents(cls, documents: Iterable[tuple[Path, Any]]) -> UnitTable:
        """Validate and combine parsed unit-table documents (file, JSON value)."""
        builder = _Builder()
        for file, document in documents:
            builder.document(file, document)
        return builder.build()

    def knows(self, unit: str) -> bool:
        """Whether the unit appears in any table (as from, to or listed unit)."""
        return unit in self.units

    def normalise(self, unit: str) -> str:
        """The UCUM code a written unit stands for (by the spelling table); UCUM codes and unknown
        spellings are returned as they are."""
        return self._spellings.get(unit, unit)

    def convertible(self, from_unit: str, to_unit: str) -> bool:
        from_unit = self.normalise(from_unit)
        return from_unit == to_unit or (from_unit, to_unit) in self._conversions

    def convert(self, value: Decimal | float | int, from_unit: str, to_unit: str) -> Decimal | None:
        """`value` in `from_unit` expressed in `to_unit`; None when the table cannot say."""
        number = to_decimal(value)
        if number is None:
            return None
        from_unit = self.normalise(from_unit)
        if from_unit == to_unit:
            return number
        conversion = self._conversions.get((from_unit, to_unit))
        return None if conversion is None else conversion.apply(number)


def to_decimal(value: object) -> Decimal | None:
    """A finite number as Decimal (floats via their shortest repr, so 0.0915 stays 0.0915)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, Decimal):
        return value if value.is_finite() else None
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, float):
        return Decimal(str(value)) if math.isfinite(value) else None
    return None


def quantity_unit(quantity: Mapping[str, Any]) -> str | None:
    """The UCUM code of a FHIR Quantity, by the rule in the module docstring; None if unusable."""
    system, code, unit = quantity.get("system"), quantity.get("code"), quantity.get("unit")
    if system not in (None, UCUM):
        return None
    if isinstance(code, str) and code:
        return code
    if isinstance(unit, str) and unit:
        return unit
    return None


def _valid_unit(value: Any) -> bool:
    return isinstance(value, str) and bool(value) and not any(c.isspace() for c in value)


@dataclass
class _Builder:
    conversions: dict[tuple[str, str], _Conversion] = field(default_factory=dict)
    units: set[str] = field(default_factory=set)
    problems: list[Problem] = field(default_factory=list)
    # written form -> (UCUM code, file and element that define it)
    spellings: dict[str, tuple[str, Path, str]] = field(default_factory=dict)

    def problem(self, file: Path, path: str, reason: str) -> None:
        self.problems.append(Problem(file, path, reason))

    def document(self, file: Path, document: Any) -> None:
        if not isinstance(document, dict):
            self.problem(file, "-", "a unit table is a JSON object")
            return
        for key in sorted(set(document) - _DOCUMENT_KEYS):
            self.problem(file, key, f"unknown key; a unit table has {sorted(_DOCUMENT_KEYS)}")
        for key in ("description", "source"):
            if key in document and not isinstance(document[key], str):
                self.problem(file, key, "must be a string")
        units = document.get("units", [])
        if not isinstance(units, list):
            self.problem(file, "units", "must be a list of UCUM codes")
        else:
            for index, unit in enumerate(units):
                if _valid_unit(unit):
                    self.units.add(unit)
                else:
                    self.problem(file, f"units[{index}]", "a UCUM code: non-empty, no spaces")
        if "spellings" in document:
            self.spelling_map(file, document["spellings"])
        conversions = document.get("conversions", [] if "spellings" in document else None)
        if not isinstance(conversions, list):
            self.problem(file, "conversions", "a list of conversions is required")
            return
        for index, entry in enumerate(conversions):
            self.entry(file, f"conversions[{index}]", entry)

    def spelling_map(self, file: Path, spellings: Any) -> None:
        if not isinstance(spellings, dict):
            self.problem(file, "spellings", "an object from written form to UCUM code")
            return
        for written, ucum in spellings.items():
            path = f"spellings[{written!r}]"
            if not written.strip() or written != written.strip():
                self.problem(file, path, "a written form is non-empty, without outer spaces")
            elif not _valid_unit(ucum):
                self.problem(file, path, "the UCUM code it means is required (no spaces)")
            elif written == ucum:
                self.problem(file, path, "a UCUM code needs no spelling")
            elif written in self.spellings and self.spellings[written][0] != ucum:
                known, other, where = self.spellings[written]
                self.problem(file, path, f"already means {known} ({other} {where})")
            else:
                self.spellings.setdefault(written, (ucum, file, path))

    def entry(self, file: Path, path: str, entry: Any) -> None:  # noqa: C901
        # Each field of a conversion entry is checked on its own, so an author sees every problem.
        if not isinstance(entry, dict):
            self.problem(file, path, "a conversion is a JSON object")
            return
        valid = True
        for key in sorted(set(entry) - _ENTRY_KEYS):
            self.problem(
                file, f"{path}.{key}", f"unknown key; a conversion has {sorted(_ENTRY_KEYS)}"
            )
            valid = False
        for key in ("from", "to"):
            if not _valid_unit(entry.get(key)):
                self.problem(file, f"{path}.{key}", "a UCUM code is required (no spaces)")
                valid = False
        factor = _number(entry.get("factor"))
        if factor is None or factor == 0:
            self.problem(file, f"{path}.factor", "a non-zero number is required")
            valid = False
        offset = _number(entry.get("offset", 0))
        if offset is None:
            self.problem(file, f"{path}.offset", "must be a number")
            valid = False
        if "note" in entry and not isinstance(entry["note"], str):
            self.problem(file, f"{path}.note", "must be a string")
            valid = False
        if not valid or factor is None or offset is None:
            return
        source, target = entry["from"], entry["to"]
        if source == target:
            self.problem(file, path, "converting a unit to itself is implicit")
            return
        origin = f"{file} {path}"
        known = self.conversions.get((source, target))
        if (
            known
            and not known.inverse
            and (known.factor, known.offset) == (factor, offset)
            and not known.origin.startswith(f"{file} ")
        ):
            return  # another knowledge set states the same conversion: they agree
        for pair in ((source, target), (target, source)):
            if pair in self.conversions:
                self.problem(
                    file,
                    path,
                    f"{pair[0]} → {pair[1]} is already defined by {self.conversions[pair].origin} "
                    "(write each pair once; the inverse is derived)",
                )
                return
        self.conversions[(source, target)] = _Conversion(factor, offset, False, origin)
        self.conversions[(target, source)] = _Conversion(factor, offset, True, origin)
        self.units.update((source, target))

    def build(self) -> UnitTable:
        for written, (ucum, file, path) in self.spellings.items():
            if ucum not in self.units:
                self.problem(file, path, f"{written!r} means {ucum}, which no table knows")
            elif written in self.units:
                self.problem(file, path, f"{written!r} is a unit of a table, not a spelling")
        spellings = {written: ucum for written, (ucum, _, _) in self.spellings.items()}
        return UnitTable(
            dict(self.conversions), frozenset(self.units), tuple(self.problems), spellings
        )


def _number(value: Any) -> Decimal | None:
    if isinstance(value, str):
        return None  # a string factor is an authoring slip worth reporting, not parsing
    try:
        return to_decimal(value)
    except InvalidOperation:
        return None
