"""FHIR operations for integration engineers: PlanDefinition/$apply over data they supply."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from pydantic import (
    BaseModel,
    ConfigDict,
    StringConstraints,
    ValidationError,
    model_validator,
)

from service.auth.dependency import authenticated
from service.cdshooks.body import read_json
from service.cdshooks.models import HookContext, resource_problems
from service.cdshooks.subject import subject_of
from service.engine import apply_plan
from service.errors import ServiceError, validation_issues
from service.fhir.record import PatientRecord
from service.runtime import Runtime, get_runtime

router = APIRouter(dependencies=[Depends(authenticated)])

_PATIENT = re.compile(r"Patient/[A-Za-z0-9\-.]{1,64}")
TRACE_EXTENSION = "https://fhir.rpl-cds.org/StructureDefinition/apply-trace"


class _Reference(BaseModel):
    reference: Annotated[str, StringConstraints(min_length=1)]


class _Parameter(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Literal["subject", "hook", "encounter", "practitioner", "data", "draftOrders"]
    valueString: Annotated[str, StringConstraints(min_length=1)] | None = None
    valueReference: _Reference | None = None
    resource: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _value_fits_the_name(self) -> _Parameter:
        problems = resource_problems(self.resource, "resource") if self.resource else []
        if problems:
            raise ValueError(problems[0].diagnostics)
        if self.name in ("data", "draftOrders"):
            if (self.resource or {}).get("resourceType") != "Bundle":
                raise ValueError(f"{self.name} must be a Bundle resource")
        elif self.valueString is None and self.valueReference is None:
            raise ValueError(f"{self.name} needs a valueString")
        return self

    @property
    def text(self) -> str:
        return self.valueString or (self.valueReference.reference if self.valueReference else "")


class _Parameters(BaseModel):
    """The input of $apply: FHIR Parameters with the parameters this operation reads."""

    model_config = ConfigDict(extra="ignore")  # id, meta: allowed and not needed

    resourceType: Literal["Parameters"]
    parameter: list[_Parameter] = []

    @model_validator(mode="after")
    def _one_patient_subject(self) -> _Parameters:
        subjects = [p for p in self.parameter if p.name == "subject"]
        given = [
            value
            for p in subjects
            for value in (p.valueString, p.valueReference.reference if p.valueReference else None)
            if value is not None
        ]
        if len(subjects) != 1 or not all(_PATIENT.fullmatch(value) for value in given):
            raise ValueError("exactly one subject is required, as Patient/{id}")
        return self

    def string(self, name: str) -> str | None:
        return next((p.text for p in self.parameter if p.name == name), None)

    def bundle(self, name: str) -> dict[str, Any] | None:
        return next((p.resource for p in self.parameter if p.name == name), None)


def _parameters(body: Any) -> _Parameters:
    try:
        return _Parameters.model_validate(body)
    except ValidationError as error:
        raise ServiceError(400, "invalid $apply Parameters", validation_issues(error)) from None


def _entries(bundle: dict[str, Any] | None) -> list[dict[str, Any]]:
    if bundle is None:
        return []
    entries = bundle.get("entry")
    if not isinstance(entries, list):
        return []
    return [
        entry["resource"]
        for entry in entries
        if isinstance(entry, dict) and isinstance(entry.get("resource"), dict)
    ]


@router.post("/PlanDefinition/{plan_id}/$apply")
async def apply_operation(
    plan_id: str, request: Request, runtime: Annotated[Runtime, Depends(get_runtime)]
) -> Response:
    plan = runtime.catalogue.plan(plan_id)
    if plan is None:
        raise ServiceError(404, f"no PlanDefinition '{plan_id}'")
    request.state.log = {"plan": plan.id}
    parameters = _parameters(await read_json(request, runtime.settings.max_body_bytes))
    record = PatientRecord()
    for resource in _entries(parameters.bundle("data")):
        record.add(resource)
    patient_id = (parameters.string("subject") or "").removeprefix("Patient/")
    context: dict[str, Any] = {
        "patientId": patient_id,
        "userId": parameters.string("practitioner") or "Practitioner/unknown",
    }
    encounter = (parameters.string("encounter") or "").removeprefix("Encounter/") or None
    if encounter:
        context["encounterId"] = encounter
    draft_orders = parameters.bundle("draftOrders")
    if draft_orders is not None:
        context["draftOrders"] = draft_orders
    # Not validated as a hook's context: an $apply may name no subject, and its fields come
    # from Parameters the operation has checked already.
    hook_context = HookContext.model_construct(**context)
    today = datetime.now(UTC).date()
    result = apply_plan(plan, subject_of(parameters.string("hook"), hook_context, record, today))
    group = result.request_group
    if runtime.settings.return_trace:
        trace = json.dumps([entry.__dict__ for entry in result.trace])
        group["extension"] = [{"url": TRACE_EXTENSION, "valueString": trace}]
    return Response(orjson.dumps(group), media_type="application/fhir+json")
