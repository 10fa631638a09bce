"""Repeat suppression through real HTTP: a card the clinician dealt with for a patient is left out
of that patient's next chart openings, until the facts change or the configured days pass."""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from conftest import running
from sqlalchemy.engine import make_url
from support.calls import ORDER_SIGN, WORKUP
from support.db import BACKENDS, database_url, postgres_database
from support.patients import (
    TWO_LOSSES_ESHRE,
    Scenario,
    order_request,
    topics,
    workup_request,
)
from support.tcp_proxy import TcpProxy

from service.app import create_app
from service.cdshooks.catalogue import load_catalogue
from service.cdshooks.suppression import FAILURES_BEFORE_PAUSE, OUTAGE_PAUSE_SECONDS
from service.engine.problems import KnowledgeError
from service.feedback.store import FeedbackStore
from service.feedback.tables import metadata
from service.settings import Settings, bundled_knowledge_dirs

SECRET = "test-secret-0123456789abcdef-0123456789"
OTHER_SECRET = "another-secret-0123456789abcdef-012345"
REASONS = "https://fhir.rpl-cds.org/CodeSystem/override-reason"
FEEDBACK_AT = "2026-12-08T10:00:00Z"


class Clock:
    """The time suppression counts by; a test moves it instead of sleeping."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


def two_losses(patient_id: str | None = None) -> Scenario:
    scenario = Scenario("two losses").female()
    if patient_id:
        scenario.patient_id = patient_id
    return scenario.miscarriage("2024-01-10").miscarriage("2024-06-02")


@asynccontextmanager
async def service(
    tmp_path: Path,
    *,
    clock: Callable[[], datetime] | None = None,
    **settings: Any,
) -> AsyncIterator[httpx.AsyncClient]:
    settings.setdefault("data_dir", tmp_path / "data")
    settings.setdefault("patient_key_secret", SECRET)
    async with running(create_app(Settings(**settings), clock=clock)) as client:
        yield client


async def open_chart(client: httpx.AsyncClient, scenario: Scenario, **fields: Any) -> list[Any]:
    answer = await client.post(WORKUP, json=workup_request(scenario, **fields))
    assert answer.status_code == 200, answer.text
    cards: list[Any] = answer.json()["cards"]
    return cards


def card_of(cards: list[Any], topic: str) -> dict[str, Any]:
    return next(card for card in cards if card["source"]["topic"]["code"] == topic)


async def dismiss(
    client: httpx.AsyncClient,
    card: dict[str, Any],
    code: str,
    *,
    path: str = WORKUP,
    system: str = REASONS,
    at: str = FEEDBACK_AT,
) -> None:
    item = {
        "card": card["uuid"],
        "outcome": "overridden",
        "overrideReason": {"reason": {"system": system, "code": code}},
        "outcomeTimestamp": at,
    }
    answer = await client.post(f"{path}/feedback", json={"feedback": [item]})
    assert answer.json() == {"received": 1, "stored": 1}
    # Issued cards are written within 0.2 s; reading analytics writes this worker's at once.
    assert (await client.get("/analytics/feedback")).status_code == 200


def shown(cards: list[Any]) -> set[str]:
    return topics({"cards": cards})


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_declined_card_is_left_out_for_that_patient_until_the_facts_change(
    backend: str, tmp_path: Path
) -> None:
    patient = two_losses()
    async with (
        database_url(backend, tmp_path) as url,
        service(tmp_path, database_url=url) as client,
    ):
        first = await open_chart(client, patient)
        assert shown(first) == TWO_LOSSES_ESHRE
        await dismiss(client, card_of(first, "aps-screen"), "patient-declined")

        again = await open_chart(client, patient)
        assert shown(again) == TWO_LOSSES_ESHRE - {"aps-screen"}
        # Another patient with the very same record: her own cards.
        other = await open_chart(client, two_losses())
        assert shown(other) == TWO_LOSSES_ESHRE
        # The same patient id from another EHR is another patient.
        elsewhere = await open_chart(client, patient, fhirServer="https://ehr-b.example/fhir")
        assert "aps-screen" in shown(elsewhere)

        # A third loss is a new fact: the card is back.
        patient.miscarriage("2025-02-03")
        after_loss = await open_chart(client, patient)
        assert "aps-screen" in shown(after_loss)
        metrics = (await client.get("/metrics")).text
        assert 'rpl_cds_cards_suppressed_total{service="rpl-workup",topic="aps-screen"} 1.0' in (
            metrics
        )

        async with all_rows(url) as rows:
            assert rows, "the database holds the records"
            values = " ".join(str(value) for row in rows for value in row)
            # No patient id, in any column of any table: only keyed hashes.
            assert patient.patient_id not in values
            assert patient.patient_id.removeprefix("syn-") not in values


@asynccontextmanager
async def all_rows(url: str) -> AsyncIterator[list[Any]]:
    store = await FeedbackStore.open(url)
    try:
        async with store.engine.connect() as connection:
            rows: list[Any] = []
            for table in metadata.sorted_tables:
                rows.extend((await connection.execute(sa.select(table))).all())
        yield rows
    finally:
        await store.close()


async def test_every_suppressing_reason_leaves_out_only_cards_that_offer_it(
    tmp_path: Path,
) -> None:
    patient = two_losses()
    async with service(tmp_path) as client:
        first = await open_chart(client, patient)
        # Offered and suppressing: gone.
        await dismiss(client, card_of(first, "uterine-imaging"), "done-elsewhere")
        await dismiss(client, card_of(first, "lifestyle-support"), "discussed")
        # A suppressing reason the thyroid card does not offer, and a reason of another system:
        # neither says this card was dealt with.
        await dismiss(client, card_of(first, "thyroid-screen"), "contraindicated")
        await dismiss(
            client, card_of(first, "aps-screen"), "patient-declined", system="urn:ehr:reasons"
        )
        assert shown(await open_chart(client, patient)) == {"aps-screen", "thyroid-screen"}


async def test_accepted_does_not_suppress_and_the_newest_decision_counts(tmp_path: Path) -> None:
    patient = two_losses()
    async with service(tmp_path) as client:
        first = await open_chart(client, patient)
        thyroid = card_of(first, "thyroid-screen")
        accepted = {
            "card": thyroid["uuid"],
            "outcome": "accepted",
            "acceptedSuggestions": [{"id": thyroid["suggestions"][0]["uuid"]}],
            "outcomeTimestamp": FEEDBACK_AT,
        }
        assert (await client.post(f"{WORKUP}/feedback", json={"feedback": [accepted]})).json()[
            "stored"
        ] == 1
        aps = card_of(first, "aps-screen")
        await dismiss(client, aps, "patient-declined", at="2026-12-08T09:00:00Z")
        # Later the clinician took the suggestion after all (a re-sent decision).
        taken = {**accepted, "card": aps["uuid"], "outcomeTimestamp": "2026-12-08T09:30:00Z"}
        taken["acceptedSuggestions"] = [{"id": aps["suggestions"][0]["uuid"]}]
        assert (await client.post(f"{WORKUP}/feedback", json={"feedback": [taken]})).json()[
            "stored"
        ] == 1
        assert shown(await open_chart(client, patient)) == TWO_LOSSES_ESHRE


async def test_the_card_is_back_when_the_configured_days_pass(tmp_path: Path) -> None:
    clock = Clock()
    patient = two_losses()
    async with service(tmp_path, clock=clock, suppression_days=30) as client:
        first = await open_chart(client, patient)
        await dismiss(client, card_of(first, "lifestyle-support"), "discussed", at=_iso(clock.now))
        clock.now += timedelta(days=29)
        assert "lifestyle-support" not in shown(await open_chart(client, patient))
        clock.now += timedelta(days=2)
        assert "lifestyle-support" in shown(await open_chart(client, patient))


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


async def test_a_new_secret_starts_afresh_unless_the_old_one_is_kept(tmp_path: Path) -> None:
    patient = two_losses()
    async with service(tmp_path) as client:
        first = await open_chart(client, patient)
        await dismiss(client, card_of(first, "aps-screen"), "patient-declined")
        assert "aps-screen" not in shown(await open_chart(client, patient))
    async with service(tmp_path, patient_key_secret=OTHER_SECRET) as client:
        assert shown(await open_chart(client, patient)) == TWO_LOSSES_ESHRE
    async with service(
        tmp_path, patient_key_secret=OTHER_SECRET, patient_key_previous_secrets=SECRET
    ) as client:
        assert "aps-screen" not in shown(await open_chart(client, patient))


async def test_without_a_secret_nothing_is_suppressed_and_no_key_stored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    patient = two_losses()
    async with service(tmp_path, patient_key_secret=None) as client:
        first = await open_chart(client, patient)
        await dismiss(client, card_of(first, "aps-screen"), "patient-declined")
        assert shown(await open_chart(client, patient)) == TWO_LOSSES_ESHRE
    assert any(
        "RPL_CDS_PATIENT_KEY_SECRET is not set" in record.getMessage()
        and record.levelno == logging.WARNING
        for record in caplog.records
    )
    async with all_rows(Settings(data_dir=tmp_path / "data").resolved_database_url) as rows:
        keys = [row.patient_key for row in rows if "patient_key" in row._fields]
    assert keys and set(keys) == {None}


async def test_order_warnings_are_never_suppressed(tmp_path: Path) -> None:
    """Even a warning that offers a suppressing reason (a site's edit of the knowledge) shows
    again at the next order-sign: the order service does not opt in, and cannot."""
    knowledge = tmp_path / "knowledge"
    for directory in bundled_knowledge_dirs():
        shutil.copytree(directory, knowledge / directory.name)
    order_safety = knowledge / "plandefinitions" / "PlanDefinition-rpl-order-safety.json"
    plan = json.loads(order_safety.read_text())
    lit = next(action for action in plan["action"] if action["id"] == "warn-lit")
    lit["extension"].append(
        {
            "url": "https://fhir.rpl-cds.org/StructureDefinition/cds-override-reason",
            "valueCoding": {
                "system": REASONS,
                "code": "patient-declined",
                "display": "The patient declined",
            },
        }
    )
    order_safety.write_text(json.dumps(plan))
    dirs = [knowledge / "plandefinitions", knowledge / "mappings"]

    scenario = Scenario("LIT").female().draft_service_request("Paternal lymphocyte immunization")
    async with service(tmp_path, knowledge_dirs=dirs) as client:
        for _ in range(2):
            answer = await client.post(ORDER_SIGN, json=order_request(scenario, "order-sign"))
            (card,) = answer.json()["cards"]
            assert card["source"]["topic"]["code"] == "warn-lit"
            await dismiss(client, card, "patient-declined", path=ORDER_SIGN)

    # Opting the order service in is refused when the knowledge is loaded.
    plan["extension"] = [
        {
            "url": "https://fhir.rpl-cds.org/StructureDefinition/repeat-suppression",
            "valueBoolean": True,
        },
        *plan.get("extension", []),
    ]
    order_safety.write_text(json.dumps(plan))
    with pytest.raises(KnowledgeError, match="repeat-suppression is refused for order hooks"):
        load_catalogue(dirs)


@pytest.mark.postgres
async def test_cards_are_shown_when_the_database_cannot_answer(tmp_path: Path) -> None:
    clock = Clock()
    patient = two_losses()
    async with postgres_database() as url:
        server = make_url(url)
        with TcpProxy(server.host or "127.0.0.1", server.port or 5432) as proxy:
            through_proxy = server.set(port=proxy.port).render_as_string(hide_password=False)
            async with service(
                tmp_path,
                clock=clock,
                database_url=through_proxy,
                database_connect_timeout_seconds=1.0,
                database_statement_timeout_seconds=1.0,
                suppression_lookup_timeout_seconds=0.5,
            ) as client:
                first = await open_chart(client, patient)
                await dismiss(client, card_of(first, "aps-screen"), "patient-declined")
                assert "aps-screen" not in shown(await open_chart(client, patient))

                # A partition (nothing answers), then a stopped server: every card, never a 5xx.
                proxy.stall()
                assert shown(await open_chart(client, patient)) == TWO_LOSSES_ESHRE
                proxy.restore()
                proxy.cut()
                for _ in range(FAILURES_BEFORE_PAUSE - 1):
                    assert shown(await open_chart(client, patient)) == TWO_LOSSES_ESHRE
                # Three failures in a row pause the look-ups: the server is back, but not asked.
                proxy.restore()
                assert shown(await open_chart(client, patient)) == TWO_LOSSES_ESHRE
                clock.now += timedelta(seconds=OUTAGE_PAUSE_SECONDS + 1)
                assert "aps-screen" not in shown(await open_chart(client, patient))


async def test_the_look_up_is_a_server_timing_phase_of_the_services_that_suppress(
    tmp_path: Path,
) -> None:
    async with service(tmp_path, server_timing=True) as client:
        answer = await client.post(WORKUP, json=workup_request(two_losses()))
        assert "suppress;dur=" in answer.headers["server-timing"]
        scenario = (
            Scenario("LIT").female().draft_service_request("Paternal lymphocyte immunization")
        )
        answer = await client.post(ORDER_SIGN, json=order_request(scenario, "order-sign"))
        assert "suppress" not in answer.headers["server-timing"]
