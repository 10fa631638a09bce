"""Feedback through HTTP: a card to give feedback on, and an override of it."""

from __future__ import annotations

from typing import Any

import httpx

from support.calls import ORDER_SIGN
from support.patients import Scenario, order_request


async def issue_card(client: httpx.AsyncClient) -> dict[str, Any]:
    scenario = Scenario("LIT").female().draft_service_request("Paternal lymphocyte immunization")
    response = await client.post(ORDER_SIGN, json=order_request(scenario, "order-sign"))
    cards: list[dict[str, Any]] = response.json()["cards"]
    return cards[0]


def overridden(card: dict[str, Any], when: str = "2026-11-21T10:10:23Z") -> dict[str, Any]:
    return {
        "card": card["uuid"],
        "outcome": "overridden",
        "overrideReason": {"reason": card["overrideReasons"][0], "userComment": "per protocol"},
        "outcomeTimestamp": when,
    }
