"""CDS Hooks 2.0 endpoints: discovery, service calls, feedback; and the feedback analytics."""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from pydantic import ValidationError

from service.auth.dependency import authenticated, authenticated_admin
from service.auth.identity import ClientIdentity
from service.cdshooks.body import read_json
from service.cdshooks.call import answer
from service.cdshooks.catalogue import CdsService
from service.cdshooks.models import FeedbackItem, FeedbackRequest
from service.errors import ServiceError, validation_issues
from service.feedback.records import FeedbackEntry, TopicSummary
from service.ops.timing import timer_of
from service.runtime import Runtime, get_runtime

router = APIRouter(dependencies=[Depends(authenticated)])
admin = APIRouter(dependencies=[Depends(authenticated_admin)])

RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def _service(runtime: Runtime, service_id: str, request: Request) -> CdsService:
    service = runtime.catalogue.services.get(service_id)
    if service is None:
        raise ServiceError(404, f"no CDS service '{service_id}'; GET /cds-services lists them")
    request.state.log = {"service": service.id}
    return service


@router.get("/cds-services")
async def discovery(runtime: RuntimeDep) -> Response:
    return _json(runtime.catalogue.discovery())


@router.post("/cds-services/{service_id}")
async def call_service(
    service_id: str,
    request: Request,
    runtime: RuntimeDep,
    client: Annotated[ClientIdentity | None, Depends(authenticated)],
) -> Response:
    service = _service(runtime, service_id, request)
    body = await read_json(request, runtime.settings.max_body_bytes)
    timer = timer_of(request)
    answered = await answer(service, body, runtime, client, timer, request.state.log)
    with timer.phase("encode"):
        response = _json(answered.body(with_trace=runtime.settings.return_trace))
    if runtime.settings.server_timing:
        response.headers["Server-Timing"] = timer.header()
    return response


@router.post("/cds-services/{service_id}/feedback")
async def feedback(service_id: str, request: Request, runtime: RuntimeDep) -> Response:
    service = _service(runtime, service_id, request)
    body = await read_json(request, runtime.settings.max_body_bytes)
    try:
        parsed = FeedbackRequest.model_validate(body)
    except ValidationError as error:
        raise ServiceError(400, "invalid feedback", validation_issues(error)) from None
    entries = [_entry(service.id, item) for item in parsed.feedback]
    stored = await runtime.store.save_feedback(entries)
    request.state.log["feedback"] = len(entries)
    return _json({"received": len(entries), "stored": stored})


def _entry(service_id: str, item: FeedbackItem) -> FeedbackEntry:
    reason = item.overrideReason.reason if item.overrideReason else None
    return FeedbackEntry(
        service_id=service_id,
        card_uuid=str(item.card),
        outcome=item.outcome,
        outcome_timestamp=item.outcomeTimestamp,
        accepted_suggestions=tuple(s.id for s in item.acceptedSuggestions or ()),
        override_reason_system=reason.system if reason else None,
        override_reason_code=reason.code if reason else None,
        override_reason_display=reason.display if reason else None,
        user_comment=item.overrideReason.userComment if item.overrideReason else None,
    )


@admin.get("/analytics/feedback")
async def analytics(runtime: RuntimeDep, service: str | None = None) -> Response:
    # This worker's cards are counted up to this call; other workers' within their interval.
    await runtime.issued.flush()
    summaries = await runtime.store.summary(service)
    return _json({"topics": [_summary_json(s) for s in summaries]})


def _summary_json(summary: TopicSummary) -> dict[str, Any]:
    return {
        "topic": summary.topic_code,
        "issued": summary.issued,
        "accepted": summary.accepted,
        "overridden": summary.overridden,
        # A display is optional in feedback; when no client sent one it is left out, not null.
        "overrideReasons": [
            {"reason": key, **{k: v for k, v in value.items() if v is not None}}
            for key, value in sorted(summary.override_reasons.items())
        ],
    }
