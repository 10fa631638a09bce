"""The log canary itself (support/canary.py): it must fail a test whose logs hold a secret, or it
proves nothing when it passes."""

from __future__ import annotations

import logging

import httpx
from support.canary import Canary

TOKEN = "canary-token-0123456789"
PATIENT = "syn-canary-patient"
JWT = "eyJhbGciOiJFUzM4NCJ9.eyJpc3MiOiJodHRwczovL2VociJ9.c2lnbmF0dXJl"


def record(name: str, level: int, message: str, **extra: object) -> logging.LogRecord:
    made = logging.LogRecord(name, level, __file__, 1, message, None, None)
    made.__dict__.update(extra)
    return made


def canary_after_a_call() -> Canary:
    canary = Canary()
    body = {
        "fhirAuthorization": {"access_token": TOKEN},
        "context": {"patientId": PATIENT, "userId": "Practitioner/1"},
    }
    canary.read(
        httpx.Request(
            "POST", "http://cds.test/x", json=body, headers={"Authorization": f"Bearer {JWT}"}
        )
    )
    return canary


def test_a_logged_token_patient_id_or_jwt_is_a_leak() -> None:
    canary = canary_after_a_call()
    assert canary.secrets == {TOKEN, PATIENT, JWT}
    leaked = [
        record("rpl_cds.fhir", logging.INFO, f"fetch with {TOKEN}"),
        record("rpl_cds.calls", logging.INFO, "call", patient=PATIENT),
        record("uvicorn.error", logging.ERROR, "bad header", header=f"Bearer {JWT}"),
        record("elsewhere", logging.WARNING, "a JWT it never saw: eyJabcdefghij.eyJabcdefghij.x"),
    ]
    assert len(canary.leaks(leaked)) == 4


def test_what_production_would_not_write_is_no_leak() -> None:
    canary = canary_after_a_call()
    quiet = [
        record("httpx", logging.INFO, f"HTTP Request: GET /Patient/{PATIENT}"),  # WARNING in prod
        record("rpl_cds.calls", logging.DEBUG, f"debug {TOKEN}"),
        record("rpl_cds.calls", logging.INFO, "call", hookInstance="d1577c69"),
    ]
    assert canary.leaks(quiet) == []
