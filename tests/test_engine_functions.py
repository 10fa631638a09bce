"""Engine functions for FHIRPath (service/engine/fhirpath/functions.py), exercised through real
FHIRPath (fhirpathpy).

Every behaviour is checked by compiling an expression with `compile_expression(text, functions)`
and evaluating it, so the tests cover how fhirpathpy hands values to the functions (plain data,
FP_DateTime literals, today() strings, ResourceNodes) and FHIRPath's empty propagation. The
terminology, the unit tables and the static check have their own test files; the knowledge all
of them share is tests/support/engine_fixtures.py.
"""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Any

import pytest
from fhirpathpy.engine.invocations import invocation_registry
from support.engine_fixtures import (
    EX,
    FUNCTIONS,
    LOINC,
    TODAY,
    VS_LAB,
    coding,
    concept,
    observation,
    quantity,
    run,
)

from service.engine.fhirpath.functions import (
    SIGNATURES,
    clinical_date,
    parse_date,
)

# Registration


def test_no_engine_function_shadows_a_fhirpathpy_builtin() -> None:
    assert set(FUNCTIONS).isdisjoint(invocation_registry)
    assert set(FUNCTIONS) == set(SIGNATURES)


@pytest.mark.parametrize(
    "expression",
    [
        f"{{}}.inValueSet('{VS_LAB}')",
        "{}.quantityIn('%')",
        "{}.convertibleTo('%')",
        "{}.daysBetween(@2024-01-01)",
        "{}.daysBetween()",
        "{}.latest()",
        "{}.clinicalDate()",
        "Observation.code.inValueSet(%missing)",
        "Observation.value.quantityIn(%missing)",
        "Observation.value.convertibleTo(%missing)",
        "Observation.effective.daysBetween(%missing)",
        "Observation.nothing.inValueSet(%unknownUrl)",
    ],
)
def test_empty_input_or_argument_gives_empty_not_false(expression: str) -> None:
    obs = observation(
        code=concept(coding(LOINC, "4548-4")),
        valueQuantity=quantity(48, "mmol/mol"),
        effectiveDateTime="2024-01-01",
    )
    assert run(expression, obs, missing=[], unknownUrl=f"{EX}/ValueSet/not-loaded") == []


def test_functions_compose_with_where_and_not() -> None:
    obs = observation(code=concept(coding(LOINC, "4548-4")))
    assert run(f"Observation.code.inValueSet('{VS_LAB}').not()", obs) == [False]
    assert run(f"Observation.code.inValueSet('{VS_LAB}').empty()", obs) == [False]
    assert run(f"Observation.nothing.inValueSet('{VS_LAB}').not()", obs) == []


# quantityIn and convertibleTo through FHIRPath


def a1c(value: Any = None, code: str | None = None, **extra: Any) -> dict[str, Any]:
    return observation(valueQuantity=quantity(value, code, **extra))


@pytest.mark.parametrize(
    ("obs", "unit", "expected"),
    [
        (a1c(6.1, "%"), "%", [Decimal("6.1")]),
        (a1c(250, "mg/dL"), "mg/dL", [Decimal("250")]),
        (a1c(12.5, "u[IU]/mL"), "m[IU]/L", [Decimal("12.5")]),
        (a1c(48, "mmol/mol"), "%", [Decimal("6.542")]),
        (a1c(Decimal("6.542"), "%"), "mmol/mol", [Decimal("48")]),
        (a1c(30, "[GPL'U]"), "[MPL'U]", []),  # different kinds: refused
        (a1c(48), "%", []),  # no unit
        (a1c(48, "mmol/L"), "%", []),  # unknown unit
        (a1c(None, "mmol/mol"), "%", []),  # no value
        (a1c(5, "%", comparator="<"), "%", []),  # a bound, not a value
        (a1c(48, "mmol/mol", system="urn:local-units"), "%", []),  # not UCUM
        (observation(valueQuantity={"value": 48, "unit": "mmol/mol"}), "%", [Decimal("6.542")]),
        (observation(valueString="6.5 %"), "%", []),
        (observation(), "%", []),
    ],
)
def test_quantity_in(obs: dict[str, Any], unit: str, expected: list[Decimal]) -> None:
    # A FHIRPath string literal escapes the apostrophe of units such as [GPL'U].
    escaped = unit.replace("'", "\\'")
    result = run(f"Observation.value.quantityIn('{escaped}')", obs)
    assert result == expected
    assert all(isinstance(v, Decimal) for v in result)


