"""Prefetch templates rendered into FHIR queries: the CDS Hooks 2.0 tokens, the 3.0 `today()`
date tokens, URL quoting of the values, and Unrenderable for what a call cannot fill in."""

from __future__ import annotations

from datetime import date
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from service.fhir.templates import Unrenderable, render

TODAY = date(2025, 3, 31)
CONTEXT: dict[str, Any] = {
    "userId": "Practitioner/pr-1",
    "patientId": "pat-1",
    "encounterId": "enc-1",
}


def rendered(template: str, context: dict[str, Any] | None = None, today: date = TODAY) -> str:
    return render(template, CONTEXT if context is None else context, today)


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("Patient/{{context.patientId}}", "Patient/pat-1"),
        ("Encounter/{{context.encounterId}}", "Encounter/enc-1"),
        ("{{context.userId}}", "Practitioner/pr-1"),
        ("Practitioner/{{userPractitionerId}}", "Practitioner/pr-1"),
        (
            "Condition?patient={{context.patientId}}&encounter={{context.encounterId}}",
            "Condition?patient=pat-1&encounter=enc-1",
        ),
        ("Patient/{{ context.patientId }}", "Patient/pat-1"),  # spaces inside the braces
        ("Patient?_id=a,b", "Patient?_id=a,b"),  # no token: unchanged
    ],
)
def test_cds_hooks_2_tokens(template: str, expected: str) -> None:
    assert rendered(template) == expected


@pytest.mark.parametrize(
    ("user", "token", "expected"),
    [
        ("Practitioner/x", "userPractitionerId", "x"),
        ("PractitionerRole/r-9", "userPractitionerRoleId", "r-9"),
        ("Patient/p-2", "userPatientId", "p-2"),
        ("RelatedPerson/rp-3", "userRelatedPersonId", "rp-3"),
    ],
)
def test_user_tokens_take_the_id_of_the_matching_user_type(
    user: str, token: str, expected: str
) -> None:
    assert rendered(f"X/{{{{{token}}}}}", {**CONTEXT, "userId": user}) == f"X/{expected}"


@pytest.mark.parametrize(
    ("user", "token"),
    [
        ("PractitionerRole/r-9", "userPractitionerId"),
        ("Practitioner/x", "userPractitionerRoleId"),
        ("Practitioner/x", "userPatientId"),
        ("Patient/p-2", "userRelatedPersonId"),
        ("Practitioner/", "userPractitionerId"),  # a type without an id
        ("x", "userPractitionerId"),
    ],
)
def test_a_user_token_for_another_user_type_is_unrenderable(user: str, token: str) -> None:
    with pytest.raises(Unrenderable):
        rendered(f"X/{{{{{token}}}}}", {**CONTEXT, "userId": user})


def test_a_user_token_without_a_user_is_unrenderable() -> None:
    with pytest.raises(Unrenderable):
        rendered("Practitioner/{{userPractitionerId}}", {"patientId": "pat-1"})


@pytest.mark.parametrize("value", [None, "", 42, ["enc-1"]])
def test_a_missing_or_unusable_context_field_is_unrenderable(value: Any) -> None:
    context = {k: v for k, v in CONTEXT.items() if k != "encounterId"}
    if value is not None:
        context["encounterId"] = value
    with pytest.raises(Unrenderable, match="encounterId"):
        rendered("Encounter/{{context.encounterId}}", context)


