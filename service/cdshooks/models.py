"""CDS Hooks 2.0 request and feedback models: strict where the specification is, lenient where real
EHRs add fields the specification allows (extensions, newer context fields)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import (
    AfterValidator,
    AnyHttpUrl,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from service.errors import Issue

NonEmpty = Annotated[str, StringConstraints(min_length=1, strip_whitespace=False)]
# `userId` names a FHIR resource: Practitioner, PractitionerRole, Patient or RelatedPerson.
UserReference = Annotated[
    str,
    StringConstraints(
        pattern=r"^(Practitioner|PractitionerRole|Patient|RelatedPerson)/[A-Za-z0-9\-.]{1,64}$"
    ),
]


def _not_dot_segment(value: str) -> str:
    # `.` and `..` match FHIR's id pattern but are path segments in a query URL
    # (`Patient/.` reads as a search of every patient).
    if value.strip(".") == "":
        raise ValueError("an id cannot be only dots")
    return value


# CDS Hooks' reserved `extension`: an object, and (as every JSON value in CDS Hooks) not empty.
Extension = Annotated[dict[str, Any], Field(min_length=1)]
FhirId = Annotated[
    str, StringConstraints(pattern=r"^[A-Za-z0-9\-.]{1,64}$"), AfterValidator(_not_dot_segment)
]
# RFC 6750 section 2.1: a Bearer credential is a `b64token`. Anything else cannot be sent in an
# `Authorization` header (a non-ASCII character fails to encode; a space or CR/LF would split
# it), so it is refused here, where the error names the field and never echoes the value.
B64Token = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9\-._~+/]+=*$")]


def _json_integer(value: Any) -> Any:
    # JSON Schema's integer: a number without a fraction (1.0 is one), never a string or a bool,
    # which pydantic would otherwise convert.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("must be an integer")
    if isinstance(value, float) and not value.is_integer():
        raise ValueError("must be an integer")
    return int(value)


class CdsHooksModel(BaseModel):
    """CDS Hooks' JSON rule: a field is never `null`; an optional field without a value is left
    out. (`prefetch` values are the exception, and are not fields of a model.)"""

    @model_validator(mode="before")
    @classmethod
    def _no_nulls(cls, data: Any) -> Any:
        if isinstance(data, dict):
            nulls = [name for name in cls.model_fields if name in data and data[name] is None]
            if nulls:
                raise ValueError(f"{', '.join(nulls)}: null is not allowed; leave the field out")
        return data


class FhirAuthorization(CdsHooksModel):
    model_config = ConfigDict(extra="allow")

    access_token: B64Token
    token_type: Literal["Bearer", "bearer"]
    expires_in: Annotated[int, BeforeValidator(_json_integer), Field(ge=0)]
    scope: NonEmpty
    subject: NonEmpty
    patient: FhirId | None = None


class HookContext(CdsHooksModel):
    """Context common to patient-view, order-select and order-sign. Extra fields are kept: later
    hook versions add some, and the specification lets clients extend the context."""

    model_config = ConfigDict(extra="allow")

    userId: UserReference
    patientId: FhirId
    encounterId: FhirId | None = None


# At most this many shape problems are reported for one request: enough to fix a client, and
# a bounded answer to a body with a million bad entries.
MAX_SHAPE_ISSUES = 20


# Resource types whose shape resource_problems looks into (a nested Bundle is passed over).
_WALKED = frozenset({"Bundle", "OperationOutcome"})


def _plain_entry(entry: Any) -> bool:
    """A Bundle entry with nothing to report, as resource_problems would find: the common case,
    decided without naming the entry (a large Bundle holds thousands)."""
    if type(entry) is not dict or type(entry.get("search", {})) is not dict:
        return False
    resource = entry.get("resource")
    kind = resource.get("resourceType") if type(resource) is dict else None
    return type(kind) is str and bool(kind) and kind not in _WALKED


def resource_problems(value: Any, where: str) -> list[Issue]:
    """Where `value` is not shaped like the FHIR resource the service reads: an object with a
    `resourceType`; for a Bundle, `entry` an array of objects whose `resource` is such a resource
    (one level deep: the record is built from a Bundle's entries, never from nested Bundles); for
    an OperationOutcome, `issue` an array of objects. Prefetch is not model-validated on the
    request path (architecture rule 2); this is the structure the service itself walks."""
    kind = value.get("resourceType") if isinstance(value, dict) else None
    if not isinstance(kind, str) or not kind:
        return [Issue(f"{where} must be a FHIR resource (an object with a resourceType)", where)]
    if kind == "OperationOutcome":
        issues = value.get("issue", [])
        if not isinstance(issues, list) or not all(isinstance(i, dict) for i in issues):
            return [Issue(f"{where}.issue must be an array of objects", f"{where}.issue")]
    if kind != "Bundle":
        return []
    entries = value.get("entry", [])
    if not isinstance(entries, list):
        return [Issue(f"{where}.entry must be an array", f"{where}.entry")]
    problems: list[Issue] = []
    for index, entry in enumerate(entries):
        if _plain_entry(entry):
            continue
        at = f"{where}.entry[{index}]"
        if not isinstance(entry, dict):
            problems.append(Issue(f"{at} must be an object", at))
        elif not isinstance(entry.get("search", {}), dict):
            problems.append(Issue(f"{at}.search must be an object", f"{at}.search"))
        else:
            resource = entry.get("resource")
            if isinstance(resource, dict) and resource.get("resourceType") == "Bundle":
                continue  # not read, so not walked (and no recursion on deeply nested input)
            problems.extend(resource_problems(resource, f"{at}.resource"))
        if len(problems) >= MAX_SHAPE_ISSUES:
            break
    return problems[:MAX_SHAPE_ISSUES]


def prefetch_problems(prefetch: Mapping[str, Any] | None) -> list[Issue]:
    """Shape problems of every prefetch value (`null` is allowed: no data for that key)."""
    problems: list[Issue] = []
    for key, value in (prefetch or {}).items():
        if value is not None:
            problems.extend(resource_problems(value, f"prefetch.{key}"))
    return problems[:MAX_SHAPE_ISSUES]


def _check_bundle(value: dict[str, Any]) -> dict[str, Any]:
    if value.get("resourceType") != "Bundle":
        raise ValueError("must be a FHIR Bundle (resourceType 'Bundle')")
    problems = resource_problems(value, "Bundle")
    if problems:
        raise ValueError(problems[0].diagnostics)
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


class HookRequest(CdsHooksModel):
    model_config = ConfigDict(extra="forbid")

    hook: NonEmpty
    hookInstance: UUID
    fhirServer: AnyHttpUrl | None = None
    fhirAuthorization: FhirAuthorization | None = None
    context: dict[str, Any]
    prefetch: dict[str, dict[str, Any] | None] | None = None
    extension: Extension | None = None

    @model_validator(mode="after")
    def _server_with_token(self) -> HookRequest:
        if self.fhirAuthorization is not None and self.fhirServer is None:
            raise ValueError("fhirServer is required when fhirAuthorization is present")
        return self


@dataclass(frozen=True)
class HookCall:
    """A request that passed every check: its envelope, and its context in the hook's typed model.
    The raw context dict is left behind, so every later step reads the one validated context."""

    hook_instance: str
    fhir_server: str | None
    fhir_authorization: FhirAuthorization | None
    prefetch: dict[str, dict[str, Any] | None] | None
    context: HookContext

    @classmethod
    def of(cls, request: HookRequest, context: HookContext) -> HookCall:
        return cls(
            hook_instance=str(request.hookInstance),
            fhir_server=str(request.fhirServer) if request.fhirServer else None,
            fhir_authorization=request.fhirAuthorization,
            prefetch=request.prefetch,
            context=context,
        )

    def context_values(self) -> dict[str, Any]:
        """The context as the client sent it: the fields it set, extras included."""
        return self.context.model_dump(exclude_unset=True)


class Coding(CdsHooksModel):
    model_config = ConfigDict(extra="forbid")

    system: NonEmpty
    code: NonEmpty
    display: NonEmpty | None = None


class OverrideReason(CdsHooksModel):
    model_config = ConfigDict(extra="forbid")

    reason: Coding | None = None
    userComment: NonEmpty | None = None

    @model_validator(mode="after")
    def _says_something(self) -> OverrideReason:
        if self.reason is None and self.userComment is None:
            raise ValueError("an overrideReason needs a reason or a userComment (or is left out)")
        return self


class AcceptedSuggestion(CdsHooksModel):
    model_config = ConfigDict(extra="forbid")

    id: NonEmpty


def _date_time_text(value: Any) -> Any:
    # Pydantic reads a number as Unix time; CDS Hooks' outcomeTimestamp is an ISO 8601 string.
    if not isinstance(value, str):
        raise ValueError("must be an ISO 8601 date-time string with a time zone")
    return value


class FeedbackItem(CdsHooksModel):
    model_config = ConfigDict(extra="forbid")

    card: UUID
    outcome: Literal["accepted", "overridden"]
    acceptedSuggestions: list[AcceptedSuggestion] | None = None
    overrideReason: OverrideReason | None = None
    outcomeTimestamp: Annotated[AwareDatetime, BeforeValidator(_date_time_text)]
    extension: Extension | None = None

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


class FeedbackRequest(CdsHooksModel):
    model_config = ConfigDict(extra="forbid")

    feedback: Annotated[list[FeedbackItem], Field(min_length=1, max_length=1000)]
    extension: Extension | None = None
