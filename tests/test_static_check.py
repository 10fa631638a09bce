"""The load-time static check of FHIRPath expressions (service/engine/fhirpath/static_check.py):
unknown functions, wrong arities, ValueSets and units the knowledge does not have."""

from __future__ import annotations

import pytest
from support.engine_fixtures import (
    EX,
    SNOMED,
    TERMINOLOGY,
    UNITS,
    VS_FILTER,
    VS_LAB,
    VS_VERSIONED,
    include,
    value_set,
)

from service.engine.fhirpath.static_check import check_expression
from service.engine.terminology import Terminology


@pytest.mark.parametrize(
    ("expression", "problems"),
    [
        (f"Observation.code.inValueSet('{VS_LAB}')", []),
        (f"Observation.code.inValueSet('{VS_VERSIONED}|2')", []),
        ("Observation.code.inValueSet(%url)", []),  # computed: checked at run time
        (
            "Observation.value.quantityIn('%') >= 6.5 and Observation.value.convertibleTo('mg/dL')",
            [],
        ),
        ("%o.where(effective.daysBetween(%today) < 30).latest().clinicalDate()", []),
        (
            "Observation.exists() and iif(true, 1, 2) = 1 and coalesce(%a, %b, %c).exists() "
            "and trace('x', 1).exists() and today().toString().substring(0, 4) = '2024'",
            [],
        ),
        (
            f"Observation.code.inValueSet('{EX}/ValueSet/unknown')",
            [
                f"inValueSet('{EX}/ValueSet/unknown'): no such ValueSet is loaded, or it cannot be expanded"
            ],
        ),
        (
            f"Observation.code.inValueSet('{VS_VERSIONED}|1')",
            [
                f"inValueSet('{VS_VERSIONED}|1'): no such ValueSet is loaded, or it cannot be expanded"
            ],
        ),
        (
            f"Observation.code.inValueSet('{VS_FILTER}')",
            [f"inValueSet('{VS_FILTER}'): no such ValueSet is loaded, or it cannot be expanded"],
        ),
        (
            "Observation.value.quantityIn('mg/dl')",
            ["quantityIn('mg/dl'): unit 'mg/dl' is in no unit table"],
        ),
        (
            "Observation.value.convertibleTo('kg')",
            ["convertibleTo('kg'): unit 'kg' is in no unit table"],
        ),
        ("Observation.code.memberOf('x')", ["unknown function memberOf(): use inValueSet(url)"]),
        ("Observation.code.frobnicate()", ["unknown function frobnicate(): neither"]),
        ("Observation.value.quantityIn()", ["quantityIn() takes 1 argument(s), got 0"]),
        ("Observation.latest(1)", ["latest() takes 0 argument(s), got 1"]),
        ("Observation.first(2)", ["first() takes 0 argument(s), got 1"]),
        (
            "Observation.effective.daysBetween(%a, %b)",
            ["daysBetween() takes 0 or 1 argument(s), got 2"],
        ),
        (
            "Observation.where(code.inValueSet('urn:x')).select(value.quantityIn('x')).foo()",
            ["inValueSet('urn:x')", "quantityIn('x')", "unknown function foo()"],
        ),
        (f"`inValueSet`('{EX}/x')", [f"inValueSet('{EX}/x')"]),
    ],
)
def test_check_expression(expression: str, problems: list[str]) -> None:
    found = check_expression(expression, TERMINOLOGY, UNITS)
    assert len(found) == len(problems), found
    for message, expected in zip(found, problems, strict=True):
        assert message.startswith(expected)


def test_check_expression_with_escaped_literal() -> None:
    terminology = Terminology.from_resources(
        {"urn:x'y": value_set("urn:x'y", compose={"include": [include(SNOMED, "1")]})}
    )
    assert check_expression("code.inValueSet('urn:x\\'y')", terminology, UNITS) == []