def test_quantity_in_back_and_forth() -> None:
    [percent] = run("Observation.value.quantityIn('%')", a1c(6.5, "%"))
    [mmol] = run("Observation.value.quantityIn('mmol/mol')", a1c(6.5, "%"))
    assert round(mmol, 2) == Decimal("47.54")
    assert run("%q.quantityIn('%')", q=quantity(mmol, "mmol/mol")) == [percent]


@pytest.mark.parametrize(
    ("obs", "expected"),
    [
        (a1c(48, "mmol/mol"), [True]),  # 6.542 %
        (a1c(47, "mmol/mol"), [False]),  # 6.4505 %
        (a1c(6.5, "%"), [True]),
        (a1c(6.4, "%"), [False]),
        (a1c(48, "mmol/L"), []),  # unknown unit: unknown, not false
        (a1c(48), []),
        (observation(), []),
    ],
)
def test_quantity_comparison(obs: dict[str, Any], expected: list[bool]) -> None:
    assert run("Observation.value.quantityIn('%') >= 6.5", obs) == expected


def test_quantity_literals_convert_too() -> None:
    assert run("(48 'mmol/mol').quantityIn('%')") == [Decimal("6.542")]
    assert run("(2 days).quantityIn('d')") == []  # calendar words are not UCUM
    assert run("(48 'mmol/mol').convertibleTo('%')") == [True]


def test_quantity_in_selects_over_several_with_where_and_select() -> None:
    observations = [a1c(48, "mmol/mol"), a1c(6.0, "%"), a1c(7, "mmol/L")]
    assert run("%o.where(value.quantityIn('%') >= 6.5).count()", o=observations) == [1]
    assert run("%o.select(value.quantityIn('%'))", o=observations) == [
        Decimal("6.542"),
        Decimal("6.0"),
    ]


def test_quantity_in_on_several_items_is_an_error() -> None:
    with pytest.raises(Exception, match="single item"):
        run("%o.value.quantityIn('%')", o=[a1c(48, "mmol/mol"), a1c(6.0, "%")])


def test_quantity_in_on_a_resource_is_an_authoring_error() -> None:
    with pytest.raises(Exception, match="Observation resource"):
        run("%o.quantityIn('%')", o=[a1c(48, "mmol/mol")])


@pytest.mark.parametrize(
    ("obs", "expected"),
    [
        (a1c(48, "mmol/mol"), [True]),
        (a1c(None, "mmol/mol"), [True]),  # the unit is usable, the value is missing
        (a1c(5, "%", comparator="<"), [True]),
        (a1c(48, "mmol/L"), [False]),
        (a1c(48), [False]),
        (a1c(48, "mmol/mol", system="urn:local-units"), [False]),
        (observation(valueString="6.5"), [False]),
        (observation(), []),
    ],
)
def test_convertible_to(obs: dict[str, Any], expected: list[bool]) -> None:
    assert run("Observation.value.convertibleTo('%')", obs) == expected


def test_a_number_without_a_usable_unit_is_detectable() -> None:
    expression = (
        "Observation.value.exists() and Observation.value.quantityIn('%').empty() "
        "and Observation.value.convertibleTo('%').not()"
    )
    assert run(expression, a1c(48, "mmol/L")) == [True]
    assert run(expression, a1c(48, "mmol/mol")) == [False]
    assert run(expression, observation()) == [False]


# daysBetween


