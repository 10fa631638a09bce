"""The engine's subject from a CDS context and a patient record: built here once, for the hook
call and for `PlanDefinition/$apply` alike, so both evaluate the same inputs the same way."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date

from service.cdshooks.models import HookContext
from service.engine import Subject
from service.fhir.record import PatientRecord


def subject_of(
    hook: str | None,
    context: HookContext,
    record: PatientRecord,
    today: date,
    missing_data: Sequence[str] = (),
) -> Subject:
    """`%context` is the context as the client sent it: the fields it set, extras included."""
    return Subject(
        hook=hook,
        patient_id=context.patientId,
        context=context.model_dump(exclude_unset=True),
        patient=record.patient,
        resources_by_type=record.by_type,
        today=today,
        missing_data=tuple(missing_data),
        encounter_id=context.encounterId,
    )
