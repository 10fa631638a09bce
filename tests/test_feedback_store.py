"""The feedback store against real databases: an SQLite file and a PostgreSQL server."""

from __future__ import annotations

import asyncio
import socket
import sqlite3
import sys
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from support.db import BACKENDS, clear_tables, database_url, postgres_database, sqlite_url
from support.feedback_records import SERVICE, T0, issued

from service.auth.replay import ReplayCache
from service.feedback.database import SQLITE_BUSY_TIMEOUT_MS
from service.feedback.migrate import head_revision, upgrade
from service.feedback.records import FeedbackEntry, IssuedCard, TopicSummary
from service.feedback.revision import HEAD_REVISION
from service.feedback.store import UNMATCHED_TOPIC, FeedbackStore
from service.feedback.tables import feedback, metadata

OTHER_SERVICE = "rpl-treatment"
REASONS = "http://example.org/CodeSystem/override-reason"
LATER = datetime.now(UTC) + timedelta(hours=1)
EARLIER = datetime.now(UTC) - timedelta(hours=1)


@pytest.fixture(scope="session")
async def postgres_session_url() -> AsyncIterator[str]:
    async with postgres_database() as url:
        yield url


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def shared_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """SQLite: a new file per test. PostgreSQL: the session's database (cleared by `store`)."""
    if backend == "sqlite":
        return sqlite_url(tmp_path)
    return str(request.getfixturevalue("postgres_session_url"))


@pytest.fixture
async def empty_url(backend: str, tmp_path: Path) -> AsyncIterator[str]:
    """A database nothing has been migrated into yet (PostgreSQL: a separate one, for this test)."""
    async with database_url(backend, tmp_path) as url:
        yield url


@pytest.fixture
async def store(shared_url: str) -> AsyncIterator[FeedbackStore]:
    store = await FeedbackStore.open(shared_url)
    await clear_tables(store.engine)
    try:
        yield store
    finally:
        await store.close()


def accepted(
    card_uuid: str, at: datetime = T0, *, service: str = SERVICE, suggestion: str = "sugg-1"
) -> FeedbackEntry:
    return FeedbackEntry(
        service_id=service,
        card_uuid=card_uuid,
        outcome="accepted",
        outcome_timestamp=at,
        accepted_suggestions=(suggestion,),
    )


def overridden(
    card_uuid: str,
    at: datetime = T0,
    *,
    code: str | None = "not-relevant",
    display: str | None = "Not relevant for this patient",
    service: str = SERVICE,
) -> FeedbackEntry:
    return FeedbackEntry(
        service_id=service,
        card_uuid=card_uuid,
        outcome="overridden",
        outcome_timestamp=at,
        override_reason_system=REASONS if code else None,
        override_reason_code=code,
        override_reason_display=display if code else None,
        user_comment="discussed with the couple" if code else None,
    )


async def feedback_rows(store: FeedbackStore) -> int:
    async with store.engine.connect() as connection:
        return int(
            (
                await connection.execute(sa.select(sa.func.count()).select_from(feedback))
            ).scalar_one()
        )


async def by_topic(store: FeedbackStore, service_id: str | None = None) -> dict[str, TopicSummary]:
    return {summary.topic_code: summary for summary in await store.summary(service_id)}


# --- migrations -------------------------------------------------------------------------------


async def test_migrations_create_the_schema_at_head(empty_url: str) -> None:
    store = await FeedbackStore.open(empty_url)
    try:
        assert head_revision() == "0002"
        # What serving processes compare with, without loading Alembic.
        assert head_revision() == HEAD_REVISION
        assert await store.migration_revision() == head_revision()

        def inspect(connection: sa.Connection) -> tuple[set[str], list[object]]:
            tables = set(sa.inspect(connection).get_table_names())
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            return tables, compare_metadata(context, metadata)

        async with store.engine.connect() as connection:
            tables, drift = await connection.run_sync(inspect)
        assert {"issued_cards", "feedback", "jwt_replay", "alembic_version"} <= tables
        # The table definitions the store queries with match what the migrations created.
        assert drift == []
    finally:
        await store.close()