@pytest.mark.parametrize(
    ("start", "end", "days"),
    [
        ("2024-01-01", "2024-03-01", 60),  # leap year
        ("2023-01-01", "2023-03-01", 59),
        ("2024-03-01", "2024-01-01", -60),
        ("2024-03-01", "2024-03-01", 0),
        # Calendar dates as recorded: time and offset are not used.
        ("2024-01-01T23:30:00+01:00", "2024-01-02T00:10:00+01:00", 1),
        ("2024-01-02T00:10:00+01:00", "2024-01-01T23:30:00+01:00", -1),
        ("2024-01-01T23:30:00-05:00", "2024-01-02", 1),
        ("2024-01-01T01:00:00+14:00", "2024-01-01T23:00:00-12:00", 0),
        ("2024-01-01T10:00:00.123Z", "2024-01-31T09:00:00Z", 30),
        ("2024-01-01T10:00:00.123456789Z", "2024-01-02", 1),
    ],
)
def test_days_between_strings(start: str, end: str, days: int) -> None:
    assert run("%a.daysBetween(%b)", a=start, b=end) == [days]


@pytest.mark.parametrize(
    ("start", "end"),
    [
        ("2024", "2024-03-01"),
        ("2024-01", "2024-03-01"),
        ("2024-01-01", "2024-03"),
        ("2024-02-30", "2024-03-01"),  # not a date
        ("2024-01-01T25:00:00Z", "2024-03-01"),
        ("next week", "2024-03-01"),
        ("2024-01-01", "20240301"),
    ],
)
def test_days_between_partial_or_invalid_dates_is_empty(start: str, end: str) -> None:
    assert run("%a.daysBetween(%b)", a=start, b=end) == []
    assert run("%b.daysBetween(%a)", a=start, b=end) == []


def test_days_between_fhirpath_date_values() -> None:
    obs = observation(effectiveDateTime="2024-01-02T10:00:00+01:00")
    assert run("Observation.effective.daysBetween(@2024-03-01)", obs) == [59]
    assert run("@2024-01-01.daysBetween(@2024-01-31)") == [30]
    assert run("@2024-01-01T23:00:00+02:00.daysBetween(@2024-01-02)") == [1]
    assert run("@2024-01.daysBetween(@2024-01-31)") == []
    assert run("@2024.daysBetween(@2024-01-31)") == []
    assert run("Observation.effective.daysBetween(%today)", obs, today="2024-01-12") == [10]
    [today] = run("today()")
    assert run("@2024-01-01.daysBetween(today())") == [
        (date.fromisoformat(str(today)) - date(2024, 1, 1)).days
    ]


def test_days_between_without_argument_counts_to_the_engine_today() -> None:
    assert run("@2024-02-01.daysBetween()") == [(TODAY - date(2024, 2, 1)).days]


def test_days_between_argument_is_evaluated_from_the_root() -> None:
    obs = observation(effectiveDateTime="2024-01-11", issued="2024-01-21T08:00:00Z")
    assert run("Observation.effective.daysBetween(Observation.issued)", obs) == [10]
    observations = [obs, observation(effectiveDateTime="2023-12-01")]
    assert run(
        "%o.where(effective.daysBetween(%today) <= 30).count()", o=observations, today="2024-01-31"
    ) == [1]


def test_days_between_on_non_dates_is_empty() -> None:
    obs = observation(effectivePeriod={"start": "2024-01-01"})
    assert run("Observation.effective.daysBetween(@2024-03-01)", obs) == []
    assert run("(5).daysBetween(@2024-03-01)") == []
    assert run("@2024-03-01.daysBetween(@T10:00)") == []


def test_days_between_on_several_items_is_an_error() -> None:
    with pytest.raises(Exception, match="single item"):
        run("%a.daysBetween(@2024-03-01)", a=["2024-01-01", "2024-01-02"])
    with pytest.raises(Exception, match="single item"):
        run("@2024-03-01.daysBetween(%a)", a=["2024-01-01", "2024-01-02"])