@pytest.mark.parametrize(
    ("token", "today", "expected"),
    [
        ("today()", date(2025, 3, 31), "2025-03-31"),
        ("today() - 90 days", date(2025, 3, 31), "2024-12-31"),
        ("today() - 1 day", date(2025, 3, 1), "2025-02-28"),
        ("today() + 1 day", date(2024, 2, 28), "2024-02-29"),
        ("today() - 2 weeks", date(2025, 3, 31), "2025-03-17"),
        ("today() - 1 week", date(2025, 1, 3), "2024-12-27"),
        ("today() - 1 month", date(2025, 3, 31), "2025-02-28"),  # clamped
        ("today() - 1 month", date(2024, 3, 31), "2024-02-29"),  # clamped, leap year
        ("today() - 13 months", date(2025, 1, 15), "2023-12-15"),
        ("today() + 1 month", date(2025, 1, 31), "2025-02-28"),
        ("today() - 1 year", date(2024, 2, 29), "2023-02-28"),  # clamped
        ("today() - 4 years", date(2024, 2, 29), "2020-02-29"),
        ("today()-1year", date(2024, 2, 29), "2023-02-28"),  # spacing is free
        ("today() - 2 months", date(2025, 5, 31), "2025-03-31"),
    ],
)
def test_today_tokens(token: str, today: date, expected: str) -> None:
    assert rendered(f"Observation?date=ge{{{{{token}}}}}", today=today) == (
        f"Observation?date=ge{expected}"
    )


@pytest.mark.parametrize(
    "token",
    [
        "today",
        "today() - days",
        "today() - 1 fortnight",
        "today() * 2 days",
        "today() - -1 days",
        "now()",
        "context.patientId.trim()",
        "patientId",
        "userId",
        "",
    ],
)
def test_an_unknown_token_is_unrenderable(token: str) -> None:
    with pytest.raises(Unrenderable):
        rendered(f"Observation?x={{{{{token}}}}}")


@pytest.mark.parametrize(
    ("patient_id", "quoted"),
    [
        ("a b", "a%20b"),
        ("a&b", "a%26b"),
        ("a&code=evil", "a%26code%3Devil"),
        ("a#b", "a%23b"),
        ("a?b", "a%3Fb"),
        ("a+b", "a%2Bb"),
        ("a%20b", "a%2520b"),
        ("é", "%C3%A9"),
    ],
)
def test_values_are_url_quoted(patient_id: str, quoted: str) -> None:
    template = "Condition?patient={{context.patientId}}&code=http://snomed.info/sct|17369002"
    query = rendered(template, {**CONTEXT, "patientId": patient_id})
    assert query == f"Condition?patient={quoted}&code=http://snomed.info/sct|17369002"
    # A value cannot add a parameter, and reads back as it was.
    parameters = parse_qs(urlsplit(query).query)
    assert set(parameters) == {"patient", "code"}
    assert parameters["patient"] == [patient_id]


def test_a_value_cannot_leave_the_path() -> None:
    query = rendered("Patient/{{context.patientId}}", {**CONTEXT, "patientId": "x?_id=y#z"})
    assert query == "Patient/x%3F_id%3Dy%23z"
    parts = urlsplit(query)
    assert (parts.query, parts.fragment) == ("", "")


def test_every_token_in_a_template_is_rendered() -> None:
    template = (
        "Observation?patient={{context.patientId}}&performer=Practitioner/{{userPractitionerId}}"
        "&date=ge{{today() - 1 year}}&date=le{{today()}}"
    )
    assert rendered(template, today=date(2024, 2, 29)) == (
        "Observation?patient=pat-1&performer=Practitioner/pr-1&date=ge2023-02-28&date=le2024-02-29"
    )


def test_one_unrenderable_token_makes_the_template_unrenderable() -> None:
    context = {k: v for k, v in CONTEXT.items() if k != "encounterId"}
    with pytest.raises(Unrenderable):
        rendered(
            "Condition?patient={{context.patientId}}&encounter={{context.encounterId}}", context
        )


@pytest.mark.parametrize("patient_id", [".", ".."])
def test_a_dot_id_is_not_rendered(patient_id: str) -> None:
    """`.` and `..` match FHIR's id pattern, but resolving them against the FHIR base removes them
    as dot segments (Patient/. -> Patient/, a search of every patient): never rendered."""
    with pytest.raises(Unrenderable):
        rendered("Patient/{{context.patientId}}", {**CONTEXT, "patientId": patient_id})
