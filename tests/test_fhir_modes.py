"""The three ways an EHR delivers data give the same cards, against a real FHIR server
(sekmet-fhir on loopback): full prefetch, partial prefetch plus fhirServer, and no prefetch plus
fhirServer; and they agree with the prefetch the clinical scenario tests answer from the
descriptions alone. The synthetic scenarios are loaded with `rpl-cds load-scenarios`, as an
integration engineer would, with the same reference date for relative dates as the calls.

Each scenario runs as described and as the record of each dialect of `scenarios/dialects.json`
(`load-scenarios --dialect`; one server per dialect, since a dialect's record has the same ids);
scenarios written in one dialect on purpose (`"dialects": false`) only as described.

Patient-view scenarios only: order hooks carry their drafts in the context, which no server holds;
and scenarios with `prefetchErrors` are left out (the service fetches a failed key again)."""

from __future__ import annotations

import secrets
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, ExitStack
from datetime import UTC, datetime
from typing import Any

import pytest
from support.fhir_server import FhirServer, sekmet_server
from support.patients import topics
from support.scenario_calls import (
    ProfileApps,
    build_prefetch,
    hook_context,
    scenario_request,
    service_for_hook,
)

from service.authoring.synthetic import ScenarioSpec, load_dialects, load_scenarios
from service.settings import data_root

SCENARIOS = load_scenarios(data_root() / "scenarios")
DIALECTS = load_dialects(data_root() / "scenarios")
PATIENT_VIEW = [s for s in SCENARIOS if s.hook == "patient-view" and not s.prefetch_errors]
# Grouped by dialect: the first case of a dialect starts its server.
CASES = [
    pytest.param(
        spec if dialect is None else spec.in_dialect(DIALECTS[dialect]),
        profile,
        id=f"{spec.id}[{profile}{'/' + dialect if dialect else ''}]",
    )
    for dialect in (None, *DIALECTS)
    for spec in PATIENT_VIEW
    if dialect is None or spec.rewritable
    for profile in spec.expect
]
# The service's today (UTC); load-scenarios resolves relative dates against the same date.
TODAY = datetime.now(UTC).date()


class DialectServers:
    """One server per dialect its patients are written in (None: as described), started on first
    use and kept for the module: a dialect's record has the same ids as the original, so the two
    cannot share a server."""

    def __init__(self, stack: ExitStack, tmp_path_factory: pytest.TempPathFactory) -> None:
        self._stack = stack
        self._tmp = tmp_path_factory
        self._servers: dict[str | None, FhirServer] = {}

    def get(self, dialect: str | None) -> FhirServer:
        if dialect not in self._servers:
            # A token that starts with "-", as one in 64 random tokens does: the
            # load-scenarios command must still take it (as --token=T).
            token = "-" + secrets.token_urlsafe(24)
            server = self._stack.enter_context(sekmet_server(self._tmp.mktemp("fhir"), token=token))
            loaded = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "service.cli",
                    "load-scenarios",
                    "--fhir-server",
                    server.base_url,
                    f"--token={server.token}",  # a random token may start with "-"
                    "--today",
                    TODAY.isoformat(),
                    *(["--dialect", dialect] if dialect else []),
                ],
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert loaded.returncode == 0, loaded.stderr
            assert f"{len(SCENARIOS)} scenario patients loaded" in loaded.stdout
            self._servers[dialect] = server
        return self._servers[dialect]


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DialectServers]:
    with ExitStack() as stack:
        yield DialectServers(stack, tmp_path_factory)


@pytest.fixture(scope="module")
def fhir(servers: DialectServers) -> FhirServer:
    """The server with the patients as described."""
    return servers.get(None)


@pytest.fixture(scope="module")
async def apps(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ProfileApps]:
    async with AsyncExitStack() as stack:
        yield ProfileApps(stack, tmp_path_factory, fhir_allow_http=True)


def server_fields(fhir: FhirServer, token: str | None = None) -> dict[str, Any]:
    return {
        "fhirServer": fhir.base_url,
        "fhirAuthorization": {
            "access_token": token or fhir.token,
            "token_type": "Bearer",
            "expires_in": 300,
            "scope": "patient/*.read",
            "subject": "rpl-cds",
        },
    }


@pytest.mark.parametrize(("spec", "profile"), CASES)
async def test_three_prefetch_modes_agree(
    spec: ScenarioSpec, profile: str, servers: DialectServers, apps: ProfileApps
) -> None:
    fhir = servers.get(spec.dialect)
    client, discovery = await apps.get(profile)
    service = service_for_hook(discovery, spec.hook)
    templates = service.get("prefetch", {})
    # What an EHR that honours every template sends: each query's answer from the server.
    full = build_prefetch(templates, hook_context(spec, TODAY), TODAY, fhir.search)
    reads = [key for key, template in templates.items() if template.startswith("Patient/")]
    partial = {key: full[key] for key in reads}

    answers = {}
    for mode, prefetch in (("full", full), ("partial", partial), ("none", None)):
        body = scenario_request(spec, service, TODAY, prefetch=prefetch, **server_fields(fhir))
        response = await client.post(f"/cds-services/{service['id']}", json=body)
        assert response.status_code == 200, (mode, response.text)
        answers[mode] = topics(response.json())
    # As the clinical scenario tests call: prefetch answered from the description, no server.
    response = await client.post(
        f"/cds-services/{service['id']}", json=scenario_request(spec, service, TODAY)
    )
    assert response.status_code == 200, ("record", response.text)
    answers["record"] = topics(response.json())
    expected = set(spec.expect[profile])
    written = f", as a {spec.dialect} record (kept: {list(spec.kept)})" if spec.dialect else ""
    assert answers == dict.fromkeys(answers, expected), (
        f"{spec.id} ({profile}{written}): expected {sorted(expected)}; by mode: "
        + "; ".join(f"{mode} {sorted(found)}" for mode, found in answers.items())
    )


async def test_a_wrong_token_gives_data_incomplete_not_a_crash(
    fhir: FhirServer, apps: ProfileApps
) -> None:
    spec = next(s for s in SCENARIOS if s.id == "rpl-two-losses")
    client, discovery = await apps.get("eshre")
    service = service_for_hook(discovery, spec.hook)
    body = scenario_request(
        spec, service, TODAY, prefetch=None, **server_fields(fhir, token="not-the-token")
    )
    response = await client.post(f"/cds-services/{service['id']}", json=body)
    assert response.status_code == 200
    assert topics(response.json()) == {"data-incomplete"}
