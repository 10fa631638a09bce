"""Issued cards recorded in batches, against real databases: written together within the
interval, written at shutdown, kept through a database failure, bounded when it lasts."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from prometheus_client import Counter, Gauge
from support.db import BACKENDS, database_url
from support.feedback_records import issued
from support.patients import Scenario, workup_request

from service.feedback.issued_writer import IssuedCardWriter
from service.feedback.store import FeedbackStore
from service.feedback.tables import issued_cards
from service.ops.metrics import Metrics

DROPPED = "rpl_cds_issued_card_records_dropped_total"
PENDING = "rpl_cds_issued_card_records_pending"


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[FeedbackStore]:
    async with database_url(str(request.param), tmp_path) as url:
        opened = await FeedbackStore.open(url)
        try:
            yield opened
        finally:
            await opened.close()


def writer_metrics(metrics: Metrics) -> tuple[Counter, Gauge]:
    return metrics.issued_dropped, metrics.issued_pending


async def recorded(store: FeedbackStore) -> list[str]:
    async with store.engine.connect() as connection:
        rows = await connection.execute(sa.select(issued_cards.c.uuid).order_by("uuid"))
        return [row[0] for row in rows]


def count_commits(store: FeedbackStore) -> list[int]:
    commits = [0]

    def on_commit(_: Any) -> None:
        commits[0] += 1

    sa.event.listen(store.engine.sync_engine, "commit", on_commit)
    return commits


async def rename_table(store: FeedbackStore, old: str, new: str) -> None:
    async with store.engine.begin() as connection:
        await connection.execute(sa.text(f"ALTER TABLE {old} RENAME TO {new}"))


async def test_cards_of_many_calls_are_written_together(store: FeedbackStore) -> None:
    commits = count_commits(store)
    writer = IssuedCardWriter(store, *writer_metrics(Metrics()), interval=0.05)
    for n in range(20):
        writer.add([issued(f"card-{n:02}-a"), issued(f"card-{n:02}-b")])
    # A re-sent hookInstance repeats its uuids: recorded once.
    writer.add([issued("card-00-a")])
    assert await recorded(store) == []
    await asyncio.sleep(0.3)
    assert len(await recorded(store)) == 40
    assert commits == [1]
    await writer.close()


async def test_close_writes_what_is_pending(store: FeedbackStore) -> None:
    writer = IssuedCardWriter(store, *writer_metrics(Metrics()), interval=60)
    writer.add([issued("card-1"), issued("card-2")])
    await writer.close()
    assert await recorded(store) == ["card-1", "card-2"]


async def test_a_failed_write_is_kept_and_retried(
    store: FeedbackStore, caplog: pytest.LogCaptureFixture
) -> None:
    writer = IssuedCardWriter(store, *writer_metrics(Metrics()), interval=0.05)
    await rename_table(store, "issued_cards", "issued_cards_away")
    writer.add([issued("card-1")])
    await writer.flush()
    assert writer.pending == 1
    assert "recording issued cards failed; 1 kept for the next try" in caplog.text
    writer.add([issued("card-2")])
    await rename_table(store, "issued_cards_away", "issued_cards")
    # Retried by the writer itself (after a backoff of two intervals), with no call to flush.
    for _ in range(60):
        if await recorded(store):
            break
        await asyncio.sleep(0.05)
    assert await recorded(store) == ["card-1", "card-2"]
    await writer.close()


async def test_a_long_outage_drops_the_oldest_cards_and_counts_them(
    store: FeedbackStore,
) -> None:
    metrics = Metrics()
    writer = IssuedCardWriter(store, *writer_metrics(metrics), interval=60, max_pending=3)
    await rename_table(store, "issued_cards", "issued_cards_away")
    writer.add([issued("card-1"), issued("card-2")])
    await writer.flush()
    writer.add([issued("card-3"), issued("card-4")])
    assert writer.pending == 3
    assert metrics.registry.get_sample_value(DROPPED) == 1
    assert metrics.registry.get_sample_value(PENDING) == 3
    await rename_table(store, "issued_cards_away", "issued_cards")
    await writer.close()
    assert await recorded(store) == ["card-2", "card-3", "card-4"]
    assert metrics.registry.get_sample_value(PENDING) == 0


async def test_shutdown_records_the_cards_of_the_last_calls(make_client: Any) -> None:
    scenario = Scenario("two").female().miscarriage("2023-02-01").miscarriage("2023-09-01")
    async with make_client() as client:
        answer = await client.post("/cds-services/rpl-workup", json=workup_request(scenario))
        uuids = sorted(card["uuid"] for card in answer.json()["cards"])
    async with make_client() as client:
        topics = (await client.get("/analytics/feedback")).json()["topics"]
    assert uuids
    assert sum(topic["issued"] for topic in topics) == len(uuids)
