"""Every non-2xx answer is a FHIR OperationOutcome that says what was wrong, never a stack trace."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("rpl_cds.errors")

# OperationOutcome.issue.code per HTTP status (FHIR issue-type value set).
_ISSUE_CODE = {
    400: "invalid",
    401: "login",
    403: "forbidden",
    404: "not-found",
    405: "not-supported",
    406: "not-supported",
    412: "incomplete",
    413: "too-costly",
    415: "not-supported",
    422: "invalid",
    429: "throttled",
    503: "transient",
}


@dataclass(frozen=True)
class Issue:
    diagnostics: str
    expression: str | None = None
    severity: str = "error"


@dataclass
class ServiceError(Exception):
    """Raised anywhere on the request path to answer with `status` and an OperationOutcome."""

    status: int
    diagnostics: str
    issues: Sequence[Issue] = field(default_factory=tuple)
    headers: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.status}: {self.diagnostics}"


def operation_outcome(
    status: int, diagnostics: str, issues: Iterable[Issue] = ()
) -> dict[str, Any]:
    code = _ISSUE_CODE.get(status, "exception" if status >= 500 else "processing")
    # The summary first, then one issue per specific problem with where it is.
    rendered: list[dict[str, Any]] = [
        {"severity": "error", "code": code, "diagnostics": diagnostics}
    ]
    for issue in issues:
        item: dict[str, Any] = {
            "severity": issue.severity,
            "code": code,
            "diagnostics": issue.diagnostics,
        }
        if issue.expression:
            item["expression"] = [issue.expression]
        rendered.append(item)
    return {"resourceType": "OperationOutcome", "issue": rendered}


def outcome_response(
    status: int,
    diagnostics: str,
    issues: Iterable[Issue] = (),
    headers: dict[str, str] | None = None,
) -> Response:
    body = orjson.dumps(operation_outcome(status, diagnostics, issues))
    return Response(body, status_code=status, media_type="application/json", headers=headers)


def validation_issues(
    error: ValidationError | RequestValidationError, root: str = ""
) -> list[Issue]:
    """Pydantic errors as issues: where (a FHIRPath-like location) and what, never the input value
    (it may carry patient data that must not be echoed into logs or proxies)."""
    issues = []
    for detail in error.errors():
        location = ".".join(str(part) for part in detail["loc"] if part not in ("body",))
        expression = ".".join(part for part in (root, location) if part) or None
        issues.append(
            Issue(diagnostics=f"{expression or 'request'}: {detail['msg']}", expression=expression)
        )
    return issues


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def _service_error(_: Request, exc: ServiceError) -> Response:
        return outcome_response(exc.status, exc.diagnostics, exc.issues, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> Response:
        return outcome_response(400, "invalid request", validation_issues(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> Response:
        diagnostics = exc.detail if isinstance(exc.detail, str) else "request failed"
        if exc.status_code == 404 and diagnostics == "Not Found":
            diagnostics = "no such endpoint"
        headers = dict(exc.headers) if exc.headers else None
        return outcome_response(exc.status_code, diagnostics, headers=headers)


class UnexpectedErrors:
    """The answer to an exception nothing else handled: 500 with an OperationOutcome, logged
    once, and the connection kept. (Starlette's outermost middleware answers too, but then
    re-raises so that the server logs the traceback a second time and, as uvicorn does, closes
    the keep-alive connection, failing the client's next pooled request as well.)"""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watched)
        except Exception as exc:
            # The traceback names code, not data; the request body is never logged.
            log.error(
                "unhandled error",
                exc_info=exc,
                extra={"path": scope.get("path"), "method": scope.get("method")},
            )
            if started:
                raise  # half a response is out: only closing the connection can end it
            response = outcome_response(500, "internal error; the service log has the details")
            await response(scope, receive, send)
