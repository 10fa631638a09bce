"""SIGTERM to `rpl-cds serve` while 32 connections post hook calls and feedback, as a rolling update
does it: every request the service had accepted is answered, every feedback item it acknowledged
and every card it issued is in the database afterwards, and the process exits within
RPL_CDS_SHUTDOWN_GRACE_SECONDS, with one worker and with two.

What a request may meet after the signal is the closed door: its connection, opened after the
signal, is refused, or reset before any answer when the kernel had queued it just as the last
worker stopped listening (the service never read it; see service/ops/graceful_shutdown.py). A
request on a connection made before the signal must be answered, whatever it was doing.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine
from support.db import database_url
from support.fault_server import FaultServer, Json, Wait
from support.live_service import LiveService, live_service
from support.patients import Scenario, workup_request

from service.feedback import tables
from service.feedback.database import normalise_url

CONNECTIONS = 32
GRACE_SECONDS = 10
# Enough answered calls before the signal that every connection is open and busy.
BEFORE_SIGNAL = 6 * CONNECTIONS
# Bounds on the load, far beyond what the test needs: it ends when the service stops listening.
MAX_REQUESTS = 20_000
MAX_SECONDS = 60.0
WORKUP = "rpl-workup"


@dataclass
class Sent:
    """One request as the client saw it (times from time.monotonic)."""

    kind: str
    feedback_cards: list[str] = field(default_factory=list)
    connect_started: float | None = None  # None: it went on a connection made earlier
    answer_started: bool = False
    finished: float = 0.0
    status: int | None = None
    body: Any = None
    error: str | None = None

    async def trace(self, event: str, _: dict[str, Any]) -> None:
        if event.endswith("connect_tcp.started"):
            self.connect_started = time.monotonic()
        elif event.endswith("receive_response_headers.complete"):
            self.answer_started = True


@dataclass
class Load:
    sent: list[Sent] = field(default_factory=list)
    answered: int = 0
    signalled_at: float | None = None

    def closed_door(self, request: Sent) -> bool:
        """It failed before any answer, on a connection it opened after the signal."""
        return (
            self.signalled_at is not None
            and request.connect_started is not None
            and request.connect_started >= self.signalled_at
            and not request.answer_started
        )


def _feedback(cards: list[str]) -> dict[str, Any]:
    now = datetime.now(UTC).isoformat()
    return {
        "feedback": [
            {"card": card, "outcome": "overridden", "outcomeTimestamp": now} for card in cards
        ]
    }


async def _one(client: httpx.AsyncClient, load: Load, number: int) -> Sent:
    if number % 2:
        request = Sent("feedback", feedback_cards=[str(uuid.uuid4()), str(uuid.uuid4())])
        url, body = f"/cds-services/{WORKUP}/feedback", _feedback(request.feedback_cards)
    else:
        scenario = Scenario("two").female().miscarriage("2023-02-01").miscarriage("2023-09-01")
        request = Sent("call")
        url, body = f"/cds-services/{WORKUP}", workup_request(scenario)
    load.sent.append(request)
    try:
        response = await client.post(url, json=body, extensions={"trace": request.trace})
    except httpx.TransportError as error:
        request.error = f"{type(error).__name__}: {error}"
    else:
        request.status = response.status_code
        request.body = response.json()
        load.answered += 1
    request.finished = time.monotonic()
    return request


async def _connection(client: httpx.AsyncClient, load: Load, first: int, deadline: float) -> None:
    """Posts, one request after another, until a request fails or a bound is reached."""
    number = first
    while len(load.sent) < MAX_REQUESTS and time.monotonic() < deadline:
        request = await _one(client, load, number)
        number += 1
        if request.error is not None:
            return


async def _load_through_sigterm(service: LiveService) -> tuple[Load, float]:
    """Runs the load, sends SIGTERM once it flows, and returns it with the seconds from the
    signal to the process's exit."""
    load = Load()
    deadline = time.monotonic() + MAX_SECONDS
    limits = httpx.Limits(max_connections=CONNECTIONS, max_keepalive_connections=CONNECTIONS)
    async with httpx.AsyncClient(base_url=service.url, limits=limits, timeout=30) as client:
        posting = [
            asyncio.create_task(_connection(client, load, index, deadline))
            for index in range(CONNECTIONS)
        ]
        try:
            while load.answered < BEFORE_SIGNAL and time.monotonic() < deadline:
                assert not all(task.done() for task in posting), "the load stopped early"
                await asyncio.sleep(0.01)
            load.signalled_at = time.monotonic()
            service.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(service.process.wait, GRACE_SECONDS + 20)
            except subprocess.TimeoutExpired:
                pytest.fail(f"not stopped {GRACE_SECONDS + 20} s after SIGTERM")
            exited_after = time.monotonic() - load.signalled_at
            await asyncio.wait_for(asyncio.gather(*posting), timeout=MAX_SECONDS)
        finally:
            for task in posting:
                task.cancel()
    return load, exited_after


