"""Prefetch resolution, key by key (CDS Hooks 2.0): a provided value is used, `null` means no data,
an OperationOutcome is an error for that key, and a missing key must be fetched from `fhirServer`.
A value of another resource type than the key's query asks for counts as an error too: it is
fetched again where it can be, else reported as missing data, never read as "nothing recorded".
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any

from service.auth.identity import ClientIdentity
from service.cdshooks.models import HookCall
from service.errors import ServiceError
from service.fhir.expected import expected_type, foreign_types
from service.fhir.fetch import FhirFetcher
from service.fhir.record import PatientRecord
from service.fhir.templates import Unrenderable, render
from service.ops.timing import PhaseTimer
from service.settings import Settings

log = logging.getLogger("rpl_cds.prefetch")


@dataclass
class Resolution:
    record: PatientRecord
    failed: list[str]  # keys whose value was an error; their data is missing
    missing: list[str]  # keys the client did not send; they must be fetched


def _is_error(value: Mapping[str, Any]) -> bool:
    """An OperationOutcome, or a Bundle holding nothing but error OperationOutcomes (a failed
    search). A Bundle with results and an OperationOutcome beside them carries warnings only."""
    if value.get("resourceType") == "OperationOutcome":
        return True
    if value.get("resourceType") != "Bundle":
        return False
    outcomes = []
    for entry in value.get("entry", []):
        if not isinstance(entry, dict):
            continue
        resource = entry.get("resource") or {}
        if resource.get("resourceType") != "OperationOutcome":
            return False  # a result: the Bundle is not a failed search (decided at its first)
        outcomes.append(resource)
    return any(
        issue.get("severity") in ("error", "fatal")
        for outcome in outcomes
        for issue in outcome.get("issue", [])
    )


def _wrong_type(key: str, template: str, value: Mapping[str, Any]) -> bool:
    expected = expected_type(template)
    foreign = foreign_types(value, expected) if expected else []
    if foreign:
        # Key and type names only: they say what the client sent wrong and identify no one.
        log.warning(
            "prefetch value of another resource type",
            extra={"key": key, "expected": expected, "received": foreign},
        )
    return bool(foreign)


def resolve_prefetch(
    templates: Mapping[str, str], provided: Mapping[str, dict[str, Any] | None] | None
) -> Resolution:
    provided = provided or {}
    record = PatientRecord()
    failed: list[str] = []
    missing: list[str] = []
    for key in templates:
        if key not in provided:
            missing.append(key)
            continue
        value = provided[key]
        if value is None:
            continue
        if _is_error(value) or _wrong_type(key, templates[key], value):
            failed.append(key)
            continue
        if value.get("resourceType") == "Bundle":
            for entry in value.get("entry", []):
                resource = entry.get("resource") if isinstance(entry, dict) else None
                if isinstance(resource, dict):
                    record.add(resource)
        else:
            record.add(value)
    return Resolution(record, failed, missing)


@dataclass
class Assembled:
    record: PatientRecord
    missing_data: list[str]  # keys whose data is incomplete or absent, for %missingData


async def assemble_record(
    templates: Mapping[str, str],
    call: HookCall,
    fetcher: FhirFetcher,
    settings: Settings,
    today: date,
    timer: PhaseTimer,
    client: ClientIdentity | None = None,
) -> Assembled:
    """The patient record for a call: what was prefetched, plus what the service fetches itself
    for the keys that are missing or came as errors. `client`: who called, when authentication
    is on (its issuer may limit the FHIR servers it can name)."""
    with timer.phase("record"):
        resolution = resolve_prefetch(templates, call.prefetch)
    wanted = [*resolution.missing, *resolution.failed]
    if not wanted:
        return Assembled(resolution.record, [])
    fhir_server = call.fhir_server
    refusal = (
        fetcher.policy.server_refusal(fhir_server, _issuer_servers(settings, client))
        if fhir_server
        else "no fhirServer was given"
    )
    if fhir_server is None or refusal is not None:
        if resolution.missing:
            # CDS Hooks 2.0: required data that cannot be had at all is a 412.
            raise ServiceError(
                412,
                f"prefetch is missing {', '.join(resolution.missing)} and the service cannot "
                f"fetch it: {refusal}",
            )
        return Assembled(resolution.record, resolution.failed)
    queries = {}
    context = call.context_values()
    for key in wanted:
        try:
            queries[key] = render(templates[key], context, today)
        except Unrenderable:
            continue  # e.g. an encounter query in a call without an encounter: no data
    token = call.fhir_authorization.access_token if call.fhir_authorization else None
    with timer.phase("prefetch"):
        fetched = await fetcher.fetch_all(
            fhir_server, token, queries, settings.fhir_time_budget_seconds
        )
    missing = []
    with timer.phase("record"):
        for key, result in fetched.items():
            resolution.record.add_all(result.resources)
            if result.problem is not None:
                missing.append(key)
    return Assembled(resolution.record, missing)


def _issuer_servers(settings: Settings, client: ClientIdentity | None) -> list[str] | None:
    issuer = settings.auth_issuers.get(client.issuer) if client else None
    return [str(server) for server in issuer.fhir_servers] if issuer else None
