"""CDS Hooks 2.0 request and feedback models: strict where the specification is, lenient where real
EHRs add fields the specification allows (extensions, newer context fields)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import (
    AfterValidator,
    AnyHttpUrl,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

NonEmpty = Annotated[str, StringConstraints(min_length=1, strip_whitespace=False)]
# `userId` names a FHIR resource: Practitioner, PractitionerRole, Patient or RelatedPerson.
UserReference = Annotated[
    str,
    StringConstraints(pattern=r"^(Practitioner|PractitionerRole|Patient|RelatedPerson)/[^/\s]+$"),
]


def _not_dot_segment(value: str) -> str:
    # `.` and `..` match FHIR's id pattern but are path segments in a query URL
    # (`Patient/.` reads as a search of every patient).
    if value.strip(".") == "":
        raise ValueError("an id cannot be only dots")
    return value


FhirId = Annotated[
    str, StringConstraints(pattern=r"^[A-Za-z0-9\-.]{1,64}$"), AfterValidator(_not_dot_segment)
]


class FhirAuthorization(BaseModel):
    model_config = ConfigDict(extra="allow")

    access_token: NonEmpty
    token_type: Literal["Bearer", "bearer"]
    expires_in: Annotated[int, Field(ge=0)]
    scope: NonEmpty
    subject: NonEmpty
    patient: FhirId | None = None


class HookContext(BaseModel):
    """Context common to patient-view, order-select and order-sign. Extra fields are kept: later
    hook versions add some, and the specification lets clients extend the context."""

    model_config = ConfigDict(extra="allow")

    userId: UserReference
    patientId: FhirId
    encounterId: FhirId | None = None


def _check_bundle(value: dict[str, Any]) -> dict[str, Any]:
    if value.get("resourceType") != "Bundle":
        raise ValueError("must be a FHIR Bundle (resourceType 'Bundle')")
    entries = value.get("entry", [])
    if not isinstance(entries, list):
        raise ValueError("Bundle.entry must be an array")
    for index, entry in enumerate(entries):
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
            raise ValueError(f"Bundle.entry[{index}].resource must be a FHIR resource")
    return value


def draft_order_references(bundle: dict[str, Any]) -> set[str]:
    refs = set()
    for entry in bundle.get("entry", []):
        resource = entry["resource"]
        if "id" in resource:
            refs.add(f"{resource['resourceType']}/{resource['id']}")
    return refs


class OrderSignContext(HookContext):
    draftOrders: dict[str, Any]

    _bundle = field_validator("draftOrders")(_check_bundle)


class OrderSelectContext(OrderSignContext):
    selections: Annotated[list[NonEmpty], Field(min_length=1)]

    @model_validator(mode="after")
    def _selections_are_draft_orders(self) -> OrderSelectContext:
        missing = set(self.selections) - draft_order_references(self.draftOrders)
        if missing:
            raise ValueError(f"selections not found in draftOrders: {sorted(missing)}")
        return self


CONTEXT_MODELS: dict[str, type[HookContext]] = {
    "patient-view": HookContext,
    "order-select": OrderSelectContext,
    "order-sign": OrderSignContext,
}


class HookRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    hook: NonEmpty
    hookInstance: UUID
    fhirServer: AnyHttpUrl | None = None
    fhirAuthorization: FhirAuthorization | None = None
    context: dict[str, Any]
    prefetch: dict[str, dict[str, Any] | None] | None = None
    extension: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _server_with_token(self) -> HookRequest:
        if self.fhirAuthorization is not None and self.fhirServer is None:
            raise ValueError("fhirServer is required when fhirAuthorization is present")
        return self


class Coding(BaseModel):
    model_config = ConfigDict(extra="forbid")

    system: NonEmpty
    code: NonEmpty
    display: NonEmpty | None = None


class OverrideReason(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: Coding | None = None
    userComment: NonEmpty | None = None


class AcceptedSuggestion(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: NonEmpty


class FeedbackItem(BaseModel):
    model_config = ConfigDict(extra="forbid")

    card: UUID
    outcome: Literal["accepted", "overridden"]
    acceptedSuggestions: list[AcceptedSuggestion] | None = None
    overrideReason: OverrideReason | None = None
    outcomeTimestamp: AwareDatetime
    extension: dict[str, Any] | None = None

    @field_validator("outcomeTimestamp")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        return value.astimezone(UTC)

    @model_validator(mode="after")
    def _outcome_fields(self) -> FeedbackItem:
        if self.outcome == "accepted" and not self.acceptedSuggestions:
            raise ValueError("acceptedSuggestions is required when the outcome is 'accepted'")
        if self.outcome == "overridden" and self.acceptedSuggestions:
            raise ValueError("acceptedSuggestions is only allowed when the outcome is 'accepted'")
        return self


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    feedback: Annotated[list[FeedbackItem], Field(min_length=1, max_length=1000)]
    extension: dict[str, Any] | None = None