# latest and clinicalDate


def test_latest_among_observations_with_mixed_dates() -> None:
    observations = [
        observation(id="a", effectiveDateTime="2024-01-10"),
        observation(id="b", effectivePeriod={"start": "2024-02-01T08:00:00Z", "end": "2024-02-02"}),
        observation(id="c", issued="2024-03-01T09:00:00.000+01:00"),
        observation(id="d"),  # no date: ignored
        observation(id="e", effectiveDateTime="2024-02-15", issued="2024-06-01T00:00:00Z"),
    ]
    assert run("%o.latest().id", o=observations) == ["c"]
    assert run("%o.latest().clinicalDate()", o=observations) == ["2024-03-01T09:00:00.000+01:00"]
    # effective wins over issued: e counts as 2024-02-15, so without c, e is the latest.
    assert run("%o.where(id != 'c').latest().id", o=observations) == ["e"]


def test_latest_orders_instants_across_time_zones_and_precisions() -> None:
    observations = [
        observation(id="early", effectiveDateTime="2024-01-02T01:00:00+01:00"),  # 00:00Z
        observation(id="late", effectiveDateTime="2024-01-01T23:00:00-05:00"),  # 04:00Z
    ]
    assert run("%o.latest().id", o=observations) == ["late"]
    partial = [
        observation(id="year", effectiveDateTime="2024"),
        observation(id="day", effectiveDateTime="2023-12-31"),
    ]
    assert run("%o.latest().id", o=partial) == ["year"]
    partial.append(observation(id="june", effectiveDateTime="2024-06-01"))
    assert run("%o.latest().id", o=partial) == ["june"]


def test_latest_ties_keep_the_first() -> None:
    observations = [
        observation(id="first", effectiveDateTime="2024-01-01T10:00:00Z"),
        observation(id="second", effectiveDateTime="2024-01-01T11:00:00+01:00"),
    ]
    assert run("%o.latest().id", o=observations) == ["first"]


def test_latest_without_dated_resources_is_empty() -> None:
    assert run("%o.latest()", o=[observation(), observation(effectiveDateTime="soon")]) == []
    assert run("%o.latest()", o=[]) == []


def test_latest_result_is_navigable() -> None:
    observations = [
        a1c(48, "mmol/mol") | {"effectiveDateTime": "2024-01-01"},
        a1c(7.1, "%") | {"effectiveDateTime": "2024-02-01"},
    ]
    assert run("%o.latest().value.quantityIn('%')", o=observations) == [Decimal("7.1")]
    assert run("%o.latest().effective.daysBetween(%today)", o=observations, today="2024-02-11") == [
        10
    ]


def test_latest_on_non_resources_is_an_authoring_error() -> None:
    with pytest.raises(Exception, match="expects resources"):
        run("%o.latest()", o=["2024-01-01"])


@pytest.mark.parametrize(
    ("resource", "expected"),
    [
        (
            {
                "resourceType": "Condition",
                "onsetDateTime": "2023-05-01",
                "recordedDate": "2023-06-01",
            },
            "2023-05-01",
        ),
        (
            {"resourceType": "Condition", "onsetString": "childhood", "recordedDate": "2023-06-01"},
            "2023-06-01",
        ),
        ({"resourceType": "Condition", "onsetPeriod": {"end": "2023-04-01"}}, "2023-04-01"),
        (
            {"resourceType": "Procedure", "performedPeriod": {"start": "2022-01-01T10:00:00Z"}},
            "2022-01-01T10:00:00Z",
        ),
        ({"resourceType": "MedicationRequest", "authoredOn": "2024-01-05"}, "2024-01-05"),
        (
            {
                "resourceType": "ServiceRequest",
                "occurrenceDateTime": "2024-09-01",
                "authoredOn": "2024-01-05",
            },
            "2024-01-05",
        ),
        (
            {
                "resourceType": "Immunization",
                "occurrenceDateTime": "2021-10-01",
                "recorded": "2021-10-02",
            },
            "2021-10-01",
        ),
        (
            {"resourceType": "Encounter", "period": {"start": "2024-02-02T09:00:00+01:00"}},
            "2024-02-02T09:00:00+01:00",
        ),
        (
            {"resourceType": "Observation", "effectiveInstant": "2024-01-01T00:00:00Z"},
            "2024-01-01T00:00:00Z",
        ),
        (
            {
                "resourceType": "Observation",
                "effectiveDateTime": "garbage",
                "issued": "2024-01-03T00:00:00Z",
            },
            "2024-01-03T00:00:00Z",
        ),
        ({"resourceType": "MedicationStatement", "dateAsserted": "2024-01-04"}, "2024-01-04"),
    ],
)
def test_clinical_date(resource: dict[str, Any], expected: str) -> None:
    assert run("%r.clinicalDate()", r=resource) == [expected]
    found = clinical_date(resource)
    assert found is not None and found.text == expected


