"""Prefetch templates rendered into FHIR queries for one hook call.

CDS Hooks 2.0 tokens: `{{context.patientId}}`, `{{context.encounterId}}`, `{{context.userId}}`,
`{{userPractitionerId}}`, `{{userPractitionerRoleId}}`, `{{userPatientId}}`,
`{{userRelatedPersonId}}`. As an extension, the CDS Hooks 3.0 date tokens `{{today()}}` and
`{{today() - N days|weeks|months|years}}` are rendered too (the sandbox does the same).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import date, timedelta
from typing import Any
from urllib.parse import quote

from service.dates import add_months

_TOKEN = re.compile(r"\{\{\s*(.*?)\s*\}\}")
_TODAY = re.compile(r"^today\(\)(?:\s*([+-])\s*(\d+)\s*(day|week|month|year)s?)?$")
# The one table of CDS Hooks 2.0 prefetch tokens: the knowledge check (cdshooks/catalogue.py)
# accepts exactly these, and rendering reads the user tokens' resource types from it.
_USER_TOKENS = {
    "userPractitionerId": "Practitioner",
    "userPractitionerRoleId": "PractitionerRole",
    "userPatientId": "Patient",
    "userRelatedPersonId": "RelatedPerson",
}
PREFETCH_TOKENS = frozenset(
    {"context.patientId", "context.encounterId", "context.userId", *_USER_TOKENS}
)


class Unrenderable(ValueError):
    """The template needs a value this call does not have (no encounter, another user type)."""


def render(template: str, context: Mapping[str, Any], today: date) -> str:
    def value(match: re.Match[str]) -> str:
        return quote(_token_value(match.group(1), context, today), safe="/|,:-.")

    return _TOKEN.sub(value, template)


def _token_value(token: str, context: Mapping[str, Any], today: date) -> str:
    if token.startswith("context."):
        field = context.get(token.removeprefix("context."))
        if not isinstance(field, str) or field.strip(".") == "":
            # `.` and `..` would be dot segments: `Patient/.` reads as a search of everyone.
            raise Unrenderable(f"the call has no usable {token}")
        return field
    if token in _USER_TOKENS:
        user = str(context.get("userId", ""))
        kind, _, user_id = user.partition("/")
        if kind != _USER_TOKENS[token] or user_id.strip(".") == "":
            raise Unrenderable(f"the user is not a {_USER_TOKENS[token]}")
        return user_id
    match = _TODAY.match(token)
    if match:
        return _shifted(today, match.group(1), match.group(2), match.group(3)).isoformat()
    raise Unrenderable(f"unknown token {token}")


def _shifted(today: date, sign: str | None, amount: str | None, unit: str | None) -> date:
    if not sign or amount is None or unit is None:
        return today
    count = int(amount) * (-1 if sign == "-" else 1)
    if unit in ("day", "week"):
        return today + timedelta(days=count * (7 if unit == "week" else 1))
    return add_months(today, count * (12 if unit == "year" else 1))
