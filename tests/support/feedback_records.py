"""Issued-card records as the feedback store receives them."""

from __future__ import annotations

from datetime import UTC, datetime

from service.feedback.records import IssuedCard

SERVICE = "rpl-workup"
T0 = datetime(2025, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)


def issued(
    uuid: str,
    topic: str = "thyroid",
    *,
    service: str = SERVICE,
    hook_instance: str = "5f0e7a5e-0000-4000-8000-000000000001",
) -> IssuedCard:
    return IssuedCard(
        uuid=uuid,
        service_id=service,
        topic_code=topic,
        topic_system="http://example.org/CodeSystem/rpl-topic",
        hook_instance=hook_instance,
        issued_at=T0,
    )
