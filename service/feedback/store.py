"""Persistence for issued cards, card feedback and the JWT replay cache (SQLAlchemy 2, async)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service.feedback.database import POSTGRES_CONNECT_TIMEOUT_SECONDS, create_engine
from service.feedback.outage import DatabaseUnavailable, outage_reason
from service.feedback.records import CardDecision, FeedbackEntry, IssuedCard, TopicSummary
from service.feedback.revision import current_revision, migrate_if_behind
from service.feedback.tables import (
    KEY_LENGTH,
    OUTCOMES,
    feedback,
    issued_cards,
    jwt_replay,
)

log = logging.getLogger("rpl_cds.feedback")

# Feedback whose card uuid the service never issued (another deployment's card, or a card issued
# before records were kept) is still counted, under this topic code.
UNMATCHED_TOPIC = "unmatched"

# Expired replay-cache rows are harmless but accumulate; one range delete a minute per worker keeps
# the table at about one token lifetime of rows without adding a delete to every request.
_PURGE_INTERVAL_SECONDS = 60.0
_PING_TIMEOUT_SECONDS = 2.0

DialectInsert = sqlite.Insert | postgresql.Insert


class FeedbackStore:
    """Implements `service.auth.replay.ReplayCache` too: the replay cache must be shared by all
    worker processes, and this database already is.

    The methods raise `DatabaseUnavailable` when the database cannot serve (unreachable, timed
    out, locked, full); nothing was stored then, so the caller may safely try again."""

    def __init__(self, engine: AsyncEngine, deadline: float | None = None) -> None:
        self._engine = engine
        self._dialect = engine.dialect.name
        self._deadline = deadline
        self._next_purge = 0.0
        # SQLite has one writer at a time. Tasks of this process that write take turns here, in
        # order, instead of each holding a connection and polling SQLite's lock: its busy handler
        # sleeps in growing steps, and under load a waiter can keep missing the moment the lock is
        # free until its timeout runs out (503s on a healthy database, measured with two workers
        # at 32 connections). Only the other processes' writers still meet at the lock.
        self._write_turn = asyncio.Lock() if self._dialect == "sqlite" else None

    @classmethod
    async def open(
        cls,
        database_url: str,
        *,
        migrate: bool = True,
        connect_timeout: float = POSTGRES_CONNECT_TIMEOUT_SECONDS,
        statement_timeout: float | None = None,
    ) -> FeedbackStore:
        """Connect lazily (the engine opens connections on first use) and, with `migrate`, bring
        the schema to the newest revision first. Worker processes may migrate at the same time;
        the database makes them wait for each other. Within one process, open stores one after
        the other: Alembic keeps the running migration in module globals.

        With `statement_timeout` (see `create_engine`), each method's database work ends within
        `connect_timeout + statement_timeout` seconds, with `DatabaseUnavailable` if not done.
        Raises ValueError for a URL that is neither SQLite nor PostgreSQL."""
        if migrate:
            # On an engine without the statement timeout: a migration may rightly take longer
            # than any request should wait.
            migrator = create_engine(database_url, connect_timeout=connect_timeout)
            try:
                await migrate_if_behind(migrator)
            finally:
                await migrator.dispose()
        engine = create_engine(
            database_url, connect_timeout=connect_timeout, statement_timeout=statement_timeout
        )
        deadline = None if statement_timeout is None else connect_timeout + statement_timeout
        return cls(engine, deadline)

    @property
    def engine(self) -> AsyncEngine:
        """For diagnostics and tests; the service itself goes through the methods below."""
        return self._engine

    async def close(self) -> None:
        await self._engine.dispose()

    async def ping(self) -> bool:
        """Whether the database answers within a couple of seconds."""
        return await self.check() is None

    async def check(self) -> str | None:
        """For readiness checks: None when the database answers within a couple of seconds, else
        why not, in words safe to show (no host, user or driver message)."""
        try:
            async with (
                asyncio.timeout(_PING_TIMEOUT_SECONDS),
                self._engine.connect() as connection,
            ):
                await connection.execute(sa.text("SELECT 1"))
        # A readiness probe must answer, whatever the driver raises for an unreachable server
        # (OSError, timeouts, driver-specific errors not wrapped by SQLAlchemy).
        except Exception as error:
            reason = outage_reason(error) or "unexpected error"
            log.warning("database ping failed: %s (%s)", reason, type(error).__name__)
            return reason
        return None

    async def migration_revision(self) -> str | None:
        """The schema revision the database is at (None before the first migration)."""
        return await current_revision(self._engine)

    async def record_issued(self, cards: Sequence[IssuedCard]) -> None:
        """Record the cards of one response. A client re-sending the same hookInstance gets the
        same card uuids again; those are already recorded and are skipped."""
        if not cards:
            return
        rows = [
            {
                "uuid": _key("card uuid", card.uuid),
                "service_id": _key("service id", card.service_id),
                "topic_system": card.topic_system,
                "topic_code": _key("topic code", card.topic_code),
                "hook_instance": _key("hookInstance", card.hook_instance),
                "issued_at": _aware("issued_at", card.issued_at),
                "patient_key": _optional_key("patient key", card.patient_key),
                "facts": _optional_key("facts", card.facts),
            }
            for card in cards
        ]
        statement = self._insert(issued_cards).on_conflict_do_nothing(
            index_elements=[issued_cards.c.uuid]
        )
        async with self._writing() as connection:
            await connection.execute(statement, rows)

    async def save_feedback(self, entries: Sequence[FeedbackEntry]) -> int:
        """Store one feedback request, atomically. Returns how many entries were new: the same
        card uuid, outcome and outcome timestamp is stored once, however often it is sent."""
        if not entries:
            return 0
        received_at = datetime.now(UTC)
        rows = [_feedback_row(entry, received_at) for entry in entries]
        statement = (
            self._insert(feedback)
            .on_conflict_do_nothing(
                index_elements=[
                    feedback.c.card_uuid,
                    feedback.c.outcome,
                    feedback.c.outcome_timestamp,
                ]
            )
            # Counting returned ids rather than trusting rowcount, which drivers report
            # inconsistently for multi-row inserts.
            .returning(feedback.c.id)
        )
        async with self._writing() as connection:
            result = await connection.execute(statement, rows)
            return len(result.all())

    async def summary(self, service_id: str | None = None) -> list[TopicSummary]:
        """Per topic code: cards issued, and cards accepted or overridden with the reasons given.

        Accepted and overridden count distinct cards, not feedback rows: a client that re-sends a
        decision with a fresh timestamp stores a second row but must not inflate the rates.
        """
        topic = sa.func.coalesce(issued_cards.c.topic_code, UNMATCHED_TOPIC).label("topic")
        joined = feedback.outerjoin(issued_cards, issued_cards.c.uuid == feedback.c.card_uuid)
        cards = sa.func.count(sa.distinct(feedback.c.card_uuid))

        issued_query = sa.select(issued_cards.c.topic_code, sa.func.count()).group_by(
            issued_cards.c.topic_code
        )
        outcome_query = (
            sa.select(topic, feedback.c.outcome, cards)
            .select_from(joined)
            .group_by(topic, feedback.c.outcome)
        )
        reason_query = (
            sa.select(
                topic,
                feedback.c.override_reason_system,
                feedback.c.override_reason_code,
                # Clients may send different displays for one code; any one of them will do.
                sa.func.max(feedback.c.override_reason_display),
                cards,
            )
            .select_from(joined)
            .where(
                feedback.c.outcome == "overridden",
                feedback.c.override_reason_code.is_not(None),
            )
            .group_by(topic, feedback.c.override_reason_system, feedback.c.override_reason_code)
        )
        if service_id is not None:
            issued_query = issued_query.where(issued_cards.c.service_id == service_id)
            outcome_query = outcome_query.where(feedback.c.service_id == service_id)
            reason_query = reason_query.where(feedback.c.service_id == service_id)

        summaries: dict[str, TopicSummary] = {}

        def of(topic_code: str) -> TopicSummary:
            return summaries.setdefault(topic_code, TopicSummary(topic_code=topic_code))

        async with self._unavailable_on_outage(), self._engine.connect() as connection:
            for topic_code, count in await connection.execute(issued_query):
                of(topic_code).issued = count
            for topic_code, outcome, count in await connection.execute(outcome_query):
                if outcome == "accepted":
                    of(topic_code).accepted = count
                elif outcome == "overridden":
                    of(topic_code).overridden = count
            for topic_code, system, code, display, count in await connection.execute(reason_query):
                of(topic_code).override_reasons[f"{system or ''}|{code}"] = {
                    "display": display,
                    "count": count,
                }
        return [summaries[code] for code in sorted(summaries)]

    async def card_decisions(
        self,
        patient_keys: Sequence[str],
        service_id: str,
        facts: str,
        since: datetime,
    ) -> list[CardDecision]:
        """The latest decision (feedback) on each card issued by `service_id` for a patient
        under any of `patient_keys` from the same `facts`, decided at or after `since`."""
        if not patient_keys:
            return []
        query = (
            sa.select(
                feedback.c.card_uuid,
                issued_cards.c.topic_code,
                feedback.c.outcome,
                feedback.c.override_reason_system,
                feedback.c.override_reason_code,
                feedback.c.outcome_timestamp,
                feedback.c.received_at,
            )
            .select_from(feedback.join(issued_cards, issued_cards.c.uuid == feedback.c.card_uuid))
            .where(
                issued_cards.c.patient_key.in_(list(patient_keys)),
                issued_cards.c.service_id == service_id,
                issued_cards.c.facts == facts,
                feedback.c.outcome_timestamp >= since,
                feedback.c.received_at >= since,
            )
        )
        latest: dict[str, CardDecision] = {}
        async with self._unavailable_on_outage(), self._engine.connect() as connection:
            rows = (await connection.execute(query)).all()
        for uuid, topic, outcome, system, code, decided, received in rows:
            decision = CardDecision(topic, outcome, system, code, min(decided, received))
            # Feedback may repeat or change its mind; the clinician's newest word counts.
            previous = latest.get(uuid)
            if previous is None or decision.decided_at >= previous.decided_at:
                latest[uuid] = decision
        return list(latest.values())

    async def remember_jti(self, issuer: str, jti: str, expires_at: datetime) -> bool:
        """ReplayCache: True the first time (issuer, jti) is seen or after its previous use has
        expired; False for a replay within the lifetime, in this or any other worker process."""
        now = datetime.now(UTC)
        insert = self._insert(jwt_replay).values(
            issuer=_key("issuer", issuer),
            jti=_key("jti", jti),
            expires_at=_aware("expires_at", expires_at),
        )
        # One statement, so two workers racing on the same jti cannot both win: the loser waits
        # on the row lock, then finds an unexpired row and updates (and returns) nothing.
        statement = insert.on_conflict_do_update(
            index_elements=[jwt_replay.c.issuer, jwt_replay.c.jti],
            set_={"expires_at": insert.excluded.expires_at},
            where=jwt_replay.c.expires_at <= now,
        ).returning(jwt_replay.c.jti)
        async with self._writing() as connection:
            fresh = (await connection.execute(statement)).first() is not None
        await self._purge_expired_jtis(now)
        return fresh

    async def _purge_expired_jtis(self, now: datetime) -> None:
        if time.monotonic() < self._next_purge:
            return
        # Set before awaiting, so concurrent requests in this worker do not all purge at once.
        self._next_purge = time.monotonic() + _PURGE_INTERVAL_SECONDS
        try:
            async with self._writing() as connection:
                await connection.execute(sa.delete(jwt_replay).where(jwt_replay.c.expires_at < now))
        # The token was already checked and recorded; a failed clean-up must not reject it.
        except DatabaseUnavailable as error:
            log.warning("purging expired JWT ids failed: %s", error.reason)

    @asynccontextmanager
    async def _writing(self) -> AsyncIterator[AsyncConnection]:
        """A write transaction, within the deadline (waiting for this process's turn included)."""
        async with self._unavailable_on_outage():
            if self._write_turn is None:
                async with self._engine.begin() as connection:
                    yield connection
            else:
                async with self._write_turn, self._engine.begin() as connection:
                    yield connection

    @asynccontextmanager
    async def _unavailable_on_outage(self) -> AsyncIterator[None]:
        """Bounds the database work of one method by the deadline, and turns what the drivers
        raise for an outage (each its own types, some not wrapped by SQLAlchemy) into
        `DatabaseUnavailable`. Entered before the connection, so connecting is bounded too."""
        try:
            async with asyncio.timeout(self._deadline):
                yield
        except Exception as error:
            reason = outage_reason(error)
            if reason is None:
                raise
            raise DatabaseUnavailable(reason) from error

    def _insert(self, table: sa.Table) -> DialectInsert:
        """INSERT with ON CONFLICT support: each dialect has its own construct for it."""
        if self._dialect == "postgresql":
            return postgresql.insert(table)
        if self._dialect == "sqlite":
            return sqlite.insert(table)
        raise ValueError(f"unsupported database dialect {self._dialect!r}")


def _feedback_row(entry: FeedbackEntry, received_at: datetime) -> dict[str, Any]:
    if entry.outcome not in OUTCOMES:
        raise ValueError(f"feedback outcome must be one of {OUTCOMES}, not {entry.outcome!r}")
    return {
        "service_id": _key("service id", entry.service_id),
        "card_uuid": _key("card uuid", entry.card_uuid),
        "outcome": entry.outcome,
        "outcome_timestamp": _aware("outcome timestamp", entry.outcome_timestamp),
        "accepted_suggestions": list(entry.accepted_suggestions),
        "override_reason_system": entry.override_reason_system,
        "override_reason_code": entry.override_reason_code,
        "override_reason_display": entry.override_reason_display,
        "user_comment": entry.user_comment,
        "received_at": received_at,
    }


def _key(name: str, value: str) -> str:
    if len(value) > KEY_LENGTH:
        raise ValueError(f"{name} is longer than {KEY_LENGTH} characters")
    return value


def _optional_key(name: str, value: str | None) -> str | None:
    return None if value is None else _key(name, value)


def _aware(name: str, value: datetime) -> datetime:
    # Checked here as well as in UTCDateTime so callers get a plain ValueError, not one wrapped in
    # SQLAlchemy's StatementError.
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware")
    return value
