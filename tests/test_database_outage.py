"""The database goes away mid-load and comes back, with the real service on a real socket.

While it is away, hook calls keep answering (their issued-card records wait in memory, counted on
/metrics); feedback, analytics and an authenticated call (the JWT replay cache lives in the
database) answer 503 with Retry-After and a `transient` OperationOutcome, promptly; /readyz says
the database is not ready and why, without the connection string. When it is back, everything
recovers without a restart: feedback is stored, the waiting cards are written, /readyz is 200.

PostgreSQL is reached through a proxy the test cuts (the server went away: connections closed,
new ones refused) or stalls (a partition: nothing answers, only timeouts end the wait). SQLite is
locked by another writer's open transaction, or its disk is full (a size-limited tmpfs).
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from support.calls import ORDER_SIGN, WORKUP, two_losses
from support.contract import assert_documented
from support.db import postgres_database, sqlite_url
from support.feedback_calls import issue_card, overridden
from support.jwt_tokens import SigningKey, bearer, mint, new_es384_key, write_jwks
from support.live_server import live_server
from support.patients import workup_request
from support.tcp_proxy import TcpProxy
from support.tiny_disk import filled, tiny_filesystem

from service.feedback.outage import outage_reason
from service.settings import IssuerConfig, Settings

FEEDBACK = f"{ORDER_SIGN}/feedback"
FEEDBACK_PATH = "/cds-services/{service_id}/feedback"
PENDING = "rpl_cds_issued_card_records_pending"
DROPPED = "rpl_cds_issued_card_records_dropped_total"
# Sent in the database URL (the local server trusts loopback and ignores it): no answer may show it.
PASSWORD = "pw-never-shown-4711"
EHR = "https://ehr.example"
# Every HTTP call is bounded: a request the timeouts fail to end fails the test instead of hanging
# it. The service's own database timeouts in these tests add up to 2 s.
CLIENT_TIMEOUT = httpx.Timeout(20.0)
# The writer retries with a backoff that grows to 30 s; a few failures during a short outage mean
# a retry within seconds, this is the bound.
RECOVERY_SECONDS = 40.0
LOAD_FEEDBACK = 20
LOAD_HOOK_CALLS = 5


def outage_settings(data_dir: Path, **overrides: Any) -> Settings:
    return Settings(
        data_dir=data_dir,
        database_connect_timeout_seconds=1.0,
        database_statement_timeout_seconds=1.0,
        **overrides,
    )


def client_for(base_url: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=base_url, timeout=CLIENT_TIMEOUT)


async def metric(client: httpx.AsyncClient, name: str) -> float:
    text = (await client.get("/metrics")).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                return float(sample.value)
    raise AssertionError(f"{name} not in /metrics")


async def eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
    deadline = time.monotonic() + RECOVERY_SECONDS
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {RECOVERY_SECONDS} s: {what}")
        await asyncio.sleep(0.2)


async def no_cards_pending(client: httpx.AsyncClient) -> None:
    async def written() -> bool:
        return await metric(client, PENDING) == 0

    await eventually(written, "the issued cards are written")


async def ready(client: httpx.AsyncClient) -> None:
    async def answers() -> bool:
        return (await client.get("/readyz")).status_code == 200

    await eventually(answers, "/readyz answers 200")


def assert_unavailable(response: httpx.Response, path: str, method: str = "POST") -> str:
    """A documented 503 with Retry-After and a `transient` OperationOutcome; its diagnostics."""
    assert response.status_code == 503, response.text
    body = assert_documented(response, path, method)
    assert int(response.headers["retry-after"]) > 0
    assert {issue["code"] for issue in body["issue"]} == {"transient"}
    assert PASSWORD not in response.text
    diagnostics: str = body["issue"][0]["diagnostics"]
    return diagnostics


async def issue_workup_cards(client: httpx.AsyncClient, calls: int) -> int:
    """Hook calls that must answer with their cards whatever the database does; how many cards."""
    cards = 0
    for _ in range(calls):
        answer = await client.post(WORKUP, json=workup_request(two_losses()))
        assert answer.status_code == 200, answer.text
        assert answer.json()["cards"]
        cards += len(answer.json()["cards"])
    return cards


async def analytics(client: httpx.AsyncClient) -> dict[str, dict[str, Any]]:
    answer = await client.get("/analytics/feedback")
    assert answer.status_code == 200, answer.text
    return {topic["topic"]: topic for topic in answer.json()["topics"]}


# --------------------------------------------------------------------------- PostgreSQL


@pytest.fixture
async def proxied_postgres() -> AsyncIterator[tuple[str, TcpProxy]]:
    """A fresh PostgreSQL database reached through a proxy; its URL (with a password) and the
    proxy."""
    async with postgres_database() as url:
        server = make_url(url)
        with TcpProxy(server.host or "127.0.0.1", server.port or 5432) as proxy:
            through_proxy = server.set(port=proxy.port, password=PASSWORD)
            yield through_proxy.render_as_string(hide_password=False), proxy


@pytest.mark.postgres
async def test_postgres_goes_away_and_comes_back(
    proxied_postgres: tuple[str, TcpProxy], tmp_path: Path
) -> None:
    url, proxy = proxied_postgres
    with live_server(outage_settings(tmp_path, database_url=url)) as base_url:
        async with client_for(base_url) as client:
            before = await issue_card(client)
            acknowledged = await client.post(FEEDBACK, json={"feedback": [overridden(before)]})
            assert acknowledged.json() == {"received": 1, "stored": 1}
            await no_cards_pending(client)

            proxy.cut()
            during = await issue_card(client)
            cards_during = 1 + await issue_workup_cards(client, 3)
            feedback = {"feedback": [overridden(during)]}
            refused = await client.post(FEEDBACK, json=feedback)
            assert "database is unavailable" in assert_unavailable(refused, FEEDBACK_PATH)
            assert_unavailable(
                await client.get("/analytics/feedback"), "/analytics/feedback", "GET"
            )
            not_ready = await client.get("/readyz")
            reason = assert_unavailable(not_ready, "/readyz", "GET")
            assert "database" in reason
            assert "connection refused" in reason or "connection lost" in reason
            assert str(proxy.port) not in not_ready.text
            # The cards of the calls answered meanwhile wait in memory, and the metric says so.
            assert await metric(client, PENDING) == cards_during

            proxy.restore()
            await ready(client)
            # The 503 stored nothing: the client's retry stores the feedback, once.
            stored = await client.post(FEEDBACK, json=feedback)
            assert stored.json() == {"received": 1, "stored": 1}
            await no_cards_pending(client)
            topics = await analytics(client)
            assert await metric(client, DROPPED) == 0

    assert topics["warn-lit"]["issued"] == 2
    assert topics["warn-lit"]["overridden"] == 2  # acknowledged before the cut, and retried
    assert sum(topic["issued"] for topic in topics.values()) == 1 + cards_during


@pytest.mark.postgres
async def test_postgres_cut_under_load_loses_no_acknowledged_feedback(
    proxied_postgres: tuple[str, TcpProxy], tmp_path: Path
) -> None:
    """Feedback and hook calls in flight when the server goes away: each feedback is either
    acknowledged (and then kept) or refused with 503 (and then stored when the client retries),
    and every hook call answers with its cards."""
    url, proxy = proxied_postgres
    with live_server(outage_settings(tmp_path, database_url=url)) as base_url:
        async with client_for(base_url) as client:
            cards = [await issue_card(client) for _ in range(LOAD_FEEDBACK)]

            answers: dict[str, int] = {}
            acknowledged = asyncio.Event()

            async def send(card: dict[str, Any]) -> httpx.Response:
                return await client.post(FEEDBACK, json={"feedback": [overridden(card)]})

            async def sender(share: list[dict[str, Any]]) -> None:
                # One after the other, so that some are sent before the cut and some after it.
                for card in share:
                    answers[card["uuid"]] = (await send(card)).status_code
                    acknowledged.set()

            async def cut_midway() -> None:
                await asyncio.wait_for(acknowledged.wait(), CLIENT_TIMEOUT.read)
                await asyncio.to_thread(proxy.cut)

            await asyncio.gather(
                sender(cards[0::2]),
                sender(cards[1::2]),
                issue_workup_cards(client, LOAD_HOOK_CALLS),
                cut_midway(),
            )
            assert set(answers.values()) <= {200, 503}
            assert 200 in answers.values()
            refused = [card for card in cards if answers[card["uuid"]] == 503]
            assert refused, "the cut came after the load: nothing was tested"

            proxy.restore()
            await ready(client)
            for card in refused:
                # A 503 can follow a commit whose answer was lost: the retry is then stored 0.
                assert (await send(card)).json()["received"] == 1
            await no_cards_pending(client)
            topics = await analytics(client)
    assert topics["warn-lit"]["overridden"] == LOAD_FEEDBACK


@pytest.mark.postgres
async def test_postgres_that_stops_answering_gives_503_not_a_hang(
    proxied_postgres: tuple[str, TcpProxy], tmp_path: Path
) -> None:
    """A partition: connections stay open and nothing answers. Only the service's own connect and
    statement timeouts end the wait (CLIENT_TIMEOUT fails the test if they do not)."""
    url, proxy = proxied_postgres
    with live_server(outage_settings(tmp_path, database_url=url)) as base_url:
        async with client_for(base_url) as client:
            card = await issue_card(client)
            assert (await client.get("/readyz")).status_code == 200

            proxy.stall()
            feedback = {"feedback": [overridden(card)]}
            refused = await client.post(FEEDBACK, json=feedback)
            assert "timed out" in assert_unavailable(refused, FEEDBACK_PATH)
            assert "timed out" in assert_unavailable(await client.get("/readyz"), "/readyz", "GET")
            await issue_workup_cards(client, 1)

            proxy.restore()
            await ready(client)
            stored = await client.post(FEEDBACK, json=feedback)
            assert stored.json() == {"received": 1, "stored": 1}
            await no_cards_pending(client)


@pytest.fixture
def signing_key(tmp_path: Path) -> SigningKey:
    key = new_es384_key()
    write_jwks(tmp_path / "ehr.jwks", key)
    return key


@pytest.mark.postgres
async def test_replay_cache_outage_is_503_not_401(
    proxied_postgres: tuple[str, TcpProxy], tmp_path: Path, signing_key: SigningKey
) -> None:
    url, proxy = proxied_postgres
    issuers = {EHR: IssuerConfig(jwks_file=tmp_path / "ehr.jwks")}
    public = "https://cds.test"
    settings = outage_settings(
        tmp_path, database_url=url, auth_issuers=issuers, public_base_url=public
    )
    with live_server(settings) as base_url:
        async with client_for(base_url) as client:

            def signed() -> dict[str, str]:
                return {"authorization": bearer(mint(signing_key, iss=EHR, aud=public + WORKUP))}

            call = workup_request(two_losses())
            assert (await client.post(WORKUP, json=call, headers=signed())).status_code == 200

            proxy.cut()
            headers = signed()
            refused = await client.post(WORKUP, json=call, headers=headers)
            assert_unavailable(refused, "/cds-services/{service_id}")
            assert "www-authenticate" not in refused.headers

            proxy.restore()
            await ready(client)
            # The token's jti was not recorded during the outage, so the client's retry of the
            # same request is accepted; a replay of it afterwards is not.
            assert (await client.post(WORKUP, json=call, headers=headers)).status_code == 200
            replayed = await client.post(WORKUP, json=call, headers=headers)
            assert replayed.status_code == 401


# --------------------------------------------------------------------------- SQLite


async def test_sqlite_locked_by_another_writer(tmp_path: Path) -> None:
    database = tmp_path / "rpl-cds.db"
    settings = outage_settings(tmp_path / "data", database_url=sqlite_url(tmp_path))
    with live_server(settings) as base_url:
        async with client_for(base_url) as client:
            before = await issue_card(client)
            acknowledged = await client.post(FEEDBACK, json={"feedback": [overridden(before)]})
            assert acknowledged.json()["stored"] == 1
            await no_cards_pending(client)

            other_writer = sqlite3.connect(database, isolation_level=None)
            try:
                other_writer.execute("BEGIN EXCLUSIVE")
                during = await issue_card(client)
                await issue_workup_cards(client, 2)
                feedback = {"feedback": [overridden(during)]}
                refused = await client.post(FEEDBACK, json=feedback)
                assert "locked by another writer" in assert_unavailable(refused, FEEDBACK_PATH)
                # Readers are not blocked (WAL): the service stays in rotation while a writer
                # holds the lock, which is normally a matter of milliseconds.
                assert (await client.get("/readyz")).status_code == 200
                assert await metric(client, PENDING) > 0
            finally:
                other_writer.execute("ROLLBACK")
                other_writer.close()

            stored = await client.post(FEEDBACK, json=feedback)
            assert stored.json() == {"received": 1, "stored": 1}
            await no_cards_pending(client)
            topics = await analytics(client)
    assert topics["warn-lit"]["issued"] == 2
    assert topics["warn-lit"]["overridden"] == 2


async def test_sqlite_disk_full(tmp_path: Path) -> None:
    """A full disk, simulated with a 1 MiB tmpfs holding the database, filled to the last byte."""
    with tiny_filesystem(tmp_path / "disk") as disk:
        settings = outage_settings(tmp_path / "data", database_url=sqlite_url(disk))
        with live_server(settings) as base_url:
            async with client_for(base_url) as client:
                before = await issue_card(client)
                acknowledged = await client.post(FEEDBACK, json={"feedback": [overridden(before)]})
                assert acknowledged.json()["stored"] == 1
                await no_cards_pending(client)

                with filled(disk):
                    during = await issue_card(client)
                    await issue_workup_cards(client, 2)
                    feedback = {"feedback": [overridden(during)]}
                    refused = await client.post(FEEDBACK, json=feedback)
                    assert "disk full" in assert_unavailable(refused, FEEDBACK_PATH)
                    assert await metric(client, PENDING) > 0

                stored = await client.post(FEEDBACK, json=feedback)
                assert stored.json() == {"received": 1, "stored": 1}
                await no_cards_pending(client)
                topics = await analytics(client)
    assert topics["warn-lit"]["issued"] == 2
    assert topics["warn-lit"]["overridden"] == 2


# --------------------------------------------------------------------------- classification


def _sqlite_error(message: str, name: str) -> sqlite3.OperationalError:
    error = sqlite3.OperationalError(message)
    error.sqlite_errorname = name
    return error


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (
            ConnectionRefusedError(111, "Connect call failed ('10.0.0.7', 5432)"),
            "connection refused",
        ),
        (TimeoutError(), "timed out"),
        (asyncpg.exceptions.InterfaceError("connection is closed"), "connection lost"),
        (asyncpg.exceptions.ConnectionDoesNotExistError("closed mid-operation"), "connection lost"),
        (
            asyncpg.exceptions.CannotConnectNowError("the database system is starting up"),
            "shutting down or starting up",
        ),
        (
            asyncpg.exceptions.TooManyConnectionsError("sorry, too many clients"),
            "too many connections",
        ),
        (
            DBAPIError("INSERT", {}, _sqlite_error("database is locked", "SQLITE_BUSY")),
            "locked by another writer",
        ),
        (
            DBAPIError("INSERT", {}, _sqlite_error("database or disk is full", "SQLITE_FULL")),
            "disk full",
        ),
        (ValueError("card uuid is longer than 64 characters"), None),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, BaseException) else None,
)
def test_outage_reasons_are_fixed_safe_words(error: BaseException, reason: str | None) -> None:
    """What the drivers raise for an outage becomes a reason in the service's own words (never the
    driver's message, which can name hosts and users); anything else is not an outage."""
    assert outage_reason(error) == reason
