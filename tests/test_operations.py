"""Liveness, readiness, metrics, CORS and what the logs may contain."""

from __future__ import annotations

import json
import logging
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from support.calls import WORKUP, assert_outcome, two_losses
from support.live_server import live_server
from support.logs import log_extra
from support.patients import TWO_LOSSES_ESHRE, Scenario, workup_request

from service.settings import Settings


async def test_health_and_readiness(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).json() == {"status": "alive"}
    ready = await client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"]["database"] == "reachable"


async def test_not_ready_when_the_database_is_unreachable(make_client: Any) -> None:
    closed_port = "postgresql+asyncpg://postgres@127.0.0.1:9/none"
    async with make_client(database_url=closed_port, auto_migrate=False) as client:
        assert (await client.get("/healthz")).status_code == 200
        assert_outcome(await client.get("/readyz"), 503, "database")


async def test_metrics_count_calls_and_cards(client: httpx.AsyncClient) -> None:
    await client.post(WORKUP, json=workup_request(two_losses()))
    await client.post("/cds-services/none", json={})
    text = (await client.get("/metrics")).text
    assert (
        'rpl_cds_requests_total{endpoint="/cds-services/{service_id}",service="rpl-workup",status="200"} 1.0'
        in text
    )
    # An unknown service id never becomes a label value (it would let callers grow the series).
    assert 'service="none"' not in text
    assert 'rpl_cds_cards_total{service="rpl-workup",topic="lifestyle-support"} 1.0' in text
    assert "rpl_cds_request_duration_seconds_bucket" in text
    assert "rpl_cds_fhir_fetch_duration_seconds" in text


