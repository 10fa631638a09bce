"""POST /cds-services/{id}/feedback and GET /analytics/feedback through real HTTP."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest
from support.calls import ORDER_SIGN, PEERS, WORKUP, assert_outcome, two_losses
from support.feedback_calls import issue_card, overridden
from support.patients import TWO_LOSSES_ESHRE, workup_request


async def test_feedback_is_stored_once_and_summarised(client: httpx.AsyncClient) -> None:
    card = await issue_card(client)
    body = {"feedback": [overridden(card)]}
    first = await client.post(f"{ORDER_SIGN}/feedback", json=body)
    again = await client.post(f"{ORDER_SIGN}/feedback", json=body)
    assert first.json() == {"received": 1, "stored": 1}
    assert again.json() == {"received": 1, "stored": 0}
    later = {"feedback": [overridden(card, "2026-11-21T11:00:00+01:00")]}
    assert (await client.post(f"{ORDER_SIGN}/feedback", json=later)).json()["stored"] == 1

    summary = (await client.get("/analytics/feedback")).json()["topics"]
    lit = next(t for t in summary if t["topic"] == "warn-lit")
    assert lit["issued"] == 1
    # Both rows are stored, but rates count cards: a re-sent decision must not inflate them.
    assert lit["overridden"] == 1
    reason = lit["overrideReasons"][0]
    assert reason["count"] == 1
    assert reason["display"] == card["overrideReasons"][0]["display"]


async def test_accepted_feedback_and_filter_by_service(client: httpx.AsyncClient) -> None:
    await issue_card(client)
    workup_card = (await client.post(WORKUP, json=workup_request(two_losses()))).json()["cards"][0]
    accepted = {
        "feedback": [
            {
                "card": workup_card["uuid"],
                "outcome": "accepted",
                "acceptedSuggestions": [{"id": str(uuid.uuid4())}],
                "outcomeTimestamp": "2026-11-21T10:05:31Z",
            }
        ]
    }
    assert (await client.post(f"{WORKUP}/feedback", json=accepted)).status_code == 200
    only_workup = (await client.get("/analytics/feedback", params={"service": "rpl-workup"})).json()
    by_topic = {t["topic"]: t for t in only_workup["topics"]}
    assert set(by_topic) == TWO_LOSSES_ESHRE  # no order-safety topic: filtered by service
    assert by_topic[workup_card["source"]["topic"]["code"]]["accepted"] == 1


@pytest.mark.parametrize(
    ("item", "mentions"),
    [
        (
            {
                "card": "not-a-uuid",
                "outcome": "overridden",
                "outcomeTimestamp": "2026-01-01T00:00:00Z",
            },
            "card",
        ),
        (
            {
                "card": str(uuid.uuid4()),
                "outcome": "accepted",
                "outcomeTimestamp": "2026-01-01T00:00:00Z",
            },
            "acceptedSuggestions",
        ),
        (
            {
                "card": str(uuid.uuid4()),
                "outcome": "ignored",
                "outcomeTimestamp": "2026-01-01T00:00:00Z",
            },
            "outcome",
        ),
        ({"card": str(uuid.uuid4()), "outcome": "overridden"}, "outcomeTimestamp"),
        (
            {
                "card": str(uuid.uuid4()),
                "outcome": "overridden",
                "outcomeTimestamp": "2026-01-01T00:00:00",
            },
            "outcomeTimestamp",
        ),
        (
            {
                "card": str(uuid.uuid4()),
                "outcome": "overridden",
                "outcomeTimestamp": "2026-01-01T00:00:00Z",
                "overrideReason": {"reason": {"code": "x"}},
            },
            "system",
        ),
    ],
)
async def test_invalid_feedback_is_400(
    client: httpx.AsyncClient, item: dict[str, Any], mentions: str
) -> None:
    response = await client.post(f"{WORKUP}/feedback", json={"feedback": [item]})
    assert_outcome(response, 400, mentions)


async def test_empty_feedback_and_unknown_service(client: httpx.AsyncClient) -> None:
    assert_outcome(await client.post(f"{WORKUP}/feedback", json={"feedback": []}), 400, "feedback")
    response = await client.post("/cds-services/nope/feedback", json={"feedback": []})
    assert_outcome(response, 404, "nope")


async def test_peer_feedback_body_is_accepted(client: httpx.AsyncClient) -> None:
    if not PEERS.is_dir():
        pytest.skip(f"{PEERS} not present")
    body = (PEERS / "cql-feedback.json").read_bytes()
    response = await client.post(
        f"{WORKUP}/feedback", content=body, headers={"content-type": "application/json"}
    )
    assert response.json() == {"received": 2, "stored": 2}
    summary = (await client.get("/analytics/feedback")).json()["topics"]
    assert [t["topic"] for t in summary] == ["unmatched"]


@pytest.mark.postgres
async def test_the_service_on_postgresql(make_client: Any) -> None:
    """The whole loop, card issued -> feedback -> analytics, on a fresh PostgreSQL database."""
    from support.db import postgres_database

    async with postgres_database() as url, make_client(database_url=url) as client:
        assert (await client.get("/readyz")).json()["checks"]["database"] == "reachable"
        card = await issue_card(client)
        body = {"feedback": [overridden(card)]}
        assert (await client.post(f"{ORDER_SIGN}/feedback", json=body)).json()["stored"] == 1
        assert (await client.post(f"{ORDER_SIGN}/feedback", json=body)).json()["stored"] == 0
        summary = (await client.get("/analytics/feedback")).json()["topics"]
    assert summary == [
        {
            "topic": "warn-lit",
            "issued": 1,
            "accepted": 0,
            "overridden": 1,
            "overrideReasons": [
                {
                    "reason": f"{card['overrideReasons'][0]['system']}|research-protocol",
                    "display": card["overrideReasons"][0]["display"],
                    "count": 1,
                }
            ],
        }
    ]


async def test_reasons_without_display_and_extensions(client: httpx.AsyncClient) -> None:
    card = await issue_card(client)
    reason = {k: v for k, v in card["overrideReasons"][0].items() if k != "display"}
    body = {
        "feedback": [
            {
                "card": card["uuid"],
                "outcome": "overridden",
                "overrideReason": {"reason": reason},
                "outcomeTimestamp": "2026-11-21T10:10:23Z",
            }
        ],
        "extension": {"com.example.ehr": {"site": "north"}},
    }
    assert (await client.post(f"{ORDER_SIGN}/feedback", json=body)).json()["stored"] == 1
    topic = (await client.get("/analytics/feedback")).json()["topics"][0]
    assert topic["overrideReasons"] == [
        {"reason": f"{reason['system']}|{reason['code']}", "count": 1}
    ]
