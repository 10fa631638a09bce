"""Plain records that cross the boundary between the HTTP layer and the feedback store."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime


@dataclass(frozen=True)
class IssuedCard:
    """What the service showed, without patient identifiers or content: enough to match feedback."""

    uuid: str
    service_id: str
    topic_code: str
    topic_system: str
    hook_instance: str
    issued_at: datetime
    # For services that suppress repeated cards: the keyed hash of the patient (never the id) and
    # the digest of the record facts the card was computed from (cdshooks/suppression.py).
    patient_key: str | None = None
    facts: str | None = None


@dataclass(frozen=True)
class FeedbackEntry:
    """One feedback item as received (already validated), for one service."""

    service_id: str
    card_uuid: str
    outcome: str  # "accepted" | "overridden"
    outcome_timestamp: datetime  # UTC
    accepted_suggestions: tuple[str, ...] = ()
    override_reason_system: str | None = None
    override_reason_code: str | None = None
    override_reason_display: str | None = None
    user_comment: str | None = None


@dataclass(frozen=True)
class CardDecision:
    """A clinician's latest decision on one earlier card of a patient (for repeat suppression)."""

    topic_code: str
    outcome: str  # "accepted" | "overridden"
    override_reason_system: str | None
    override_reason_code: str | None
    # The earlier of the clinician's outcome timestamp and when the service received it, so a
    # client clock running ahead cannot stretch a suppression.
    decided_at: datetime


@dataclass
class TopicSummary:
    topic_code: str
    issued: int = 0
    accepted: int = 0
    overridden: int = 0
    # "system|code" -> {"display": str | None, "count": int}
    override_reasons: dict[str, dict[str, object]] = field(default_factory=dict)
