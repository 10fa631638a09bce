"""One CDS hook call, start to end, as one pipeline: the request, its prefetch resolved into the
patient record, `$apply` of the service's plan over it, the cards (with their topics), and the
issued-card records. The route around it (routes.py) only reads the body and writes the response.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from service.auth.identity import ClientIdentity
from service.cdshooks.cards import Card, encode_cards
from service.cdshooks.catalogue import CdsService
from service.cdshooks.models import (
    CONTEXT_MODELS,
    HookCall,
    HookContext,
    HookRequest,
    prefetch_problems,
)
from service.cdshooks.prefetch import assemble_record
from service.cdshooks.subject import subject_of
from service.cdshooks.suppression import Screened
from service.engine import TraceEntry, apply_plan
from service.errors import Issue, ServiceError, validation_issues
from service.feedback.records import IssuedCard
from service.ops.timing import PhaseTimer
from service.runtime import Runtime


@dataclass(frozen=True)
class Answer:
    cards: list[Card]
    trace: list[TraceEntry]

    def body(self, with_trace: bool) -> dict[str, Any]:
        body: dict[str, Any] = {"cards": [card.body for card in self.cards]}
        if with_trace:
            body["extension"] = {"org.rpl-cds.trace": [entry.__dict__ for entry in self.trace]}
        return body


async def answer(
    service: CdsService,
    body: Any,
    runtime: Runtime,
    client: ClientIdentity | None,
    timer: PhaseTimer,
    log: dict[str, Any],
) -> Answer:
    """`log` collects the call's log fields as they become known (a failure keeps the ones
    before it)."""
    call = parse_call(service, body)
    log["hookInstance"] = call.hook_instance
    today = datetime.now(UTC).date()
    assembled = await assemble_record(
        service.prefetch, call, runtime.fetcher, runtime.settings, today, timer, client
    )
    if assembled.missing_data:
        log["missingData"] = assembled.missing_data
    subject = subject_of(
        service.hook, call.context, assembled.record, today, assembled.missing_data
    )
    with timer.phase("apply"):
        result = apply_plan(service.plan, subject)
    with timer.phase("encode"):
        cards = encode_cards(
            result.request_group,
            hook_instance=call.hook_instance,
            service_id=service.id,
            default_source=service.title or service.id,
        )
    # Cards the clinician already dealt with for this patient are left out (suppression.py).
    screened = await runtime.suppression.screen(
        service,
        cards,
        patient_id=call.context.patientId,
        fhir_server=call.fhir_server,
        client=client,
        record=assembled.record,
        missing_data=assembled.missing_data,
        timer=timer,
    )
    log["cards"] = len(screened.cards)
    record_issued(runtime, issued_records(screened, service.id, call.hook_instance))
    for topic in screened.suppressed:
        runtime.metrics.cards_suppressed.labels(service.id, topic).inc()
    return Answer(screened.cards, result.trace)


def parse_call(service: CdsService, body: Any) -> HookCall:
    try:
        request = HookRequest.model_validate(body)
    except ValidationError as error:
        raise ServiceError(400, "invalid CDS Hooks request", validation_issues(error)) from None
    if request.hook != service.hook:
        raise ServiceError(
            400,
            f"service '{service.id}' answers the '{service.hook}' hook, not '{request.hook}'",
            [Issue(f"hook must be '{service.hook}'", expression="hook")],
        )
    shape = prefetch_problems(request.prefetch)
    if shape:
        raise ServiceError(400, "invalid prefetch", shape)
    model = CONTEXT_MODELS.get(service.hook, HookContext)
    try:
        context = model.model_validate(request.context)
    except ValidationError as error:
        raise ServiceError(
            400, f"invalid {service.hook} context", validation_issues(error, root="context")
        ) from None
    return HookCall.of(request, context)


def issued_records(screened: Screened, service_id: str, hook_instance: str) -> list[IssuedCard]:
    """The cards shown, under the patient key and facts digest when the service suppresses."""
    issued_at = datetime.now(UTC)
    memory = screened.memory
    return [
        IssuedCard(
            uuid=card.body["uuid"],
            service_id=service_id,
            topic_code=card.topic_code,
            topic_system=card.topic_system,
            hook_instance=hook_instance,
            issued_at=issued_at,
            patient_key=memory.patient_key if memory else None,
            facts=memory.facts if memory else None,
        )
        for card in screened.cards
    ]


def record_issued(runtime: Runtime, issued: list[IssuedCard]) -> None:
    for card in issued:
        runtime.metrics.cards.labels(card.service_id, card.topic_code).inc()
    # Written in batches, after the response: the clinician does not wait for the bookkeeping.
    runtime.issued.add(issued)
