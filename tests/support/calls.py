"""What HTTP tests of the CDS service share: the service paths, a patient who meets the RPL
definition, and the CDS Hooks response rules as assertions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from support.patients import Scenario

WORKUP = "/cds-services/rpl-workup"
# Requests that existing CDS Hooks services accept (beside the project in the workspace).
PEERS = Path(__file__).resolve().parents[3] / "shared" / "peer-requests"
ORDER_SIGN = "/cds-services/rpl-order-safety-order-sign"


def two_losses() -> Scenario:
    return Scenario("two losses").female().miscarriage("2024-01-10").miscarriage("2024-06-02")


def assert_no_empty_fields(value: Any, where: str = "response") -> None:
    """CDS Hooks 2.0: optional fields are omitted, never null, "", [] or {} (only cards may be [])."""
    if isinstance(value, dict):
        for key, item in value.items():
            assert item not in (None, "", [], {}), f"{where}.{key} is empty"
            assert_no_empty_fields(item, f"{where}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            assert_no_empty_fields(item, f"{where}[{index}]")


def assert_outcome(response: httpx.Response, status: int, mentions: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["resourceType"] == "OperationOutcome"
    assert body["issue"] and all(i["severity"] and i["code"] for i in body["issue"])
    text = " ".join(i["diagnostics"] for i in body["issue"])
    assert mentions in text, text
    assert "Traceback" not in response.text
