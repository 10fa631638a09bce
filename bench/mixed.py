"""A keep-alive load driver for the reliability benchmark: like bench/loadgen.py (whose request
builder and response reader it uses), but each request is made on the spot (feedback with fresh
card uuids, hook calls of several kinds), and every request's fate is kept: when it was sent, on
a connection made when, its status, Retry-After, latency, or the error that ended it. The
scenarios judge those records (what was acknowledged, what was cut by a signal or a kill).

It runs in the benchmark's own event loop: the service under test is always another process.
Every loop is bounded by a request count and a deadline.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from bench.loadgen import build_request, read_answer

LOOPBACK = "127.0.0.1"
REQUEST_TIMEOUT = 30.0
PROBE_TIMEOUT = 2.0
# A refused connection is retried after this pause (when the scenario retries at all), so that a
# stopped service does not turn the driver into a busy loop.
RECONNECT_PAUSE = 0.05


@dataclass(frozen=True)
class Planned:
    """One request to send."""

    kind: str  # "pv-30", "feedback", ...
    path: str
    body: bytes
    items: tuple[str, ...] = ()  # feedback: the card uuids it carries
    headers: Mapping[str, str] | None = None
    keep_body: bool = False  # keep the answer's body (feedback acknowledgements, issued cards)


@dataclass
class Outcome:
    """What became of one request (times from time.monotonic)."""

    planned: Planned
    connected_at: float  # when the connection it went on was made
    sent_at: float | None = None  # None: the connection could not be made
    status: int | None = None
    retry_after: bytes | None = None
    latency: float | None = None
    body: bytes = b""
    error: str | None = None
    answered_at: float | None = None

    @property
    def kind(self) -> str:
        return self.planned.kind


@dataclass
class Run:
    """The records of one load run, and a stop flag the scenario can raise."""

    outcomes: list[Outcome] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    def answered(self, kind: str | None = None) -> list[Outcome]:
        return [
            o for o in self.outcomes if o.status is not None and (kind is None or o.kind == kind)
        ]

    def statuses(self, kind: str | None = None) -> dict[str, int]:
        counts: dict[str, int] = {}
        for outcome in self.outcomes:
            if kind is None or outcome.kind == kind:
                key = str(outcome.status) if outcome.status is not None else "no answer"
                counts[key] = counts.get(key, 0) + 1
        return dict(sorted(counts.items()))


Plan = Callable[[int, int], Planned]  # (connection index, request number) -> request


async def _open(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection(LOOPBACK, port, limit=1 << 22)
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return reader, writer


async def _connection(
    port: int,
    plan: Plan,
    index: int,
    run: Run,
    deadline: float,
    max_requests: int,
    reconnect: bool,
) -> None:
    """Sends one request after another on a keep-alive connection until the deadline, the run's
    request bound, or the stop flag; after a failure, reconnects only when `reconnect`."""
    stream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
    connected_at = 0.0
    number = 0
    try:
        while (
            time.monotonic() < deadline
            and len(run.outcomes) < max_requests
            and not run.stop.is_set()
        ):
            planned = plan(index, number)
            number += 1
            if stream is None:
                connected_at = time.monotonic()
                try:
                    stream = await asyncio.wait_for(_open(port), REQUEST_TIMEOUT)
                except (TimeoutError, OSError) as error:
                    run.outcomes.append(
                        Outcome(planned, connected_at, error=f"connect: {type(error).__name__}")
                    )
                    if not reconnect:
                        return
                    await asyncio.sleep(RECONNECT_PAUSE)
                    continue
            reader, writer = stream
            request = build_request(LOOPBACK, port, planned.path, planned.body, planned.headers)
            sent_at = time.monotonic()
            outcome = Outcome(planned, connected_at, sent_at=sent_at)
            run.outcomes.append(outcome)
            try:
                writer.write(request)
                await writer.drain()
                answer = await asyncio.wait_for(
                    read_answer(reader, keep_body=planned.keep_body), REQUEST_TIMEOUT
                )
            except (TimeoutError, OSError, asyncio.IncompleteReadError) as error:
                outcome.error = type(error).__name__
                writer.close()
                stream = None
                if not reconnect:
                    return
                continue
            outcome.answered_at = time.monotonic()
            outcome.latency = outcome.answered_at - sent_at
            outcome.status = answer.status
            outcome.retry_after = answer.headers.get(b"retry-after")
            outcome.body = answer.body
            if not answer.keep_alive:
                writer.close()
                stream = None
    finally:
        if stream is not None:
            stream[1].close()


async def drive(
    port: int,
    plan: Plan,
    connections: int,
    duration: float,
    max_requests: int,
    run: Run | None = None,
    reconnect: bool = True,
) -> Run:
    """`connections` connections sending `plan`'s requests for at most `duration` seconds and
    `max_requests` requests in all."""
    run = run or Run()
    deadline = time.monotonic() + duration
    await asyncio.gather(
        *(
            _connection(port, plan, index, run, deadline, max_requests, reconnect)
            for index in range(connections)
        )
    )
    return run


async def get_status(port: int, path: str) -> int | None:
    """One GET on a fresh connection: its status, or None when it failed (2 s at most)."""
    try:
        reader, writer = await asyncio.wait_for(_open(port), PROBE_TIMEOUT)
    except (TimeoutError, OSError):
        return None
    try:
        writer.write(build_request(LOOPBACK, port, path, b"", method="GET"))
        await writer.drain()
        return (await asyncio.wait_for(read_answer(reader), PROBE_TIMEOUT)).status
    except (TimeoutError, OSError, asyncio.IncompleteReadError):
        return None
    finally:
        writer.close()
