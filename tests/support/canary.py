"""The log canary: no log record may hold a token, a JWT or a patient id that a test used.

Every request a test sends through httpx (to the app in-process, to a live server, and the
service's own requests to FHIR servers) is read for its secrets: the bearer credential of its
`Authorization` header, and in a JSON body `fhirAuthorization.access_token` and
`context.patientId`. After the test, every log record that production would write (the levels of
`service.ops.logging.logging_config`) is searched for them, and for anything shaped like a JWT.

Servers run as subprocesses log to their own pipes; the tests that start them check those.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable
from typing import Any

import httpx

from service.ops.logging import logging_config

# Shorter values (`p1`, `0`) would match unrelated text; the tests' ids and tokens are longer.
MIN_SECRET_CHARS = 8
JWT_SHAPE = re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.")
_PRODUCTION = logging_config("INFO")
_LEVELS = {
    name: logging.getLevelName(config["level"])
    for name, config in _PRODUCTION["loggers"].items()
    if "level" in config
}
_ROOT_LEVEL = logging.getLevelName(_PRODUCTION["root"]["level"])


class Canary:
    def __init__(self) -> None:
        self.secrets: set[str] = set()

    def read(self, request: httpx.Request) -> None:
        scheme, _, credential = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer":
            self._add(credential.strip())
        try:
            body: Any = json.loads(request.content) if request.content else None
        except (ValueError, httpx.RequestNotRead):
            return
        if isinstance(body, dict):
            authorization = body.get("fhirAuthorization")
            context = body.get("context")
            if isinstance(authorization, dict):
                self._add(authorization.get("access_token"))
            if isinstance(context, dict):
                self._add(context.get("patientId"))

    def _add(self, value: object) -> None:
        if isinstance(value, str) and len(value) >= MIN_SECRET_CHARS:
            self.secrets.add(value)

    def leaks(self, records: Iterable[logging.LogRecord]) -> list[str]:
        """`logger: message` of every production-level record that holds a secret."""
        found = []
        for record in records:
            if record.levelno < _production_level(record.name):
                continue
            text = record_text(record)
            if JWT_SHAPE.search(text) or any(secret in text for secret in self.secrets):
                found.append(f"{record.name}: {record.getMessage()[:200]}")
        return found


def _production_level(logger: str) -> int:
    """The level production logs `logger` at: its own, or its closest configured parent's."""
    name = logger
    while name:
        if name in _LEVELS:
            return int(_LEVELS[name])
        name = name.rpartition(".")[0]
    return int(_ROOT_LEVEL)


def record_text(record: logging.LogRecord) -> str:
    """Everything a log record carries: the message, its arguments, the extra fields and the
    formatted exception."""
    fields = [record.getMessage(), *(repr(value) for value in vars(record).values())]
    if record.exc_info:
        fields.append(logging.Formatter().formatException(record.exc_info))
    return "\n".join(fields)
