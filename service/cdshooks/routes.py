"""CDS Hooks 2.0 endpoints: discovery, service calls, feedback; and the feedback analytics."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from pydantic import ValidationError

from service.auth.dependency import authenticated, authenticated_admin
from service.auth.identity import ClientIdentity
from service.cdshooks.body import read_json
from service.cdshooks.cards import encode_cards
from service.cdshooks.models import (
    CONTEXT_MODELS,
    FeedbackItem,
    FeedbackRequest,
    HookContext,
    HookRequest,
    prefetch_problems,
)
from service.cdshooks.prefetch import assemble_record
from service.engine.apply import Subject, apply_plan
from service.engine.catalogue import CdsService
from service.errors import Issue, ServiceError, validation_issues
from service.feedback.records import FeedbackEntry, IssuedCard, TopicSummary
from service.feedback.suppression import Memory
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


def _parse_call(service: CdsService, body: Any) -> tuple[HookRequest, HookContext]:
    try:
        call = HookRequest.model_validate(body)
    except ValidationError as error:
        raise ServiceError(400, "invalid CDS Hooks request", validation_issues(error)) from None
    if call.hook != service.hook:
        raise ServiceError(
            400,
            f"service '{service.id}' answers the '{service.hook}' hook, not '{call.hook}'",
            [Issue(f"hook must be '{service.hook}'", expression="hook")],
        )
    shape = prefetch_problems(call.prefetch)
    if shape:
        raise ServiceError(400, "invalid prefetch", shape)
    model = CONTEXT_MODELS.get(service.hook, HookContext)
    try:
        context = model.model_validate(call.context)
    except ValidationError as error:
        raise ServiceError(
            400, f"invalid {service.hook} context", validation_issues(error, root="context")
        ) from None
    return call, context


@router.post("/cds-services/{service_id}")
async def call_service(
    service_id: str,
    request: Request,
    runtime: RuntimeDep,
    client: Annotated[ClientIdentity | None, Depends(authenticated)],
) -> Response:
    service = _service(runtime, service_id, request)
    call, context = _parse_call(service, await read_json(request, runtime.settings.max_body_bytes))
    hook_instance = str(call.hookInstance)
    request.state.log["hookInstance"] = hook_instance

    today = datetime.now(UTC).date()
    timer = timer_of(request)
    assembled = await assemble_record(
        service.prefetch, call, runtime.fetcher, runtime.settings, today, timer, client
    )
    if assembled.missing_data:
        request.state.log["missingData"] = assembled.missing_data
    subject = Subject(
        hook=service.hook,
        patient_id=context.patientId,
        context=call.context,
        patient=assembled.record.patient,
        resources_by_type=assembled.record.by_type,
        guideline=runtime.settings.guideline,
        today=today,
        missing_data=tuple(assembled.missing_data),
        encounter_id=context.encounterId,
    )
    with timer.phase("apply"):
        result = apply_plan(service.plan, subject)
    with timer.phase("encode"):
        cards = encode_cards(
            result.request_group,
            hook_instance=hook_instance,
            service_id=service.id,
            default_source=service.title or service.id,
        )
    # Cards the clinician already dealt with for this patient are left out (feedback/suppression).
    screened = await runtime.suppression.screen(
        service,
        cards,
        patient_id=context.patientId,
        fhir_server=str(call.fhirServer) if call.fhirServer else None,
        client=client,
        record=assembled.record,
        missing_data=assembled.missing_data,
        timer=timer,
    )
    cards = screened.cards
    with timer.phase("encode"):
        body: dict[str, Any] = {"cards": cards}
        if runtime.settings.return_trace:
            trace = [entry.__dict__ for entry in result.trace]
            body["extension"] = {"org.rpl-cds.trace": trace}
        response = _json(body)
    request.state.log["cards"] = len(cards)
    issued = [_issued(card, service.id, hook_instance, screened.memory) for card in cards]
    for card in issued:
        runtime.metrics.cards.labels(service.id, card.topic_code).inc()
    for topic in screened.suppressed:
        runtime.metrics.cards_suppressed.labels(service.id, topic).inc()
    # Written in batches, after the response: the clinician does not wait for the bookkeeping.
    runtime.issued.add(issued)
    if runtime.settings.server_timing:
        response.headers["Server-Timing"] = timer.header()
    return response


def _issued(
    card: dict[str, Any], service_id: str, hook_instance: str, memory: Memory | None
) -> IssuedCard:
    topic = card["source"].get("topic", {})
    return IssuedCard(
        uuid=card["uuid"],
        service_id=service_id,
        topic_code=topic.get("code", "untagged"),
        topic_system=topic.get("system", ""),
        hook_instance=hook_instance,
        issued_at=datetime.now(UTC),
        patient_key=memory.patient_key if memory else None,
        facts=memory.facts if memory else None,
    )


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
