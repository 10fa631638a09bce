"""Client authentication through real HTTP: JWTs signed by trusted EHRs, per CDS Hooks security."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import running
from support.calls import WORKUP, assert_outcome, two_losses
from support.jwt_tokens import (
    SigningKey,
    bearer,
    mint,
    new_es384_key,
    new_rs384_key,
    unsigned_token,
    write_jwks,
)
from support.patients import workup_request

from service.app import create_app

EHR = "https://ehr.example"
ADMIN = "https://admin.example"
BASE = "http://cds.test"


@pytest.fixture
def keys() -> dict[str, SigningKey]:
    return {"ehr": new_es384_key("ehr-1"), "admin": new_rs384_key("admin-1")}


@pytest.fixture
def auth_settings(tmp_path: Path, keys: dict[str, SigningKey]) -> dict[str, Any]:
    return {
        "auth_issuers": {
            EHR: {"jwks_file": str(write_jwks(tmp_path / "ehr.jwks", keys["ehr"]))},
            ADMIN: {"jwks_file": str(write_jwks(tmp_path / "admin.jwks", keys["admin"]))},
        },
        "public_base_url": BASE,
    }


@pytest.fixture
def secured(
    make_client: Callable[..., AbstractAsyncContextManager[httpx.AsyncClient]],
    auth_settings: dict[str, Any],
) -> Callable[..., AbstractAsyncContextManager[httpx.AsyncClient]]:
    return lambda **more: make_client(**{**auth_settings, **more})


def token(key: SigningKey, path: str, iss: str = EHR, **kwargs: Any) -> dict[str, str]:
    return {"authorization": bearer(mint(key, iss=iss, aud=f"{BASE}{path}", **kwargs))}


async def test_every_cds_endpoint_requires_a_token(secured: Any) -> None:
    async with secured() as client:
        responses = [
            await client.get("/cds-services"),
            await client.post(WORKUP, json=workup_request(two_losses())),
            await client.post(f"{WORKUP}/feedback", json={"feedback": []}),
            await client.get("/analytics/feedback"),
        ]
    for response in responses:
        assert_outcome(response, 401, "authentication failed")
        assert response.headers["www-authenticate"] == "Bearer"


async def test_operations_endpoints_stay_open(secured: Any) -> None:
    async with secured() as client:
        for path in ("/healthz", "/readyz", "/metrics"):
            assert (await client.get(path)).status_code == 200


async def test_valid_tokens_for_the_exact_endpoint(
    secured: Any, keys: dict[str, SigningKey]
) -> None:
    async with secured() as client:
        discovery = await client.get("/cds-services", headers=token(keys["ehr"], "/cds-services"))
        call = await client.post(
            WORKUP, json=workup_request(two_losses()), headers=token(keys["ehr"], WORKUP)
        )
        epic_style = await client.post(
            WORKUP,
            json=workup_request(two_losses()),
            headers=token(keys["ehr"], WORKUP, extra_claims={"sub": "epic-client", "nbf": 0}),
        )
    assert discovery.status_code == 200
    assert call.status_code == 200
    assert epic_style.status_code == 200


async def test_token_for_another_endpoint_is_refused(
    secured: Any, keys: dict[str, SigningKey]
) -> None:
    async with secured() as client:
        response = await client.post(
            WORKUP, json=workup_request(two_losses()), headers=token(keys["ehr"], "/cds-services")
        )
    assert_outcome(response, 401, "authentication failed")


@pytest.mark.parametrize(
    "forge",
    [
        lambda key, aud: unsigned_token({"alg": "none", "typ": "JWT"}, {"iss": EHR, "aud": aud}),
        lambda key, aud: mint(key, iss=EHR, aud=aud, lifetime=-600, iat=0),
        lambda key, aud: mint(key, iss="https://stranger.example", aud=aud),
        lambda key, aud: mint(key, iss=EHR, aud=aud, jti=None),
        lambda key, aud: mint(new_es384_key("ehr-1"), iss=EHR, aud=aud),  # right kid, wrong key
    ],
    ids=["alg-none", "expired", "unknown-iss", "no-jti", "wrong-key"],
)
async def test_forged_tokens_get_the_same_bare_401(
    secured: Any, keys: dict[str, SigningKey], forge: Any
) -> None:
    async with secured() as client:
        response = await client.get(
            "/cds-services",
            headers={"authorization": bearer(forge(keys["ehr"], f"{BASE}/cds-services"))},
        )
    assert response.status_code == 401
    assert response.json() == {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "login", "diagnostics": "authentication failed"}],
    }


async def test_replayed_jti_is_refused_across_workers(
    make_settings: Callable[..., Any], auth_settings: dict[str, Any], keys: dict[str, SigningKey]
) -> None:
    """Two app instances on one database stand for two worker processes."""
    settings = make_settings(**auth_settings)
    headers = token(keys["ehr"], "/cds-services", jti=str(uuid.uuid4()))
    async with running(create_app(settings)) as first, running(create_app(settings)) as second:
        assert (await first.get("/cds-services", headers=headers)).status_code == 200
        assert_outcome(await first.get("/cds-services", headers=headers), 401, "authentication")
        assert_outcome(await second.get("/cds-services", headers=headers), 401, "authentication")


async def test_public_base_url_sets_the_audience(secured: Any, keys: dict[str, SigningKey]) -> None:
    public = "https://cds.hospital.example/rpl"
    async with secured(public_base_url=public) as client:
        internal = await client.get("/cds-services", headers=token(keys["ehr"], "/cds-services"))
        as_called = await client.get(
            "/cds-services",
            headers={
                "authorization": bearer(mint(keys["ehr"], iss=EHR, aud=f"{public}/cds-services"))
            },
        )
    assert internal.status_code == 401
    assert as_called.status_code == 200


async def test_the_audience_does_not_follow_the_host_header(
    secured: Any, keys: dict[str, SigningKey]
) -> None:
    """A token the EHR minted for another CDS service with the same path, replayed here with
    that service's Host: refused, because the audience is the configured public base URL."""
    other = "http://evil.example"
    replayed = bearer(mint(keys["ehr"], iss=EHR, aud=f"{other}{WORKUP}"))
    async with secured() as client:
        response = await client.post(
            WORKUP,
            json=workup_request(two_losses()),
            headers={"authorization": replayed, "host": "evil.example"},
        )
    assert_outcome(response, 401, "authentication")


async def test_analytics_only_for_admin_issuers(secured: Any, keys: dict[str, SigningKey]) -> None:
    async with secured(admin_issuers=ADMIN) as client:
        ehr = await client.get(
            "/analytics/feedback", headers=token(keys["ehr"], "/analytics/feedback")
        )
        admin = await client.get(
            "/analytics/feedback", headers=token(keys["admin"], "/analytics/feedback", iss=ADMIN)
        )
    assert_outcome(ehr, 403, "analytics")
    assert admin.status_code == 200


async def test_database_outage_during_auth_is_503(
    make_client: Any, auth_settings: dict[str, Any], keys: dict[str, SigningKey]
) -> None:
    closed = "postgresql+asyncpg://postgres@127.0.0.1:9/none"
    async with make_client(database_url=closed, auto_migrate=False, **auth_settings) as client:
        response = await client.get("/cds-services", headers=token(keys["ehr"], "/cds-services"))
    assert_outcome(response, 503, "database")
    assert int(response.headers["retry-after"]) > 0