def test_clinical_date_empty_and_errors() -> None:
    assert run("%r.clinicalDate()", r={"resourceType": "Patient"}) == []
    assert run("%r.clinicalDate()", r=[]) == []
    with pytest.raises(Exception, match="single item"):
        run("%r.clinicalDate()", r=[observation(), observation()])


def test_clinical_date_feeds_days_between() -> None:
    condition = {"resourceType": "Condition", "onsetDateTime": "2024-01-01T22:00:00-03:00"}
    assert run("%r.clinicalDate().daysBetween(%today)", r=condition, today="2024-01-02") == [1]


def test_parse_date_precision() -> None:
    parsed = parse_date("2024-01-02T03:04:05.678+02:00")
    assert parsed is not None and parsed.day == date(2024, 1, 2)
    assert parsed.instant.isoformat() == "2024-01-02T01:04:05.678000+00:00"
    year = parse_date("2024")
    assert (
        year is not None
        and year.day is None
        and year.instant.isoformat() == "2024-01-01T00:00:00+00:00"
    )
    assert parse_date("2024-13-01") is None
    assert parse_date("2024-01-01T10:00:00+25:00") is None


# Every engine function is callable as registered


@pytest.mark.parametrize("name", sorted(SIGNATURES))
def test_every_function_is_documented(name: str) -> None:
    import service.engine.fhirpath.functions as module

    assert f"`{name}(" in (module.__doc__ or "")


def test_functions_are_plain_table_entries() -> None:
    for name, entry in FUNCTIONS.items():
        assert set(entry) == {"fn", "arity", "nullable_input", "nullable"}, name
        assert entry["arity"] == SIGNATURES[name]


# Primitive extensions: fhirpathpy passes `_element` as an item of its own


def test_primitive_extensions_are_not_values() -> None:
    absent = {
        "extension": [
            {
                "url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason",
                "valueCode": "unknown",
            }
        ]
    }
    both = observation(effectiveDateTime="2024-01-01", _effectiveDateTime=absent)
    only = observation(_effectiveDateTime=absent)
    assert run("Observation.effective.daysBetween(@2024-01-11)", both) == [10]
    assert run("Observation.effective.daysBetween(@2024-01-11)", only) == []
    assert run("@2024-01-11.daysBetween(Observation.effective)", both) == [-10]
    status = {"resourceType": "Observation", "_status": {"id": "s"}}
    assert run(f"Observation.status.inValueSet('{VS_LAB}')", status) == []
    assert run(f"Observation.status.inValueSet('{VS_LAB}')", observation(_status={"id": "s"})) == [
        False
    ]
    coded = {"resourceType": "Observation", "status": "4548-4", "_status": {"id": "s"}}
    assert run(f"Observation.status.inValueSet('{VS_LAB}')", coded) == [True]
    assert run("%q.convertibleTo('%')", q=[absent]) == []
    assert run("%q.quantityIn('%')", q=[absent]) == []
    assert run("%q.clinicalDate()", q=[absent]) == []
