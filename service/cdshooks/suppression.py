"""Repeat suppression: a card the clinician has dealt with is not shown again to the same patient
until something it was computed from changes, or `RPL_CDS_SUPPRESSION_DAYS` pass.

"Dealt with" is knowledge, not code: feedback `overridden` with a reason that a loaded CodeSystem
marks with the `suppresses-repeat` property (true), and that the card itself offered among its
`overrideReasons`. Only services whose PlanDefinition opts in (catalogue.REPEAT_SUPPRESSION_
EXTENSION) suppress; the catalogue refuses that for order hooks, where each call is about new
drafts. `accepted` never suppresses: the order it leads to shows in the record, or the card stays.

The memory is the issued-card record, which for these services also holds:

- `patient_key`: HMAC-SHA256, with `RPL_CDS_PATIENT_KEY_SECRET`, of the EHR's patient id with the
  caller's JWT issuer and `fhirServer` (so two EHRs' patient 123 differ). No patient id is stored;
  without the secret the key cannot be traced back. A new secret starts a new memory; secrets in
  `RPL_CDS_PATIENT_KEY_PREVIOUS_SECRETS` are still matched, so a rotation loses nothing.
- `facts`: a digest of the patient record the card was computed from (every resource the call
  read: type, id and `meta.versionId`/`meta.lastUpdated` where the server gives them, else the
  resource's whole content; plus the prefetch keys whose data were incomplete). A new loss, a new
  or amended result, any change in what the service read, gives another digest, and the card
  shows again. The digest does not know which facts a card depends on (the engine knows no
  clinical meaning): any change brings back every suppressed card of the patient, which errs
  towards showing.

A lookup is one indexed read, bounded by `RPL_CDS_SUPPRESSION_LOOKUP_TIMEOUT_SECONDS`. When the
database cannot answer in that time, every card is shown (never a 500); after FAILURES_BEFORE_PAUSE
failures in a row lookups pause for OUTAGE_PAUSE_SECONDS, so that an outage does not add the
timeout to every call (one slow read on a busy machine does not pause anything).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import orjson

from service.auth.identity import ClientIdentity
from service.cdshooks.cards import Card
from service.cdshooks.catalogue import CdsService
from service.engine import Knowledge
from service.feedback.outage import DatabaseUnavailable
from service.feedback.store import FeedbackStore
from service.fhir.record import PatientRecord
from service.ops.timing import PhaseTimer
from service.settings import Settings

log = logging.getLogger("rpl_cds.suppression")

# CodeSystem.property.uri that marks a reason code as "dealt with" (valueBoolean true).
SUPPRESSES_REPEAT_PROPERTY: Final = (
    "https://fhir.rpl-cds.org/CodeSystem/override-reason#suppresses-repeat"
)
# After this many failed lookups in a row, the next ones are skipped for OUTAGE_PAUSE_SECONDS
# (then one is tried again), so an outage costs the calls nothing.
FAILURES_BEFORE_PAUSE: Final = 3
OUTAGE_PAUSE_SECONDS: Final = 5.0
_KEY_DOMAIN: Final = "rpl-cds/patient-key/1"

Reason = tuple[str, str]  # (system, code)


@dataclass(frozen=True)
class Memory:
    """What an issued card is remembered under (IssuedCard.patient_key, .facts)."""

    patient_key: str
    facts: str


@dataclass(frozen=True)
class Screened:
    cards: list[Card]
    # Topic codes of the cards left out.
    suppressed: list[str]
    # None when the service does not suppress: its cards are recorded without patient key.
    memory: Memory | None


def suppressing_reasons(knowledge: Knowledge) -> frozenset[Reason]:
    """(system, code) of every concept of a loaded CodeSystem that declares the
    `suppresses-repeat` property and sets it true."""
    reasons: set[Reason] = set()
    for resource in knowledge.by_canonical.values():
        if resource.get("resourceType") != "CodeSystem" or not resource.get("url"):
            continue
        names = {
            p.get("code")
            for p in resource.get("property", [])
            if p.get("uri") == SUPPRESSES_REPEAT_PROPERTY and p.get("type") == "boolean"
        }
        if not names:
            continue
        for concept in _concepts(resource.get("concept", [])):
            if any(
                p.get("code") in names and p.get("valueBoolean") is True
                for p in concept.get("property", [])
            ):
                reasons.add((str(resource["url"]), str(concept.get("code"))))
    return frozenset(reasons)


def _concepts(concepts: Iterable[Mapping[str, Any]]) -> Iterable[Mapping[str, Any]]:
    for concept in concepts:
        yield concept
        yield from _concepts(concept.get("concept", []))


def patient_key(secret: bytes, patient_id: str, issuer: str | None, fhir_server: str | None) -> str:
    """The keyed hash the memory is stored under; the patient id itself is never stored."""
    message = orjson.dumps([_KEY_DOMAIN, issuer or "", (fhir_server or "").rstrip("/"), patient_id])
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def facts_digest(record: PatientRecord, missing_data: Sequence[str]) -> str:
    """A digest of what the call knew about the patient (see the module's description)."""
    items = sorted(
        _identity(resource_type, resource)
        for resource_type, resources in record.by_type.items()
        for resource in resources
    )
    digest = hashlib.sha256()
    for item in items:
        digest.update(item)
        digest.update(b"\n")
    digest.update(orjson.dumps(sorted(missing_data)))
    return digest.hexdigest()


def _identity(resource_type: str, resource: Mapping[str, Any]) -> bytes:
    meta = resource.get("meta")
    version = meta.get("versionId") if isinstance(meta, dict) else None
    updated = meta.get("lastUpdated") if isinstance(meta, dict) else None
    resource_id = resource.get("id")
    if isinstance(resource_id, str) and (version or updated):
        # The server changes these whenever the resource changes: no need to read the content.
        return orjson.dumps([resource_type, resource_id, str(version), str(updated)])
    return orjson.dumps([resource_type, resource], option=orjson.OPT_SORT_KEYS)


def _now() -> datetime:
    return datetime.now(UTC)


class Suppression:
    """Built once in the app's lifespan; `screen` is the one call in the request path."""

    def __init__(
        self,
        settings: Settings,
        store: FeedbackStore,
        reasons: frozenset[Reason],
        *,
        clock: Callable[[], datetime] = _now,
    ) -> None:
        secrets = [settings.patient_key_secret, *settings.patient_key_previous_secrets]
        self._secrets = [s.get_secret_value().encode() for s in secrets if s is not None]
        self._active = settings.suppression_active and bool(reasons)
        self._window = timedelta(days=settings.suppression_days)
        self._store = store
        self._reasons = reasons
        self._clock = clock
        self._timeout = settings.suppression_lookup_timeout_seconds
        self._failures = 0
        self._paused_until: datetime | None = None

    @property
    def active(self) -> bool:
        return self._active

    async def screen(
        self,
        service: CdsService,
        cards: list[Card],
        *,
        patient_id: str,
        fhir_server: str | None,
        client: ClientIdentity | None,
        record: PatientRecord,
        missing_data: Sequence[str],
        timer: PhaseTimer | None = None,
    ) -> Screened:
        """`cards` without those the clinician has dealt with for this patient and these facts,
        and what to record the cards shown under. The work is the `suppress` phase of `timer`
        (absent when the service does not suppress)."""
        if not (self._active and service.suppresses_repeats and cards):
            return Screened(cards, [], None)
        with (timer or PhaseTimer()).phase("suppress"):
            return await self._screen(
                service, cards, patient_id, fhir_server, client, record, missing_data
            )

    async def _screen(
        self,
        service: CdsService,
        cards: list[Card],
        patient_id: str,
        fhir_server: str | None,
        client: ClientIdentity | None,
        record: PatientRecord,
        missing_data: Sequence[str],
    ) -> Screened:
        issuer = client.issuer if client else None
        keys = [patient_key(s, patient_id, issuer, fhir_server) for s in self._secrets]
        memory = Memory(keys[0], facts_digest(record, missing_data))
        now = self._clock()
        if self._paused_until is not None and now < self._paused_until:
            return Screened(cards, [], memory)
        try:
            async with asyncio.timeout(self._timeout):
                decisions = await self._store.card_decisions(
                    keys, service.id, memory.facts, since=now - self._window
                )
        except (DatabaseUnavailable, TimeoutError) as error:
            self._failures += 1
            reason = error.reason if isinstance(error, DatabaseUnavailable) else "timed out"
            pause = self._failures >= FAILURES_BEFORE_PAUSE
            if pause:
                self._paused_until = now + timedelta(seconds=OUTAGE_PAUSE_SECONDS)
            log.warning(
                "repeat suppression lookup failed (%d in a row%s), all cards shown: database %s",
                self._failures,
                f"; paused {OUTAGE_PAUSE_SECONDS:.0f} s" if pause else "",
                reason,
            )
            return Screened(cards, [], memory)
        self._failures = 0
        self._paused_until = None
        dealt_with: dict[str, set[Reason]] = {}
        for decision in decisions:
            given = (decision.override_reason_system or "", decision.override_reason_code or "")
            if decision.outcome == "overridden" and given in self._reasons:
                dealt_with.setdefault(decision.topic_code, set()).add(given)
        if not dealt_with:
            return Screened(cards, [], memory)
        shown, suppressed = [], []
        for card in cards:
            if dealt_with.get(card.topic_code, set()) & _offered(card.body):
                suppressed.append(card.topic_code)
            else:
                shown.append(card)
        return Screened(shown, suppressed, memory)


def _offered(card: Mapping[str, Any]) -> set[Reason]:
    """The reasons this card offers: a reason it does not offer does not apply to it."""
    return {(r.get("system", ""), r.get("code", "")) for r in card.get("overrideReasons", [])}