def test_schema_has_no_patient_identifiers() -> None:
    columns = {column.name for table in metadata.sorted_tables for column in table.columns}
    # The one exception is a keyed hash (cdshooks/suppression.py), never the id itself: the
    # HTTP tests of repeat suppression read every row to check that.
    assert {name for name in columns if "patient" in name or "subject" in name} == {"patient_key"}


async def test_an_issued_card_from_before_suppression_survives_the_migration(
    empty_url: str,
) -> None:
    from service.feedback.migrate import upgrade_engine

    store = await FeedbackStore.open(empty_url, migrate=False)
    try:
        await upgrade_engine(store.engine, "0001")
        async with store.engine.begin() as connection:
            await connection.execute(
                sa.text(
                    "INSERT INTO issued_cards (uuid, service_id, topic_system, topic_code, "
                    "hook_instance, issued_at) VALUES ('old', 's', 'x', 't', 'h', :at)"
                ),
                {"at": T0},
            )
        await upgrade_engine(store.engine)
        assert await store.migration_revision() == HEAD_REVISION
        assert [(s.topic_code, s.issued) for s in await store.summary()] == [("t", 1)]
        async with store.engine.connect() as connection:
            row = (
                await connection.execute(sa.text("SELECT patient_key, facts FROM issued_cards"))
            ).one()
        assert tuple(row) == (None, None)
    finally:
        await store.close()


async def test_an_unmigrated_database_has_no_revision(empty_url: str) -> None:
    store = await FeedbackStore.open(empty_url, migrate=False)
    try:
        assert await store.migration_revision() is None
    finally:
        await store.close()


async def test_migrating_twice_is_a_no_op(empty_url: str) -> None:
    first = await FeedbackStore.open(empty_url)
    await first.record_issued([issued("card-1")])
    await first.close()

    await asyncio.to_thread(upgrade, empty_url)
    second = await FeedbackStore.open(empty_url)
    try:
        assert await second.migration_revision() == head_revision()
        assert [s.issued for s in await second.summary()] == [1]
        async with second.engine.connect() as connection:
            versions = (
                await connection.execute(sa.text("SELECT version_num FROM alembic_version"))
            ).all()
        assert [tuple(row) for row in versions] == [(HEAD_REVISION,)]
    finally:
        await second.close()


async def test_workers_starting_together_migrate_once(empty_url: str) -> None:
    # Separate processes, as real workers are (Alembic keeps its context in module globals, so
    # one process runs one migration at a time anyway): the database must serialise them.
    script = "import sys; from service.feedback.migrate import upgrade; upgrade(sys.argv[1])"
    workers = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-c", script, empty_url, stderr=asyncio.subprocess.PIPE
        )
        for _ in range(3)
    ]
    for worker in workers:
        _, stderr = await worker.communicate()
        assert worker.returncode == 0, stderr.decode()
    store = await FeedbackStore.open(empty_url, migrate=False)
    try:
        assert await store.migration_revision() == head_revision()
    finally:
        await store.close()


async def test_cli_upgrade_then_workers_without_migrating(empty_url: str) -> None:
    # `upgrade` is synchronous (it runs its own event loop), as the CLI calls it.
    await asyncio.to_thread(upgrade, empty_url)
    store = await FeedbackStore.open(empty_url, migrate=False)
    try:
        assert await store.migration_revision() == head_revision()
        await store.record_issued([issued("card-1")])
    finally:
        await store.close()


# --- issued cards and summary -----------------------------------------------------------------


async def test_issued_cards_are_counted_per_topic(store: FeedbackStore) -> None:
    cards = [issued("c1"), issued("c2"), issued("c3"), issued("c4", "antiphospholipid")]
    await store.record_issued(cards)
    # A client re-sending the same hookInstance gets the same card uuids back.
    await store.record_issued(cards)
    await store.record_issued([])

    summaries = await store.summary()
    assert [(s.topic_code, s.issued, s.accepted, s.overridden) for s in summaries] == [
        ("antiphospholipid", 1, 0, 0),
        ("thyroid", 3, 0, 0),
    ]