async def _stored(database_url: str) -> tuple[set[str], set[str]]:
    """The feedback card uuids and the issued card uuids in the service's database."""
    engine = create_async_engine(normalise_url(database_url))
    try:
        async with engine.connect() as db:
            feedback = set((await db.execute(sa.select(tables.feedback.c.card_uuid))).scalars())
            issued = set((await db.execute(sa.select(tables.issued_cards.c.uuid))).scalars())
    finally:
        await engine.dispose()
    return feedback, issued


@pytest.mark.parametrize(
    ("workers", "backend"),
    [("1", "sqlite"), ("2", "sqlite"), pytest.param("2", "postgres", marks=pytest.mark.postgres)],
)
async def test_sigterm_under_load_loses_no_accepted_request(
    tmp_path: Path, workers: str, backend: str
) -> None:
    data = tmp_path / "data"
    async with database_url(backend, data) as url:
        env = {"RPL_CDS_SHUTDOWN_GRACE_SECONDS": str(GRACE_SECONDS), "RPL_CDS_DATABASE_URL": url}
        with live_service(data, "--workers", workers, env=env) as service:
            load, exited_after = await _load_through_sigterm(service)
            returncode = service.process.returncode
            output = service.output()
        feedback, issued = await _stored(url)
    assert load.signalled_at is not None

    failed = [r for r in load.sent if r.error is not None]
    cut = [r for r in failed if not load.closed_door(r)]
    assert not cut, f"{len(cut)} accepted request(s) not answered, e.g. {cut[:3]}\n{output[-3000:]}"
    assert failed, "the load ended before the service stopped listening"
    answered = [r for r in load.sent if r.error is None]
    assert {r.status for r in answered} == {200}, {r.status for r in answered}
    assert any(r.finished > load.signalled_at for r in answered), "nothing answered after SIGTERM"

    # Stopped by the signal: uvicorn re-raises it after a one-process shutdown; the supervisor of
    # several workers returns, and `serve` with it.
    assert returncode in (0, -signal.SIGTERM), output[-3000:]
    assert exited_after < GRACE_SECONDS, f"exited {exited_after:.1f} s after SIGTERM"

    acknowledged = {card for r in answered for card in r.feedback_cards}
    assert acknowledged, "no feedback was acknowledged"
    assert acknowledged - feedback == set(), "feedback acknowledged with 200 but not stored"
    cards = {card["uuid"] for r in answered if r.kind == "call" for card in r.body["cards"]}
    assert cards, "no cards were issued"
    assert cards - issued == set(), "cards issued but not recorded: the writer did not flush"


def _knock(url: str, deadline: float) -> str:
    """Knocks until the door is closed: "refused" once connecting fails, or how a connection that
    was made went unanswered (a listening socket that nobody serves any more)."""
    while time.monotonic() < deadline:
        try:
            httpx.get(f"{url}/healthz", timeout=5)
        except httpx.ConnectError:
            return "refused"
        except httpx.TransportError as error:
            return f"connected, then {type(error).__name__}"
        time.sleep(0.02)  # still answered: not every worker has stopped listening yet
    return "still answering"


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_call_outlasting_the_grace_period_is_cut_off_behind_a_closed_door(
    tmp_path: Path, workers: str
) -> None:
    """While a call holds the shutdown (its FHIR server never answers), new connections are
    refused at once rather than queued for nobody, and the grace period ends the wait."""
    grace = 3
    release = threading.Event()
    with FaultServer() as fhir:
        fhir.route("", Wait(release, Json({"resourceType": "Bundle", "type": "searchset"})))
        env = {
            "RPL_CDS_SHUTDOWN_GRACE_SECONDS": str(grace),
            "RPL_CDS_FHIR_ALLOW_HTTP": "true",
            "RPL_CDS_FHIR_TIME_BUDGET_SECONDS": "60",
        }
        with (
            live_service(tmp_path / "data", "--workers", workers, env=env) as service,
            ThreadPoolExecutor(1) as pending,
        ):
            body = workup_request(Scenario("waiting").female(), fhirServer=fhir.base_url)
            del body["prefetch"]
            call = pending.submit(
                httpx.post, f"{service.url}/cds-services/{WORKUP}", json=body, timeout=30
            )
            deadline = time.monotonic() + 20
            while not fhir.requests and time.monotonic() < deadline:
                time.sleep(0.01)
            assert fhir.requests, "the call never reached the FHIR server"
            signalled_at = time.monotonic()
            service.process.send_signal(signal.SIGTERM)
            door = _knock(service.url, signalled_at + grace)
            service.process.wait(timeout=30)
            exited_after = time.monotonic() - signalled_at
            release.set()
            with suppress(httpx.TransportError):
                call.result(timeout=30)
    assert door == "refused"
    # Without the bound the call would hold the process for the FHIR budget (60 s).
    assert exited_after < grace + 10, f"exited {exited_after:.1f} s after SIGTERM"
    assert "timeout graceful shutdown exceeded" in service.output()