async def test_no_identifier_token_or_content_in_logs(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    scenario = Scenario("secretive").female().miscarriage("2024-01-10").miscarriage("2024-06-02")
    secret_token = "at-very-secret-access-token-1234"
    jwt_like = "eyJhbGciOiJFUzM4NCJ9.eyJpc3MiOiJ4In0.c2lnbmF0dXJl"
    body = workup_request(scenario)
    body["fhirServer"] = "https://ehr.example/fhir"
    body["fhirAuthorization"] = {
        "access_token": secret_token,
        "token_type": "Bearer",
        "expires_in": 300,
        "scope": "patient/*.read",
        "subject": "rpl-cds",
        "patient": scenario.patient_id,
    }
    caplog.set_level(logging.DEBUG)
    ok = await client.post(WORKUP, json=body, headers={"authorization": f"Bearer {jwt_like}"})
    bad = dict(body, hookInstance="nope")
    rejected = await client.post(WORKUP, json=bad, headers={"authorization": f"Bearer {jwt_like}"})
    assert ok.status_code == 200 and rejected.status_code == 400

    records = [r for r in caplog.records if r.name.startswith("rpl_cds")]
    logged = "\n".join(
        json.dumps({k: str(v) for k, v in vars(r).items()}) + r.getMessage() for r in records
    )
    for secret in (scenario.patient_id, secret_token, jwt_like, "2024-01-10", "Miscarriage"):
        assert secret not in logged
    calls = [r for r in records if r.name == "rpl_cds.calls" and log_extra(r, "status") == 200]
    assert calls, "one line per call"
    call = calls[0]
    assert log_extra(call, "hookInstance") == body["hookInstance"]
    assert (
        log_extra(call, "service") == "rpl-workup"
        and log_extra(call, "cards") == len(TWO_LOSSES_ESHRE)
        and log_extra(call, "duration_ms") >= 0
    )


async def test_cors_is_off_by_default(client: httpx.AsyncClient) -> None:
    response = await client.get("/cds-services", headers={"origin": "https://ehr.example"})
    assert "access-control-allow-origin" not in response.headers


async def test_cors_allows_configured_origins_only(make_client: Any) -> None:
    async with make_client(cors_origins="https://ehr.example, https://sandbox.example") as client:
        preflight = await client.options(
            WORKUP,
            headers={
                "origin": "https://sandbox.example",
                "access-control-request-method": "POST",
                "access-control-request-headers": "authorization, content-type",
            },
        )
        allowed = await client.get("/cds-services", headers={"origin": "https://ehr.example"})
        other = await client.get("/cds-services", headers={"origin": "https://evil.example"})
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "https://sandbox.example"
    assert allowed.headers["access-control-allow-origin"] == "https://ehr.example"
    assert "access-control-allow-origin" not in other.headers


def timing_phases(response: httpx.Response) -> dict[str, float]:
    phases = {}
    for item in response.headers["server-timing"].split(","):
        name, _, duration = item.strip().partition(";dur=")
        phases[name] = float(duration)
    return phases


async def test_server_timing_only_when_enabled(client: httpx.AsyncClient, make_client: Any) -> None:
    request = workup_request(two_losses())
    assert "server-timing" not in (await client.post(WORKUP, json=request)).headers
    async with make_client(server_timing=True) as timed:
        response = await timed.post(WORKUP, json=request)
    phases = timing_phases(response)
    # Full prefetch: nothing to fetch, so no prefetch phase; each phase took some time.
    assert set(phases) == {"record", "apply", "encode", "total"}
    assert all(duration >= 0 for duration in phases.values())


async def test_server_timing_names_fetching_and_auth(make_client: Any, tmp_path: Any) -> None:
    from support.jwt_tokens import bearer, mint, new_es384_key, write_jwks

    key = new_es384_key("k1")
    issuers = {"https://ehr.example": {"jwks_file": str(write_jwks(tmp_path / "k.jwks", key))}}
    request = workup_request(two_losses())
    del request["prefetch"]["conditions"]
    request["fhirServer"] = "http://127.0.0.1:9/fhir"  # nothing listens: fetched, and fails
    async with make_client(
        server_timing=True,
        auth_issuers=issuers,
        public_base_url="http://cds.test",
        fhir_allow_http=True,
    ) as timed:
        token = mint(key, iss="https://ehr.example", aud=f"http://cds.test{WORKUP}")
        response = await timed.post(WORKUP, json=request, headers={"authorization": bearer(token)})
    assert response.status_code == 200
    assert set(timing_phases(response)) == {
        "auth",
        "record",
        "prefetch",
        "apply",
        "encode",
        "total",
    }


def test_server_timing_total_holds_every_phase_over_http(tmp_path: Path) -> None:
    """On a real socket: `total` spans the whole request, so it is never less than the named
    phases together (what it has beyond them is what they do not measure); other answers than
    hook calls carry `total` alone."""
    request = workup_request(two_losses())
    del request["prefetch"]["conditions"]
    request["fhirServer"] = "http://127.0.0.1:9/fhir"  # nothing listens: fetched, and fails
    settings = Settings(data_dir=tmp_path, server_timing=True, fhir_allow_http=True)
    with live_server(settings) as base_url, httpx.Client(base_url=base_url) as http:
        called = http.post(WORKUP, json=request)
        discovered = http.get("/cds-services")
    assert called.status_code == 200
    phases = timing_phases(called)
    assert set(phases) == {"record", "prefetch", "apply", "encode", "total"}
    named = sum(duration for name, duration in phases.items() if name != "total")
    # Each figure is rounded to 1 us in the header.
    assert phases["total"] >= named - 0.001 * len(phases)
    assert set(timing_phases(discovered)) == {"total"}


def test_an_unexpected_error_is_a_500_logged_once_on_a_connection_kept_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """On a real socket: the 500 is an OperationOutcome, the exception is logged once (not again
    by the server), and the same keep-alive connection answers the next request."""

    def broken(*_: Any, **__: Any) -> Any:
        raise RuntimeError("simulated engine failure")

    monkeypatch.setattr("service.cdshooks.call.apply_plan", broken)
    body = json.dumps(workup_request(two_losses())).encode()
    call = (
        f"POST {WORKUP} HTTP/1.1\r\nHost: cds.test\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    discovery = b"GET /cds-services HTTP/1.1\r\nHost: cds.test\r\n\r\n"
    caplog.set_level(logging.INFO)
    with live_server(Settings(data_dir=tmp_path)) as base_url:
        port = int(base_url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
            reader = connection.makefile("rb")
            connection.sendall(call)
            failed = read_response(reader)
            connection.sendall(discovery)
            answered = read_response(reader)
    assert failed.status == 500
    assert json.loads(failed.body)["resourceType"] == "OperationOutcome"
    assert b"simulated" not in failed.body
    assert answered.status == 200
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert [r.getMessage() for r in errors] == ["unhandled error"]


@dataclass
class RawResponse:
    status: int
    body: bytes


def read_response(reader: Any) -> RawResponse:
    """One HTTP/1.1 response with a Content-Length, read off a socket's file."""
    status_line = reader.readline()
    if not status_line:
        raise ConnectionError("the server closed the connection")
    headers: dict[str, str] = {}
    while (line := reader.readline().decode().strip()) != "":
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    body = reader.read(int(headers.get("content-length", "0")))
    return RawResponse(int(status_line.split()[1]), body)