async def test_feedback_is_counted_under_the_issued_cards_topic(store: FeedbackStore) -> None:
    await store.record_issued([issued("c1"), issued("c2"), issued("c3", "karyotype")])
    await store.save_feedback([accepted("c1"), overridden("c2"), accepted("c3")])

    summaries = await by_topic(store)
    thyroid, karyotype = summaries["thyroid"], summaries["karyotype"]
    assert (thyroid.issued, thyroid.accepted, thyroid.overridden) == (2, 1, 1)
    assert (karyotype.issued, karyotype.accepted, karyotype.overridden) == (1, 1, 0)


async def test_feedback_for_an_unknown_card_is_unmatched(store: FeedbackStore) -> None:
    await store.record_issued([issued("c1")])
    await store.save_feedback([accepted("never-issued"), overridden("also-unknown")])

    summaries = await store.summary()
    assert [s.topic_code for s in summaries] == ["thyroid", UNMATCHED_TOPIC]
    unmatched = summaries[1]
    assert (unmatched.issued, unmatched.accepted, unmatched.overridden) == (0, 1, 1)


async def test_override_reasons_are_aggregated_with_display(store: FeedbackStore) -> None:
    await store.record_issued([issued(f"c{i}") for i in range(5)])
    await store.save_feedback(
        [
            overridden("c0"),
            overridden("c1"),
            overridden("c2", code="already-done", display="Already done"),
            overridden("c3", code=None),  # overridden without a reason
            accepted("c4"),
        ]
    )

    [thyroid] = await store.summary()
    assert (thyroid.issued, thyroid.accepted, thyroid.overridden) == (5, 1, 4)
    assert thyroid.override_reasons == {
        f"{REASONS}|not-relevant": {"display": "Not relevant for this patient", "count": 2},
        f"{REASONS}|already-done": {"display": "Already done", "count": 1},
    }


async def test_summary_is_filtered_by_service(store: FeedbackStore) -> None:
    await store.record_issued(
        [
            issued("a1"),
            issued("a2"),
            issued("b1", service=OTHER_SERVICE),
            issued("b2", "lupus", service=OTHER_SERVICE),
        ]
    )
    await store.save_feedback(
        [
            accepted("a1"),
            overridden("b1", service=OTHER_SERVICE),
            accepted("stray", service=OTHER_SERVICE),
        ]
    )

    workup = await store.summary(SERVICE)
    assert [(s.topic_code, s.issued, s.accepted, s.overridden) for s in workup] == [
        ("thyroid", 2, 1, 0)
    ]
    treatment = await store.summary(OTHER_SERVICE)
    assert [(s.topic_code, s.issued, s.accepted, s.overridden) for s in treatment] == [
        ("lupus", 1, 0, 0),
        ("thyroid", 1, 0, 1),
        (UNMATCHED_TOPIC, 0, 1, 0),
    ]
    everything = await store.summary()
    assert [(s.topic_code, s.issued, s.accepted, s.overridden) for s in everything] == [
        ("lupus", 1, 0, 0),
        ("thyroid", 3, 1, 1),
        (UNMATCHED_TOPIC, 0, 1, 0),
    ]
    assert await store.summary("no-such-service") == []


# --- feedback idempotency ---------------------------------------------------------------------


async def test_the_same_batch_twice_is_stored_once(store: FeedbackStore) -> None:
    batch = [accepted("c1"), overridden("c2")]
    assert await store.save_feedback(batch) == 2
    assert await store.save_feedback(batch) == 0
    assert await store.save_feedback([]) == 0
    assert await feedback_rows(store) == 2


async def test_duplicates_within_one_batch_are_stored_once(store: FeedbackStore) -> None:
    assert await store.save_feedback([accepted("c1"), accepted("c1"), accepted("c1")]) == 1
    assert await feedback_rows(store) == 1


async def test_the_same_instant_in_another_offset_is_a_duplicate(store: FeedbackStore) -> None:
    assert await store.save_feedback([accepted("c1", T0)]) == 1
    plus_two = T0.astimezone(timezone(timedelta(hours=2)))
    assert await store.save_feedback([accepted("c1", plus_two)]) == 0


