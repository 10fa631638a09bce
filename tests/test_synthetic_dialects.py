"""Scenario dialects (`service.authoring.synthetic`, module docstring): how a record is rewritten, and that the
dialect table `scenarios/dialects.json` only uses what the knowledge already recognises: every
coding is in a ValueSet of `mappings/`, a rewrite stays in a ValueSet its source is in, every unit
spelling means the same number to the unit tables, and every knowledge coding the scenarios use is
in the table for each dialect that does not write its system (so nothing stays untranslated
unnoticed: where there is no equivalent, the table says why)."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from service.authoring.synthetic import (
    Dialect,
    ScenarioError,
    ScenarioSpec,
    load_dialects,
    load_scenarios,
)
from service.engine.check_digits import loinc_problem, snomed_problem
from service.engine.units import UnitTable
from service.settings import data_root

SCT, CM, LOINC = "http://snomed.info/sct", "http://hl7.org/fhir/sid/icd-10-cm", "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
SCENARIOS_DIR = data_root() / "scenarios"
TABLE: dict[str, Any] = json.loads((SCENARIOS_DIR / "dialects.json").read_text(encoding="utf-8"))
DIALECTS = load_dialects(SCENARIOS_DIR)
SCENARIOS = load_scenarios(SCENARIOS_DIR)


def _value_set_members() -> dict[str, set[str]]:
    """`system|code` -> the ValueSets listing it directly (groupings of ValueSets list none)."""
    members: dict[str, set[str]] = {}
    for file in sorted((data_root() / "mappings").glob("ValueSet-*.json")):
        value_set = json.loads(file.read_text(encoding="utf-8"))
        for include in value_set.get("compose", {}).get("include", []):
            for concept in include.get("concept", []):
                members.setdefault(f"{include['system']}|{concept['code']}", set()).add(
                    value_set["url"]
                )
    return members


KNOWLEDGE = _value_set_members()


# --- the rewrite, on a small table of its own -------------------------------------------------

SMALL = {
    "description": "-",
    "dialects": {
        "a": {"description": "-", "systems": [CM, LOINC]},
        "b": {"description": "-", "systems": [SCT, LOINC], "systemsWithin": {"value": [SCT]}},
    },
    "concepts": [
        {"concept": "loss", "codings": [f"{SCT}|1", f"{CM}|X1"], "a": f"{CM}|X1", "b": f"{SCT}|1"},
        {"concept": "loss 2", "codings": [f"{SCT}|2"], "a": f"{CM}|X1", "b": f"{SCT}|2"},
        {
            "concept": "gap",
            "codings": [f"{CM}|X9"],
            "a": f"{CM}|X9",
            "b": None,
            "noEquivalent": {"b": "none in the knowledge"},
        },
        {
            "concept": "answer",
            "codings": [f"{LOINC}|LA1", f"{SCT}|1"],
            "within": ["value"],
            "a": f"{LOINC}|LA1",
            "b": f"{SCT}|1",
        },
    ],
    "units": [{"unit": "m[IU]/L", "a": {"unit": "uIU/mL"}}],
}


def small(tmp_path: Path, table: Mapping[str, Any] = SMALL) -> dict[str, Dialect]:
    (tmp_path / "dialects.json").write_text(json.dumps(table))
    return load_dialects(tmp_path)


def spec(resources: list[dict[str, Any]], **raw: Any) -> ScenarioSpec:
    return ScenarioSpec(
        "p", "-", {"id": "p", "resources": resources, "expect": {"eshre": []}, **raw}
    )


def test_codings_become_the_dialects_and_its_own_stay(tmp_path: Path) -> None:
    dialects = small(tmp_path)
    record = spec(
        [
            {"resourceType": "Condition", "code": f"{SCT}|1", "date": "2024-01-01"},
            {"resourceType": "Condition", "code": [f"{SCT}|1", f"{SCT}|2"]},
            {"resourceType": "Condition", "code": f"{CM}|X9"},
            {"resourceType": "Condition", "code": "https://ehr.example|local"},
        ]
    )
    in_a = record.in_dialect(dialects["a"])
    assert [r["code"] for r in in_a.raw["resources"]] == [
        f"{CM}|X1",
        [f"{CM}|X1"],  # two source codings, one code: written once
        f"{CM}|X9",
        "https://ehr.example|local",  # in no concept: as it is
    ]
    assert in_a.dialect == "a"
    assert in_a.kept == ()
    assert in_a.raw["resources"][0]["date"] == "2024-01-01"
    in_b = record.in_dialect(dialects["b"])
    assert [r["code"] for r in in_b.raw["resources"]][:3] == [
        f"{SCT}|1",
        [f"{SCT}|1", f"{SCT}|2"],
        f"{CM}|X9",  # no equivalent: kept, and listed as a gap
    ]
    assert in_b.kept == (f"{CM}|X9",)
    assert record.raw["resources"][0]["code"] == f"{SCT}|1"  # the original is untouched


def test_codings_in_fhir_as_written_and_within_keys(tmp_path: Path) -> None:
    dialects = small(tmp_path)
    record = spec(
        [
            {
                "resourceType": "Observation",
                "code": f"{LOINC}|1-8",
                "value": {"coding": [{"system": SCT, "code": "1", "display": "Yes"}], "text": "t"},
                "reasonCode": [{"coding": [{"system": SCT, "code": "1", "display": "Loss"}]}],
            }
        ]
    )
    written = record.in_dialect(dialects["a"]).raw["resources"][0]
    # SNOMED 1 is a loss under any key but an answer under `value`; displays go with the code.
    assert written["value"] == {"coding": [{"system": LOINC, "code": "LA1"}], "text": "t"}
    assert written["reasonCode"] == [{"coding": [{"system": CM, "code": "X1"}]}]
    # Dialect b writes SNOMED answers even though it writes LOINC elsewhere.
    answer = spec(
        [{"resourceType": "Observation", "value": {"coding": [{"system": LOINC, "code": "LA1"}]}}]
    )
    assert answer.in_dialect(dialects["b"]).raw["resources"][0]["value"] == {
        "coding": [{"system": SCT, "code": "1"}]
    }


def test_units_are_respelled_and_numbers_stay(tmp_path: Path) -> None:
    dialects = small(tmp_path)
    tsh = {"value": 3.1, "unit": "m[IU]/L", "system": UCUM, "code": "m[IU]/L"}
    record = spec(
        [
            {
                "resourceType": "Observation",
                "valueQuantity": tsh,
                "referenceRange": [{"high": {"value": 4, "unit": "m[IU]/L"}}],
            },
            # Another spelling, or a unit of another system, is the record's own: kept.
            {"resourceType": "Observation", "valueQuantity": {"value": 3, "unit": "mU/L"}},
            {"resourceType": "Observation", "valueQuantity": {**tsh, "system": "urn:x"}},
        ]
    )
    written = record.in_dialect(dialects["a"]).raw["resources"]
    assert written[0]["valueQuantity"] == {"value": 3.1, "unit": "uIU/mL"}
    assert written[0]["referenceRange"] == [{"high": {"value": 4, "unit": "uIU/mL"}}]
    assert written[1:] == record.raw["resources"][1:]
    assert record.in_dialect(dialects["b"]).raw == record.raw


def test_a_scenario_can_keep_its_dialect(tmp_path: Path) -> None:
    dialects = small(tmp_path)
    record = spec([{"resourceType": "Condition", "code": f"{SCT}|1"}], dialects=False)
    assert not record.rewritable
    assert record.in_dialect(dialects["a"]) is record
    with pytest.raises(ScenarioError, match="dialects must be true or false"):
        spec([], dialects="no")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda t: t["concepts"][2].pop("noEquivalent"), "no b coding and no reason why"),
        (lambda t: t["concepts"].append(dict(t["concepts"][1])), "is in two concepts"),
        (lambda t: t["concepts"][0].update(a="X1"), "must be 'system|code' or null"),
        (lambda t: t["concepts"][0].update(extra=1), "unknown keys"),
    ],
)
def test_a_malformed_table_is_refused(tmp_path: Path, change: Any, message: str) -> None:
    table = json.loads(json.dumps(SMALL))
    change(table)
    with pytest.raises(ScenarioError, match=message):
        small(tmp_path, table)


def test_the_table_is_not_read_as_scenarios(tmp_path: Path) -> None:
    small(tmp_path)
    (tmp_path / "s.json").write_text(json.dumps({"description": "-", "scenarios": [spec([]).raw]}))
    assert [s.id for s in load_scenarios(tmp_path)] == ["p"]


# --- the shipped table against the knowledge ---------------------------------------------------


def _targets() -> Iterator[tuple[str, str, str, list[str]]]:
    """(concept, dialect, target, sources) for every coding the table writes."""
    for concept in TABLE["concepts"]:
        for dialect in TABLE["dialects"]:
            if concept.get(dialect):
                yield concept["concept"], dialect, concept[dialect], concept["codings"]


def test_every_table_coding_is_recognised_by_the_knowledge() -> None:
    codings = {c for concept in TABLE["concepts"] for c in concept["codings"]}
    codings |= {target for _, _, target, _ in _targets()}
    unknown = sorted(c for c in codings if c not in KNOWLEDGE)
    typos = [
        f"{c}: {problem}"
        for c in sorted(codings)
        for system, _, code in [c.partition("|")]
        for problem in [
            snomed_problem(code) if system == SCT else None,
            loinc_problem(code) if system == LOINC and not code.startswith("LA") else None,
        ]
        if problem
    ]
    assert not unknown and not typos, f"in no ValueSet of mappings/: {unknown}; typos: {typos}"


def test_a_rewrite_stays_in_the_value_sets_of_its_source() -> None:
    strays = [
        f"{concept} ({dialect}): {source} -> {target}"
        for concept, dialect, target, sources in _targets()
        for source in sources
        if source != target and not KNOWLEDGE.get(source, set()) & KNOWLEDGE.get(target, set())
    ]
    assert not strays, "rewrites leaving every ValueSet of their source:\n" + "\n".join(strays)


def test_a_rewrite_is_written_in_the_dialects_systems() -> None:
    foreign = []
    for concept in TABLE["concepts"]:
        for name, dialect in DIALECTS.items():
            target = concept.get(name)
            for key in concept.get("within") or [None]:
                systems = dialect.systems_within.get(key, dialect.systems) if key else None
                allowed = systems or dialect.systems
                if target and target.partition("|")[0] not in allowed:
                    foreign.append(f"{concept['concept']} ({name}): {target}")
    assert not foreign, f"targets in a system the dialect does not write: {foreign}"


def test_unit_spellings_mean_the_same_number() -> None:
    units = UnitTable.load([data_root() / "mappings"])
    wrong = []
    for entry in TABLE["units"]:
        for name in DIALECTS:
            if name in entry:
                written = entry[name].get("code") or entry[name]["unit"]
                if units.convert(Decimal(7), written, entry["unit"]) != Decimal(7):
                    wrong.append(f"{entry['unit']} as {written!r} ({name})")
    assert not wrong, f"spellings the unit tables do not read as the same quantity: {wrong}"


def _codings(value: Any, key: str) -> Iterator[tuple[str, str]]:
    """(`system|code`, short-form key) of every Coding in FHIR as written."""
    if isinstance(value, list):
        for item in value:
            yield from _codings(item, key)
    elif isinstance(value, dict) and "value" not in value:
        if isinstance(value.get("system"), str) and isinstance(value.get("code"), str):
            yield f"{value['system']}|{value['code']}", key
        for item in value.values():
            yield from _codings(item, key)


def test_every_knowledge_coding_of_the_scenarios_is_in_the_table() -> None:
    """A knowledge coding a dialect does not write, left out of the table, would stay as it is
    without anyone deciding so."""
    missing = set()
    for scenario in SCENARIOS:
        if not scenario.rewritable:
            continue
        for short in [*scenario.raw.get("resources", []), *scenario.raw.get("draftOrders", [])]:
            used = [(str(c), "code") for c in _as_list(short.get("code", []))]
            for key, value in short.items():
                if key not in ("resourceType", "code", "text", "date"):
                    used.extend(_codings(value, key))
            for coding, key in used:
                for name, dialect in DIALECTS.items():
                    native = dialect.systems_within.get(key, dialect.systems)
                    listed = (coding, key) in dialect.codings or (coding, None) in dialect.codings
                    if (
                        coding in KNOWLEDGE
                        and coding.partition("|")[0] not in native
                        and not listed
                    ):
                        missing.add(f"{coding} under {key} ({name}, e.g. {scenario.id})")
    assert not missing, "add to scenarios/dialects.json:\n" + "\n".join(sorted(missing))


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]
