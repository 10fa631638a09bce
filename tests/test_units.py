"""Unit tables (service/engine/units.py): conversions, validation of `*.units.json` documents,
loading from directories, and which unit a Quantity is in."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from support.engine_fixtures import (
    UNIT_DOCUMENT,
    UNITS,
)

from service.engine.units import UCUM, UnitTable, quantity_unit


def test_unit_table_conversions() -> None:
    assert UNITS.convert(48, "mmol/mol", "%") == Decimal("6.542")
    assert UNITS.convert(Decimal("6.542"), "%", "mmol/mol") == Decimal("48")
    assert UNITS.convert(6.5, "%", "mmol/mol") == (Decimal("6.5") - Decimal("2.15")) / Decimal(
        "0.0915"
    )
    assert UNITS.convert(3, "u[IU]/mL", "m[IU]/L") == 3
    assert UNITS.convert(3, "m[IU]/L", "u[IU]/mL") == 3
    assert UNITS.convert(1.5, "kg", "kg") == Decimal("1.5")  # identity, table or not
    assert UNITS.convert(1, "[GPL'U]", "[MPL'U]") is None  # different kinds: never
    assert UNITS.convert(1, "mmol/mol", "mmol/L") is None
    assert UNITS.convert(1, "%", "m[IU]/L") is None
    assert UNITS.convert(1, "MMOL/MOL", "%") is None  # UCUM is case-sensitive
    assert UNITS.convert(float("nan"), "%", "%") is None
    assert UNITS.knows("[GPL'U]") and UNITS.knows("%") and not UNITS.knows("kg")
    assert UNITS.convertible("kg", "kg") and not UNITS.convertible("[GPL'U]", "[MPL'U]")
    assert UNITS.problems == ()


def test_no_chaining_through_a_third_unit() -> None:
    table = UnitTable.from_documents(
        [
            (
                Path("t.units.json"),
                {
                    "conversions": [
                        {"from": "a", "to": "b", "factor": 2},
                        {"from": "b", "to": "c", "factor": 3},
                    ]
                },
            )
        ]
    )
    assert table.convert(1, "a", "b") == 2 and table.convert(1, "b", "c") == 3
    assert table.convert(1, "a", "c") is None


@pytest.mark.parametrize(
    ("document", "path", "reason"),
    [
        ([], "-", "JSON object"),
        ({"conversions": [], "author": "x"}, "author", "unknown key"),
        ({"description": 1, "conversions": []}, "description", "string"),
        ({}, "conversions", "required"),
        ({"conversions": {}}, "conversions", "required"),
        ({"conversions": ["x"]}, "conversions[0]", "JSON object"),
        ({"conversions": [{"to": "%", "factor": 1}]}, "conversions[0].from", "UCUM code"),
        (
            {"conversions": [{"from": "mg dL", "to": "%", "factor": 1}]},
            "conversions[0].from",
            "no spaces",
        ),
        ({"conversions": [{"from": "a", "to": "", "factor": 1}]}, "conversions[0].to", "UCUM code"),
        ({"conversions": [{"from": "a", "to": "b"}]}, "conversions[0].factor", "non-zero"),
        (
            {"conversions": [{"from": "a", "to": "b", "factor": 0}]},
            "conversions[0].factor",
            "non-zero",
        ),
        (
            {"conversions": [{"from": "a", "to": "b", "factor": "2"}]},
            "conversions[0].factor",
            "non-zero",
        ),
        (
            {"conversions": [{"from": "a", "to": "b", "factor": True}]},
            "conversions[0].factor",
            "non-zero",
        ),
        (
            {"conversions": [{"from": "a", "to": "b", "factor": 1, "offset": None}]},
            "conversions[0].offset",
            "number",
        ),
        (
            {"conversions": [{"from": "a", "to": "b", "factor": 1, "note": 3}]},
            "conversions[0].note",
            "string",
        ),
        (
            {"conversions": [{"from": "a", "to": "b", "factor": 1, "ofset": 3}]},
            "conversions[0].ofset",
            "unknown key",
        ),
        ({"conversions": [{"from": "a", "to": "a", "factor": 1}]}, "conversions[0]", "implicit"),
        (
            {
                "conversions": [
                    {"from": "a", "to": "b", "factor": 2},
                    {"from": "a", "to": "b", "factor": 2},
                ]
            },
            "conversions[1]",
            "already defined",
        ),
        (
            {
                "conversions": [
                    {"from": "a", "to": "b", "factor": 2},
                    {"from": "b", "to": "a", "factor": 0.5},
                ]
            },
            "conversions[1]",
            "inverse is derived",
        ),
        ({"units": "mg", "conversions": []}, "units", "list"),
        ({"units": ["mg", "m g"], "conversions": []}, "units[1]", "UCUM code"),
    ],
)
def test_unit_table_validation(document: Any, path: str, reason: str) -> None:
    file = Path("site/labs.units.json")
    table = UnitTable.from_documents([(file, document)])
    assert len(table.problems) == 1, table.problems
    problem = table.problems[0]
    assert (problem.file, problem.path) == (file, path)
    assert reason in problem.reason
    assert str(problem).startswith(f"{file}: {path}: ")


def test_invalid_entries_are_left_out_and_valid_ones_kept() -> None:
    table = UnitTable.from_documents(
        [
            (
                Path("t.units.json"),
                {
                    "conversions": [
                        {"from": "a", "to": "b", "factor": 0},
                        {"from": "c", "to": "d", "factor": 2},
                    ]
                },
            )
        ]
    )
    assert table.convert(1, "a", "b") is None
    assert table.convert(1, "c", "d") == 2
    assert len(table.problems) == 1


def test_conflicting_duplicates_are_found_across_files() -> None:
    entry = {"conversions": [{"from": "a", "to": "b", "factor": 2}]}
    other = {"conversions": [{"from": "a", "to": "b", "factor": 3}]}
    table = UnitTable.from_documents(
        [(Path("one.units.json"), entry), (Path("two.units.json"), other)]
    )
    assert [(p.file.name, p.path) for p in table.problems] == [("two.units.json", "conversions[0]")]
    assert "one.units.json conversions[0]" in table.problems[0].reason


def test_unit_tables_load_from_directories(tmp_path: Path) -> None:
    (tmp_path / "site").mkdir()
    (tmp_path / "labs.units.json").write_text(json.dumps(UNIT_DOCUMENT), encoding="utf-8")
    (tmp_path / "site" / "more.units.json").write_text(
        json.dumps({"conversions": [{"from": "g/L", "to": "g/dL", "factor": 0.1}]}),
        encoding="utf-8",
    )
    (tmp_path / "site" / "broken.units.json").write_text("{", encoding="utf-8")
    (tmp_path / "ValueSet-x.json").write_text("not looked at", encoding="utf-8")
    table = UnitTable.load([tmp_path, tmp_path / "absent"])
    assert table.convert(20, "g/L", "g/dL") == 2
    assert table.convert(48, "mmol/mol", "%") == Decimal("6.542")
    assert [(p.file.name, p.path) for p in table.problems] == [("broken.units.json", "-")]


@pytest.mark.parametrize(
    ("quantity_element", "unit"),
    [
        ({"value": 1, "system": UCUM, "code": "mmol/mol", "unit": "mmol/mol (IFCC)"}, "mmol/mol"),
        ({"value": 1, "code": "mmol/mol", "unit": "whatever"}, "mmol/mol"),
        ({"value": 1, "unit": "mmol/mol"}, "mmol/mol"),
        ({"value": 1, "system": UCUM, "unit": "mmol/mol"}, "mmol/mol"),
        ({"value": 1, "system": "urn:local-units", "code": "mmol/mol", "unit": "mmol/mol"}, None),
        ({"value": 1}, None),
        ({"value": 1, "code": ""}, None),
    ],
)
def test_quantity_unit_rule(quantity_element: dict[str, Any], unit: str | None) -> None:
    assert quantity_unit(quantity_element) == unit