async def test_the_same_card_at_another_time_is_a_new_row(store: FeedbackStore) -> None:
    await store.record_issued([issued("c1")])
    assert await store.save_feedback([accepted("c1", T0)]) == 1
    assert await store.save_feedback([accepted("c1", T0 + timedelta(microseconds=1))]) == 1
    assert await feedback_rows(store) == 2
    # Rates count cards, so a re-sent decision does not make one card count twice.
    [thyroid] = await store.summary()
    assert (thyroid.issued, thyroid.accepted) == (1, 1)


async def test_the_same_card_with_another_outcome_is_a_new_row(store: FeedbackStore) -> None:
    assert await store.save_feedback([accepted("c1"), overridden("c1")]) == 2


async def test_concurrent_saves_of_the_same_entries_store_them_once(store: FeedbackStore) -> None:
    batch = [accepted(f"c{i}", T0 + timedelta(seconds=i)) for i in range(20)]
    results = await asyncio.gather(*(store.save_feedback(batch) for _ in range(8)))
    assert sum(results) == 20
    assert await feedback_rows(store) == 20


async def test_feedback_round_trips(store: FeedbackStore) -> None:
    plus_one = T0.astimezone(timezone(timedelta(hours=1)))
    await store.save_feedback([accepted("c1", plus_one, suggestion="s-9"), overridden("c2")])
    async with store.engine.connect() as connection:
        rows = (await connection.execute(sa.select(feedback).order_by(feedback.c.card_uuid))).all()
    first, second = rows
    assert first.accepted_suggestions == ["s-9"]
    assert first.outcome_timestamp == T0
    assert first.outcome_timestamp.utcoffset() == timedelta(0)
    assert first.received_at.tzinfo is not None
    assert (second.override_reason_code, second.user_comment) == (
        "not-relevant",
        "discussed with the couple",
    )
    assert second.accepted_suggestions == []


async def test_invalid_input_is_refused_with_value_error(store: FeedbackStore) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        await store.save_feedback([accepted("c1", datetime(2025, 3, 1, 12, 0))])
    with pytest.raises(ValueError, match="outcome"):
        await store.save_feedback(
            [
                FeedbackEntry(
                    service_id=SERVICE, card_uuid="c1", outcome="ignored", outcome_timestamp=T0
                )
            ]
        )
    with pytest.raises(ValueError, match="jti"):
        await store.remember_jti("https://ehr.example.org", "x" * 256, LATER)
    assert await feedback_rows(store) == 0


# --- repeat suppression ----------------------------------------------------------------------


def remembered(uuid: str, topic: str, key: str = "key-a", facts: str = "facts-1") -> IssuedCard:
    card = issued(uuid, topic)
    return IssuedCard(**{**card.__dict__, "patient_key": key, "facts": facts})


async def test_card_decisions_are_the_latest_per_card_of_that_patient_and_facts(
    store: FeedbackStore,
) -> None:
    await store.record_issued(
        [
            remembered("c1", "thyroid"),
            remembered("c2", "aps"),
            remembered("c3", "imaging", key="key-b"),  # another patient
            remembered("c4", "lifestyle", facts="facts-2"),  # other facts
            issued("c5", "karyotype"),  # a card recorded without patient key
        ]
    )
    await store.save_feedback(
        [
            overridden("c1", T0, code="patient-declined"),
            # The clinician changed her mind about c2: the newest word counts.
            overridden("c2", T0, code="patient-declined"),
            accepted("c2", T0 + timedelta(minutes=5)),
            overridden("c3", T0, code="patient-declined"),
            overridden("c4", T0, code="patient-declined"),
            overridden("c5", T0, code="patient-declined"),
        ]
    )
    since = T0 - timedelta(days=1)
    decisions = await store.card_decisions(["key-a", "key-old"], SERVICE, "facts-1", since=since)
    assert sorted((d.topic_code, d.outcome, d.override_reason_code) for d in decisions) == [
        ("aps", "accepted", None),
        ("thyroid", "overridden", "patient-declined"),
    ]
    assert await store.card_decisions(["key-a"], OTHER_SERVICE, "facts-1", since=since) == []
    assert await store.card_decisions(["key-a"], SERVICE, "facts-1", since=T0 + timedelta(1)) == []
    assert await store.card_decisions([], SERVICE, "facts-1", since=since) == []


