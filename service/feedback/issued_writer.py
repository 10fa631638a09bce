"""Records issued cards in batches, off the request's path.

One INSERT transaction per call cost 1.3 to 2 ms of the worker's time per call (measured
in-process on the benchmark bodies), a quarter of a 200-resource patient-view, and each one
crossed to aiosqlite's thread. The calls' cards now wait up to `interval` seconds and are written
together in one transaction.

Consistency: a worker writes its pending cards before it answers an analytics read, so its own
analytics count every card it issued. Another worker's cards appear at most `interval` seconds
later. Feedback is joined to cards when analytics are read, not when it is stored, so feedback
that arrives first is not misfiled. Shutdown writes what is pending; a killed worker loses the
cards of its last `interval`.

A database outage keeps the cards pending and retries, less often while it lasts (at most every
MAX_RETRY_SECONDS), up to `max_pending` cards; beyond that the oldest are dropped, counted in a
metric and logged. How many wait is a gauge, so an outage shows on the metrics.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Final

from prometheus_client import Counter, Gauge

from service.feedback.outage import outage_reason
from service.feedback.records import IssuedCard
from service.feedback.store import FeedbackStore

log = logging.getLogger("rpl_cds.feedback")

DEFAULT_INTERVAL_SECONDS: Final = 0.2
# About 100 bytes of Python objects a card: tens of MB at most, hours of cards at a busy site.
DEFAULT_MAX_PENDING: Final = 200_000
MAX_RETRY_SECONDS: Final = 30.0


class IssuedCardWriter:
    def __init__(
        self,
        store: FeedbackStore,
        dropped: Counter,
        pending: Gauge,
        *,
        interval: float = DEFAULT_INTERVAL_SECONDS,
        max_pending: int = DEFAULT_MAX_PENDING,
    ) -> None:
        self._store = store
        self._dropped = dropped
        self._pending_gauge = pending
        self._interval = interval
        self._max_pending = max_pending
        # By uuid, in arrival order: a client re-sending a hookInstance repeats the uuids, and the
        # first issue is the one recorded (as the store itself does).
        self._pending: dict[str, IssuedCard] = {}
        self._lock = asyncio.Lock()
        self._scheduled: asyncio.Task[None] | None = None
        self._closed = False
        self._failures = 0

    @property
    def pending(self) -> int:
        return len(self._pending)

    def add(self, cards: Sequence[IssuedCard]) -> None:
        """Queue one call's cards; they are written within `interval` seconds."""
        if not cards:
            return
        for card in cards:
            self._pending.setdefault(card.uuid, card)
        self._drop_beyond_limit()
        self._pending_gauge.set(len(self._pending))
        self._ensure_timer()

    async def flush(self) -> None:
        """Write everything pending now. A failure is logged and the cards stay pending."""
        async with self._lock:
            if not self._pending:
                return
            batch = list(self._pending.values())
            self._pending.clear()
            try:
                await self._store.record_issued(batch)
            # Whatever the driver raises for an outage: the cards are kept for the next try.
            except Exception as error:
                self._failures += 1
                log.error(
                    "recording issued cards failed; %d kept for the next try: %s",
                    len(batch),
                    outage_reason(error) or type(error).__name__,
                )
                # Back in front of anything that arrived meanwhile, keeping arrival order.
                self._pending = {card.uuid: card for card in batch} | self._pending
                self._drop_beyond_limit()
                self._ensure_timer()
            else:
                self._failures = 0
            finally:
                self._pending_gauge.set(len(self._pending))

    async def close(self) -> None:
        """Write what is pending (before the store closes)."""
        self._closed = True
        if self._scheduled is not None and not self._scheduled.done():
            # Stops a timer; a write it started runs on (shielded), and flush() waits for it.
            self._scheduled.cancel()
        await self.flush()
        if self._pending:
            self._dropped.inc(len(self._pending))
            log.error("issued-card records lost at shutdown: %d not written", len(self._pending))
            self._pending.clear()
            self._pending_gauge.set(0)

    def _ensure_timer(self) -> None:
        if not self._closed and (self._scheduled is None or self._scheduled.done()):
            self._scheduled = asyncio.ensure_future(self._flush_later())

    async def _flush_later(self) -> None:
        # Until nothing is pending: cards that came during a write, or a failed batch (retried
        # less often while the failures last).
        while self._pending and not self._closed:
            backoff = min(self._interval * 2**self._failures, MAX_RETRY_SECONDS)
            await asyncio.sleep(backoff)
            # Shielded: cancelling the timer must not abandon a transaction with its batch.
            await asyncio.shield(self.flush())

    def _drop_beyond_limit(self) -> None:
        excess = len(self._pending) - self._max_pending
        if excess <= 0:
            return
        for uuid in list(self._pending)[:excess]:
            del self._pending[uuid]
        self._dropped.inc(excess)
        log.error("issued-card records dropped: %d not written (database unavailable?)", excess)