async def test_a_decision_dated_in_the_future_counts_from_when_it_arrived(
    store: FeedbackStore,
) -> None:
    await store.record_issued([remembered("c1", "thyroid")])
    await store.save_feedback([overridden("c1", datetime.now(UTC) + timedelta(days=365))])
    (decision,) = await store.card_decisions(["key-a"], SERVICE, "facts-1", since=EARLIER)
    assert decision.decided_at <= datetime.now(UTC)


# --- JWT replay cache -------------------------------------------------------------------------


async def test_remember_jti(store: FeedbackStore) -> None:
    cache: ReplayCache = store
    issuer = "https://ehr.example.org"
    assert await cache.remember_jti(issuer, "jti-1", LATER) is True
    assert await cache.remember_jti(issuer, "jti-1", LATER) is False
    # The same jti from another issuer is a different token.
    assert await cache.remember_jti("https://other-ehr.example.org", "jti-1", LATER) is True

    assert await cache.remember_jti(issuer, "jti-2", EARLIER) is True
    # Its lifetime is over: it may be used again, and is then remembered again.
    assert await cache.remember_jti(issuer, "jti-2", LATER) is True
    assert await cache.remember_jti(issuer, "jti-2", LATER) is False


async def test_a_replay_is_caught_by_another_worker(store: FeedbackStore, shared_url: str) -> None:
    other_worker = await FeedbackStore.open(shared_url, migrate=False)
    try:
        issuer = "https://ehr.example.org"
        assert await store.remember_jti(issuer, "jti-1", LATER) is True
        assert await other_worker.remember_jti(issuer, "jti-1", LATER) is False

        # Both workers receiving the same token at once: exactly one accepts it.
        results = await asyncio.gather(
            *(worker.remember_jti(issuer, "jti-2", LATER) for worker in (store, other_worker) * 3)
        )
        assert sorted(results) == [False] * 5 + [True]
    finally:
        await other_worker.close()


async def test_expired_jtis_are_purged_at_most_once_a_minute(store: FeedbackStore) -> None:
    async def rows() -> int:
        async with store.engine.connect() as connection:
            query = sa.text("SELECT count(*) FROM jwt_replay")
            return int((await connection.execute(query)).scalar_one())

    # The first call of a store purges; the row it just wrote had already expired.
    assert await store.remember_jti("iss", "old-1", EARLIER) is True
    assert await rows() == 0
    assert await store.remember_jti("iss", "old-2", EARLIER) is True
    assert await store.remember_jti("iss", "live", LATER) is True
    assert await rows() == 2


# --- connections ------------------------------------------------------------------------------


async def test_ping(store: FeedbackStore) -> None:
    assert await store.ping() is True


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


async def _assert_ping_false_quickly(url: str) -> None:
    store = await FeedbackStore.open(url, migrate=False)
    try:
        started = time.monotonic()
        assert await store.ping() is False
        assert time.monotonic() - started < 5
    finally:
        await store.close()


async def test_ping_a_closed_port_is_false_not_an_error() -> None:
    await _assert_ping_false_quickly(f"postgresql+asyncpg://postgres@127.0.0.1:{_closed_port()}/x")


async def test_ping_a_server_that_never_answers_is_false_within_its_timeout() -> None:
    # The kernel completes the TCP handshake for a listening socket nobody accepts from, so the
    # driver waits for a reply that never comes: only the ping's own timeout ends the wait.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        await _assert_ping_false_quickly(f"postgresql+asyncpg://postgres@127.0.0.1:{port}/x")


async def test_unsupported_database_urls_are_refused() -> None:
    with pytest.raises(ValueError, match="unsupported"):
        await FeedbackStore.open("mysql+aiomysql://user@localhost/db")


async def test_sqlite_uses_wal_and_waits_for_other_writers(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "dir" / "rpl-cds.db"
    store = await FeedbackStore.open(f"sqlite:///{path}")
    try:
        assert path.exists()
        with sqlite3.connect(path) as raw:
            assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        async with store.engine.connect() as connection:
            timeout = (await connection.exec_driver_sql("PRAGMA busy_timeout")).scalar_one()
        assert timeout == SQLITE_BUSY_TIMEOUT_MS
    finally:
        await store.close()
