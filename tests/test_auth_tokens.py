"""Client JWT authentication (CDS Hooks 2.0 "Security") with real keys, signatures and HTTP."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from support.jwt_tokens import (
    JwksServer,
    SigningKey,
    b64url,
    bearer,
    claims,
    hs256_token,
    jwks,
    mint,
    new_es384_key,
    new_key,
    new_rs384_key,
    sign,
    unsigned_token,
    write_jwks,
)

from service.auth.authenticator import Authenticator
from service.auth.identity import ClientIdentity
from service.errors import ServiceError
from service.settings import IssuerConfig, Settings

ISS = "https://ehr.example.org/cds-client"
AUD = "https://cds.example.org/cds-services/rpl-workup"
NOW = 1_760_000_000
SKEW = 60
MAX_LIFETIME = 3600
REFRESH = 60


class FakeClock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class MemoryReplayCache:
    """The ReplayCache protocol over a dict; expiry follows the test clock."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._seen: dict[tuple[str, str], datetime] = {}
        self.calls: list[tuple[str, str, datetime]] = []

    async def remember_jti(self, issuer: str, jti: str, expires_at: datetime) -> bool:
        self.calls.append((issuer, jti, expires_at))
        now = datetime.fromtimestamp(self._clock(), UTC)
        previous = self._seen.get((issuer, jti))
        if previous is not None and previous > now:
            return False
        self._seen[(issuer, jti)] = expires_at
        return True


# Key generation (RSA in particular) is the slow part; the keys are immutable, so share them.
@pytest.fixture(scope="module")
def es_key() -> SigningKey:
    return new_es384_key("es384-1")


@pytest.fixture(scope="module")
def rs_key() -> SigningKey:
    return new_rs384_key("rs384-1")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def replay(clock: FakeClock) -> MemoryReplayCache:
    return MemoryReplayCache(clock)


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    # trust_env=False: a proxy from the environment must not intercept loopback requests.
    async with httpx.AsyncClient(trust_env=False) as client:
        yield client


@pytest.fixture
def server() -> Iterator[JwksServer]:
    with JwksServer() as running:
        yield running


AuthFactory = Callable[..., Authenticator]


@pytest.fixture
def make_auth(http: httpx.AsyncClient, clock: FakeClock, replay: MemoryReplayCache) -> AuthFactory:
    def factory(issuers: dict[str, IssuerConfig], **overrides: Any) -> Authenticator:
        values: dict[str, Any] = {
            "auth_issuers": issuers,
            "auth_algorithms": ["ES384", "RS384"],
            "auth_clock_skew_seconds": SKEW,
            "auth_max_token_lifetime_seconds": MAX_LIFETIME,
            "auth_jwks_refresh_seconds": REFRESH,
            "public_base_url": "https://cds.example.org",
            **overrides,
        }
        return Authenticator(Settings(**values), http, replay, clock=clock)

    return factory


@pytest.fixture
def jwks_file(tmp_path: Path, es_key: SigningKey, rs_key: SigningKey) -> Path:
    return write_jwks(tmp_path / "client-jwks.json", es_key, rs_key)


@pytest.fixture
def auth(make_auth: AuthFactory, jwks_file: Path) -> Authenticator:
    return make_auth({ISS: IssuerConfig(jwks_file=jwks_file)})


@pytest.fixture
def auth_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="rpl_cds.auth")
    return caplog


async def expect_401(
    auth: Authenticator,
    authorization: str | None,
    caplog: pytest.LogCaptureFixture,
    reason: str,
    audience: str = AUD,
) -> None:
    """The call fails with the one generic 401, and the log names `reason` but not the token."""
    caplog.clear()
    with pytest.raises(ServiceError) as failure:
        await auth.authenticate(authorization, audience)
    error = failure.value
    assert error.status == 401
    assert error.diagnostics == "authentication failed"
    assert not error.issues
    assert error.headers == {"WWW-Authenticate": "Bearer"}
    messages = [r.getMessage() for r in caplog.records if r.name == "rpl_cds.auth"]
    assert any(reason.lower() in message.lower() for message in messages), messages
    if authorization and "." in authorization:
        token = authorization.split()[-1]
        signature = token.rsplit(".", 1)[-1]
        for message in messages:
            assert token not in message
            assert len(signature) < 8 or signature not in message


def token_for(key: SigningKey, **kwargs: Any) -> str:
    kwargs.setdefault("iss", ISS)
    kwargs.setdefault("aud", AUD)
    kwargs.setdefault("iat", NOW)
    return bearer(mint(key, **kwargs))


# --- accepted tokens -------------------------------------------------------------------------


async def test_valid_es384_token(
    auth: Authenticator, es_key: SigningKey, replay: MemoryReplayCache
) -> None:
    identity = await auth.authenticate(token_for(es_key, jti="es-jti-1"), AUD)

    assert identity == ClientIdentity(issuer=ISS, jti="es-jti-1")
    expected_expiry = datetime.fromtimestamp(NOW + 300 + SKEW, UTC)
    assert replay.calls == [(ISS, "es-jti-1", expected_expiry)]


async def test_valid_rs384_token(auth: Authenticator, rs_key: SigningKey) -> None:
    identity = await auth.authenticate(token_for(rs_key, jti="rs-jti-1"), AUD)

    assert identity == ClientIdentity(issuer=ISS, jti="rs-jti-1")


async def test_valid_token_against_the_real_clock(
    http: httpx.AsyncClient, jwks_file: Path, es_key: SigningKey
) -> None:
    settings = Settings(
        auth_issuers={ISS: IssuerConfig(jwks_file=jwks_file)},
        public_base_url="https://cds.example.org",
    )
    auth = Authenticator(settings, http, MemoryReplayCache(lambda: 0.0))

    identity = await auth.authenticate(bearer(mint(es_key, iss=ISS, aud=AUD, jti="t")), AUD)

    assert identity.jti == "t"


async def test_epic_style_token_with_sub_nbf_and_jwk_without_alg(
    make_auth: AuthFactory, tmp_path: Path, rs_key: SigningKey
) -> None:
    # Epic signs RS384 and adds nbf (about 5 min before iat) and sub (the client id); its JWKS
    # entries need not name the algorithm.
    public_jwk = {k: v for k, v in rs_key.public_jwk.items() if k not in ("alg", "use")}
    path = tmp_path / "epic.json"
    path.write_text(json.dumps({"keys": [public_jwk]}))
    auth = make_auth({ISS: IssuerConfig(jwks_file=path)})
    token = token_for(
        rs_key,
        jti="epic-1",
        lifetime=300,
        extra_claims={"sub": "epic-client-id-123", "nbf": NOW - 300, "tenant": "hospital-a"},
    )

    identity = await auth.authenticate(token, AUD)

    assert identity == ClientIdentity(
        issuer=ISS, jti="epic-1", subject="epic-client-id-123", tenant="hospital-a"
    )


async def test_typ_is_compared_case_insensitively(auth: Authenticator, es_key: SigningKey) -> None:
    identity = await auth.authenticate(token_for(es_key, headers={"typ": "jwt"}), AUD)

    assert identity.issuer == ISS


async def test_aud_list_containing_the_endpoint_is_accepted(
    auth: Authenticator, es_key: SigningKey
) -> None:
    token = token_for(es_key, aud=["https://cds.example.org/other", AUD])

    assert (await auth.authenticate(token, AUD)).issuer == ISS


async def test_expiry_within_clock_skew_is_accepted(
    auth: Authenticator, es_key: SigningKey, clock: FakeClock
) -> None:
    token = token_for(es_key, lifetime=300)
    clock.advance(300 + SKEW - 1)

    assert (await auth.authenticate(token, AUD)).issuer == ISS


async def test_iat_slightly_ahead_within_skew_is_accepted(
    auth: Authenticator, es_key: SigningKey
) -> None:
    token = token_for(es_key, iat=NOW + SKEW - 5)

    assert (await auth.authenticate(token, AUD)).issuer == ISS


async def test_lifetime_exactly_at_the_maximum_is_accepted(
    auth: Authenticator, es_key: SigningKey
) -> None:
    token = token_for(es_key, lifetime=MAX_LIFETIME)

    assert (await auth.authenticate(token, AUD)).issuer == ISS


# --- algorithm and header attacks ------------------------------------------------------------


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
async def test_alg_none_is_rejected(
    auth: Authenticator, es_key: SigningKey, auth_log: pytest.LogCaptureFixture, alg: str
) -> None:
    token = unsigned_token(
        {"alg": alg, "typ": "JWT", "kid": es_key.kid}, claims(iss=ISS, aud=AUD, iat=NOW)
    )

    await expect_401(auth, bearer(token), auth_log, "not allowed")


async def test_hs256_signed_with_the_public_key_is_rejected(
    auth: Authenticator, rs_key: SigningKey, auth_log: pytest.LogCaptureFixture
) -> None:
    token = hs256_token(
        rs_key.public_pem,
        {"alg": "HS256", "typ": "JWT", "kid": rs_key.kid},
        claims(iss=ISS, aud=AUD, iat=NOW),
    )

    await expect_401(auth, bearer(token), auth_log, "not allowed")


async def test_hs256_stays_refused_even_if_settings_are_tampered_with(
    make_auth: AuthFactory, jwks_file: Path, rs_key: SigningKey, auth_log: pytest.LogCaptureFixture
) -> None:
    auth = make_auth({ISS: IssuerConfig(jwks_file=jwks_file)})
    # Settings validation refuses HS256; a later in-place edit must not open the door either.
    auth._settings.auth_algorithms.append("HS256")
    token = hs256_token(
        rs_key.public_pem,
        {"alg": "HS256", "typ": "JWT", "kid": rs_key.kid},
        claims(iss=ISS, aud=AUD, iat=NOW),
    )

    await expect_401(auth, bearer(token), auth_log, "not allowed")


async def test_alg_not_in_the_allowed_list_is_rejected(
    make_auth: AuthFactory, tmp_path: Path, auth_log: pytest.LogCaptureFixture
) -> None:
    es256 = new_key("ES256", "es256-1")
    auth = make_auth({ISS: IssuerConfig(jwks_file=write_jwks(tmp_path / "k.json", es256))})

    await expect_401(auth, token_for(es256), auth_log, "'ES256' not allowed")


async def test_header_alg_must_match_the_jwk_alg(
    make_auth: AuthFactory, tmp_path: Path, rs_key: SigningKey, auth_log: pytest.LogCaptureFixture
) -> None:
    # The same RSA key published for RS256 only must not verify an RS384 token.
    published = {**rs_key.public_jwk, "alg": "RS256"}
    path = tmp_path / "k.json"
    path.write_text(json.dumps({"keys": [published]}))
    auth = make_auth({ISS: IssuerConfig(jwks_file=path)})

    await expect_401(auth, token_for(rs_key), auth_log, "no key for kid")


async def test_header_alg_must_match_the_key_type(
    auth: Authenticator, es_key: SigningKey, rs_key: SigningKey, auth_log: pytest.LogCaptureFixture
) -> None:
    # An RS384 header naming the EC key's kid: PyJWK refuses to build an RSA key from it.
    token = sign(
        rs_key,
        {"alg": "RS384", "typ": "JWT", "kid": es_key.kid},
        claims(iss=ISS, aud=AUD, iat=NOW),
    )

    await expect_401(auth, bearer(token), auth_log, "no key for kid")


async def test_typ_missing_is_rejected(
    auth: Authenticator, es_key: SigningKey, auth_log: pytest.LogCaptureFixture
) -> None:
    await expect_401(auth, token_for(es_key, headers={"typ": None}), auth_log, "is not JWT")


async def test_other_typ_is_rejected(
    auth: Authenticator, es_key: SigningKey, auth_log: pytest.LogCaptureFixture
) -> None:
    await expect_401(auth, token_for(es_key, headers={"typ": "at+jwt"}), auth_log, "is not JWT")


async def test_kid_missing_is_rejected(
    auth: Authenticator, es_key: SigningKey, auth_log: pytest.LogCaptureFixture
) -> None:
    await expect_401(auth, token_for(es_key, headers={"kid": None}), auth_log, "no kid")


async def test_crit_header_is_rejected(
    auth: Authenticator, es_key: SigningKey, auth_log: pytest.LogCaptureFixture
) -> None:
    token = token_for(es_key, headers={"b64": True, "crit": ["b64"]})

    await expect_401(auth, token, auth_log, "critical or b64")


# --- keys ------------------------------------------------------------------------------------


async def test_unknown_kid_is_rejected(
    auth: Authenticator, es_key: SigningKey, auth_log: pytest.LogCaptureFixture
) -> None:
    await expect_401(auth, token_for(es_key, headers={"kid": "nope"}), auth_log, "no key for kid")


async def test_signature_by_another_key_under_a_known_kid_is_rejected(
    auth: Authenticator, es_key: SigningKey, auth_log: pytest.LogCaptureFixture
) -> None:
    impostor = new_es384_key(es_key.kid)

    await expect_401(auth, token_for(impostor), auth_log, "InvalidSignatureError")


async def test_jwks_with_private_or_junk_entries_still_yields_the_good_key(
    make_auth: AuthFactory, tmp_path: Path, es_key: SigningKey, auth_log: pytest.LogCaptureFixture
) -> None:
    document = {
        "keys": [
            "not an object",
            {"kty": "EC"},
            {"kty": "weird", "kid": "w"},
            {"kty": "oct", "kid": "hmac", "k": b64url(b"secret")},
            {**es_key.public_jwk, "kid": "enc", "use": "enc"},
            {**es_key.public_jwk, "kid": "private", "d": "AAAA"},
            es_key.public_jwk,
        ]
    }
    path = tmp_path / "k.json"
    path.write_text(json.dumps(document))
    auth = make_auth({ISS: IssuerConfig(jwks_file=path)})

    assert (await auth.authenticate(token_for(es_key), AUD)).issuer == ISS
    await expect_401(auth, token_for(es_key, headers={"kid": "enc"}), auth_log, "no key for kid")
    await expect_401(
        auth, token_for(es_key, headers={"kid": "private"}), auth_log, "no key for kid"
    )


async def test_rsa_key_below_2048_bits_is_rejected(
    make_auth: AuthFactory, tmp_path: Path, auth_log: pytest.LogCaptureFixture
) -> None:
    weak = new_rs384_key("rs-weak", bits=1024)
    auth = make_auth({ISS: IssuerConfig(jwks_file=write_jwks(tmp_path / "k.json", weak))})

    await expect_401(auth, token_for(weak), auth_log, "InvalidKeyError")


async def test_unknown_kids_are_not_memoised(
    auth: Authenticator, es_key: SigningKey, auth_log: pytest.LogCaptureFixture
) -> None:
    for n in range(5):
        token = token_for(es_key, headers={"kid": f"unknown-{n}"})
        await expect_401(auth, token, auth_log, "no key for kid")
    key_set = next(iter(auth._keys._files.values()))
    assert all(kid == es_key.kid for kid, _ in key_set._built)


async def test_cancelled_fetch_does_not_start_the_refresh_window(
    make_auth: AuthFactory, server: JwksServer, es_key: SigningKey
) -> None:
    url = server.publish("/jwks.json", jwks(es_key))
    auth = make_auth({ISS: IssuerConfig(jwks_url=url)})
    attempt = asyncio.ensure_future(auth.authenticate(token_for(es_key, jti="a"), AUD))
    await asyncio.sleep(0)
    attempt.cancel()
    with pytest.raises(asyncio.CancelledError):
        await attempt

    assert (await auth.authenticate(token_for(es_key, jti="b"), AUD)).jti == "b"


async def test_unreadable_jwks_file_is_a_401(
    make_auth: AuthFactory, tmp_path: Path, es_key: SigningKey, auth_log: pytest.LogCaptureFixture
) -> None:
    auth = make_auth({ISS: IssuerConfig(jwks_file=tmp_path / "missing.json")})

    await expect_401(auth, token_for(es_key), auth_log, "no key for kid")


async def test_jwks_url_is_fetched_and_cached(
    make_auth: AuthFactory, server: JwksServer, es_key: SigningKey, rs_key: SigningKey
) -> None:
    url = server.publish("/jwks.json", jwks(es_key, rs_key))
    auth = make_auth({ISS: IssuerConfig(jwks_url=url)})

    assert (await auth.authenticate(token_for(es_key), AUD)).issuer == ISS
    assert (await auth.authenticate(token_for(rs_key), AUD)).issuer == ISS
    assert server.count("/jwks.json") == 1


async def test_jku_on_the_allowlist_is_used(
    make_auth: AuthFactory, server: JwksServer, es_key: SigningKey
) -> None:
    jku = server.publish("/client/jwks.json", jwks(es_key))
    auth = make_auth({ISS: IssuerConfig(jku_allowlist=[jku])})

    identity = await auth.authenticate(token_for(es_key, headers={"jku": jku}), AUD)

    assert identity.issuer == ISS
    assert server.count("/client/jwks.json") == 1


async def test_jku_not_on_the_allowlist_is_rejected_without_fetching(
    make_auth: AuthFactory,
    server: JwksServer,
    es_key: SigningKey,
    auth_log: pytest.LogCaptureFixture,
) -> None:
    allowed = server.publish("/client/jwks.json", jwks(es_key))
    auth = make_auth({ISS: IssuerConfig(jku_allowlist=[allowed])})

    for jku in (server.publish("/evil/jwks.json", jwks(es_key)), allowed + "x", allowed + "/"):
        await expect_401(auth, token_for(es_key, headers={"jku": jku}), auth_log, "allowlist")
    assert server.requests == {}


async def test_token_without_jku_for_a_jku_only_issuer_is_rejected(
    make_auth: AuthFactory,
    server: JwksServer,
    es_key: SigningKey,
    auth_log: pytest.LogCaptureFixture,
) -> None:
    allowed = server.publish("/client/jwks.json", jwks(es_key))
    auth = make_auth({ISS: IssuerConfig(jku_allowlist=[allowed])})

    await expect_401(auth, token_for(es_key), auth_log, "only allows keys by jku")


# --- pinned keys win over a jku (issue 16: the CDS Hooks Sandbox always sends a jku) ---------


async def test_pinned_file_key_verifies_a_token_with_a_jku_off_the_allowlist_without_fetching(
    make_auth: AuthFactory, server: JwksServer, jwks_file: Path, es_key: SigningKey
) -> None:
    # Like the sandbox: its jku is on the internet; the operator pinned its public JWKS instead.
    jku = server.publish("/sandbox/.well-known/jwks.json", jwks(es_key))
    auth = make_auth({ISS: IssuerConfig(jwks_file=jwks_file)})

    identity = await auth.authenticate(token_for(es_key, headers={"jku": jku}), AUD)

    assert identity.issuer == ISS
    assert server.requests == {}


async def test_pinned_url_key_wins_over_an_allowlisted_jku(
    make_auth: AuthFactory, server: JwksServer, es_key: SigningKey
) -> None:
    pinned = server.publish("/pinned/jwks.json", jwks(es_key))
    jku = server.publish("/client/jwks.json", jwks(es_key))
    auth = make_auth({ISS: IssuerConfig(jwks_url=pinned, jku_allowlist=[jku])})

    for n in range(3):
        token = token_for(es_key, jti=f"p-{n}", headers={"jku": jku})
        assert (await auth.authenticate(token, AUD)).issuer == ISS
    assert server.count("/pinned/jwks.json") == 1
    assert server.count("/client/jwks.json") == 0


async def test_allowlisted_jku_serves_a_kid_the_pinned_keys_do_not_hold(
    make_auth: AuthFactory, server: JwksServer, jwks_file: Path
) -> None:
    rotated = new_es384_key("rotated-in")
    jku = server.publish("/client/jwks.json", jwks(rotated))
    auth = make_auth({ISS: IssuerConfig(jwks_file=jwks_file, jku_allowlist=[jku])})

    assert (await auth.authenticate(token_for(rotated, headers={"jku": jku}), AUD)).issuer == ISS
    assert server.count("/client/jwks.json") == 1


async def test_foreign_kid_with_a_jku_off_the_allowlist_is_rejected_without_fetching(
    make_auth: AuthFactory,
    server: JwksServer,
    jwks_file: Path,
    auth_log: pytest.LogCaptureFixture,
) -> None:
    attacker = new_es384_key("attacker")
    evil = server.publish("/evil/jwks.json", jwks(attacker))
    allowed = server.publish("/client/jwks.json", jwks(attacker))
    auth = make_auth({ISS: IssuerConfig(jwks_file=jwks_file, jku_allowlist=[allowed])})

    await expect_401(auth, token_for(attacker, headers={"jku": evil}), auth_log, "allowlist")
    assert server.requests == {}


async def test_attacker_key_under_a_pinned_kid_is_rejected_and_its_jku_not_fetched(
    make_auth: AuthFactory,
    server: JwksServer,
    jwks_file: Path,
    es_key: SigningKey,
    auth_log: pytest.LogCaptureFixture,
) -> None:
    # The attacker reuses the pinned kid and points an allowlisted jku at their own key: the
    # pinned key decides, so the signature fails and the jku is never read.
    impostor = new_es384_key(es_key.kid)
    jku = server.publish("/client/jwks.json", jwks(impostor))
    auth = make_auth({ISS: IssuerConfig(jwks_file=jwks_file, jku_allowlist=[jku])})

    await expect_401(
        auth, token_for(impostor, headers={"jku": jku}), auth_log, "InvalidSignatureError"
    )
    assert server.requests == {}


async def test_pinned_kid_with_another_algorithm_does_not_fall_through_to_the_jku(
    make_auth: AuthFactory,
    server: JwksServer,
    es_key: SigningKey,
    tmp_path: Path,
    auth_log: pytest.LogCaptureFixture,
) -> None:
    pinned = write_jwks(tmp_path / "pinned.json", es_key)
    impostor = new_key("RS384", es_key.kid)
    jku = server.publish("/client/jwks.json", jwks(impostor))
    auth = make_auth({ISS: IssuerConfig(jwks_file=pinned, jku_allowlist=[jku])})

    await expect_401(auth, token_for(impostor, headers={"jku": jku}), auth_log, "no key for kid")
    assert server.requests == {}


async def test_kid_in_no_key_set_is_rejected(
    make_auth: AuthFactory,
    server: JwksServer,
    jwks_file: Path,
    es_key: SigningKey,
    auth_log: pytest.LogCaptureFixture,
) -> None:
    jku = server.publish("/client/jwks.json", jwks(es_key))
    auth = make_auth({ISS: IssuerConfig(jwks_file=jwks_file, jku_allowlist=[jku])})
    stranger = new_es384_key("in-no-set")

    await expect_401(auth, token_for(stranger, headers={"jku": jku}), auth_log, "no key for kid")
    await expect_401(auth, token_for(stranger), auth_log, "no key for kid")


async def test_key_rotation_refetches_once_per_refresh_window(
    make_auth: AuthFactory,
    server: JwksServer,
    clock: FakeClock,
    auth_log: pytest.LogCaptureFixture,
) -> None:
    old, new, newer = new_es384_key("k-old"), new_es384_key("k-new"), new_es384_key("k-newer")
    url = server.publish("/jwks.json", jwks(old))
    auth = make_auth({ISS: IssuerConfig(jwks_url=url)})

    def token(key: SigningKey) -> str:
        return token_for(key, iat=int(clock.now))

    assert (await auth.authenticate(token(old), AUD)).issuer == ISS
    assert server.count("/jwks.json") == 1

    # The client rotates: the unknown kid triggers exactly one refetch.
    server.publish("/jwks.json", jwks(old, new, newer))
    clock.advance(REFRESH)
    assert (await auth.authenticate(token(new), AUD)).issuer == ISS
    assert server.count("/jwks.json") == 2

    # Within the refresh window no further fetch happens, for a new kid or an unknown one.
    clock.advance(REFRESH - 2)
    await expect_401(
        auth,
        token_for(old, headers={"kid": "k-unknown"}, iat=int(clock.now)),
        auth_log,
        "no key for kid",
    )
    assert (await auth.authenticate(token(newer), AUD)).issuer == ISS  # fetched with k-new
    assert server.count("/jwks.json") == 2

    # After the window an unknown kid may refetch again.
    latest = new_es384_key("k-latest")
    server.publish("/jwks.json", jwks(new, latest))
    clock.advance(2)
    assert (await auth.authenticate(token(latest), AUD)).issuer == ISS
    assert server.count("/jwks.json") == 3


async def test_second_unknown_kid_within_the_window_does_not_refetch(
    make_auth: AuthFactory,
    server: JwksServer,
    es_key: SigningKey,
    clock: FakeClock,
    auth_log: pytest.LogCaptureFixture,
) -> None:
    url = server.publish("/jwks.json", jwks(es_key))
    auth = make_auth({ISS: IssuerConfig(jwks_url=url)})
    await auth.authenticate(token_for(es_key), AUD)
    clock.advance(REFRESH)

    await expect_401(auth, token_for(es_key, headers={"kid": "a"}), auth_log, "no key for kid")
    assert server.count("/jwks.json") == 2
    await expect_401(auth, token_for(es_key, headers={"kid": "b"}), auth_log, "no key for kid")
    assert server.count("/jwks.json") == 2


async def test_concurrent_requests_with_a_new_kid_fetch_once(
    make_auth: AuthFactory, server: JwksServer, es_key: SigningKey
) -> None:
    url = server.publish("/jwks.json", jwks(es_key))
    auth = make_auth({ISS: IssuerConfig(jwks_url=url)})

    identities = await asyncio.gather(
        *(auth.authenticate(token_for(es_key, jti=f"c-{n}"), AUD) for n in range(20))
    )

    assert {identity.jti for identity in identities} == {f"c-{n}" for n in range(20)}
    assert server.count("/jwks.json") == 1


async def test_failed_fetch_is_a_401_and_is_retried_after_the_window(
    make_auth: AuthFactory,
    server: JwksServer,
    es_key: SigningKey,
    clock: FakeClock,
    auth_log: pytest.LogCaptureFixture,
) -> None:
    url = server.publish("/jwks.json", b"<html>maintenance</html>", status=503)
    auth = make_auth({ISS: IssuerConfig(jwks_url=url)})

    await expect_401(auth, token_for(es_key), auth_log, "no key for kid")
    await expect_401(auth, token_for(es_key), auth_log, "no key for kid")
    assert server.count("/jwks.json") == 1

    server.publish("/jwks.json", jwks(es_key))
    clock.advance(REFRESH)
    assert (await auth.authenticate(token_for(es_key, iat=int(clock.now)), AUD)).issuer == ISS
    assert server.count("/jwks.json") == 2


async def test_known_keys_survive_a_failed_refresh(
    make_auth: AuthFactory,
    server: JwksServer,
    es_key: SigningKey,
    clock: FakeClock,
) -> None:
    url = server.publish("/jwks.json", jwks(es_key))
    auth = make_auth({ISS: IssuerConfig(jwks_url=url)})
    await auth.authenticate(token_for(es_key), AUD)

    # Past the maximum key age the set is refetched; the key server is down, the key still works.
    server.publish("/jwks.json", b"{}", status=500)
    clock.advance(3600)
    assert (await auth.authenticate(token_for(es_key, iat=int(clock.now)), AUD)).issuer == ISS
    assert server.count("/jwks.json") == 2


async def test_removed_key_stops_working_after_the_maximum_key_age(
    make_auth: AuthFactory,
    server: JwksServer,
    es_key: SigningKey,
    clock: FakeClock,
    auth_log: pytest.LogCaptureFixture,
) -> None:
    replacement = new_es384_key("replacement")
    url = server.publish("/jwks.json", jwks(es_key))
    auth = make_auth({ISS: IssuerConfig(jwks_url=url)})
    await auth.authenticate(token_for(es_key), AUD)

    server.publish("/jwks.json", jwks(replacement))
    clock.advance(3600)
    await expect_401(auth, token_for(es_key, iat=int(clock.now)), auth_log, "no key for kid")


async def test_oversized_jwks_is_refused(
    make_auth: AuthFactory,
    server: JwksServer,
    es_key: SigningKey,
    auth_log: pytest.LogCaptureFixture,
) -> None:
    padding = [{"kty": "EC", "kid": f"pad-{n}", "x": "A" * 1000} for n in range(300)]
    url = server.publish("/jwks.json", {"keys": [*padding, es_key.public_jwk]})
    auth = make_auth({ISS: IssuerConfig(jwks_url=url)})

    await expect_401(auth, token_for(es_key), auth_log, "no key for kid")


# --- claims ----------------------------------------------------------------------------------


async def test_expired_token_is_rejected(
    auth: Authenticator, es_key: SigningKey, auth_log: pytest.LogCaptureFixture
) -> None:
    token = token_for(es_key, iat=NOW - 600, lifetime=600 - SKEW)

    await expect_401(auth, token, auth_log, "expired")


async def test_token_issued_in_the_future_is_rejected(
    auth: Authenticator, es_key: SigningKey, auth_log: pytest.LogCaptureFixture
) -> None:
    await expect_401(auth, token_for(es_key, iat=NOW + SKEW + 5), auth_log, "in the future")


async def test_nbf_in_the_future_is_rejected(
    auth: Authenticator, es_key: SigningKey, auth_log: pytest.LogCaptureFixture
) -> None:
    token = token_for(es_key, extra_claims={"nbf": NOW + SKEW + 5})

    await expect_401(auth, token, auth_log, "nbf")


async def test_wrong_audience_is_rejected(
    auth: Authenticator, es_key: SigningKey, auth_log: pytest.LogCaptureFixture
) -> None:
    await expect_401(auth, token_for(es_key, aud=AUD + "-other"), auth_log, "Audience")


async def test_audience_must_match_exactly(
    auth: Authenticator, es_key: SigningKey, auth_log: pytest.LogCaptureFixture
) -> None:
    for near_miss in (AUD + "/", AUD.upper(), "https://cds.example.org/cds-services"):
        await expect_401(auth, token_for(es_key, aud=near_miss), auth_log, "Audience")


async def test_token_for_the_discovery_endpoint_is_rejected_by_a_service(
    auth: Authenticator, es_key: SigningKey, auth_log: pytest.LogCaptureFixture
) -> None:
    discovery = "https://cds.example.org/cds-services"
    token = token_for(es_key, aud=discovery)

    assert (await auth.authenticate(token, discovery)).issuer == ISS
    await expect_401(auth, token_for(es_key, aud=discovery), auth_log, "Audience", audience=AUD)


async def test_unknown_issuer_is_rejected(
    auth: Authenticator, es_key: SigningKey, auth_log: pytest.LogCaptureFixture
) -> None:
    token = token_for(es_key, iss="https://evil.example.org")

    await expect_401(auth, token, auth_log, "unknown issuer")


async def test_tampered_payload_is_rejected(
    auth: Authenticator, es_key: SigningKey, auth_log: pytest.LogCaptureFixture
) -> None:
    header, payload, signature = mint(es_key, iss=ISS, aud=AUD, iat=NOW).split(".")
    claims_ = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims_["tenant"] = "someone-else"
    forged = f"{header}.{b64url(json.dumps(claims_).encode())}.{signature}"

    await expect_401(auth, bearer(forged), auth_log, "InvalidSignatureError")


async def test_replayed_jti_is_rejected(
    auth: Authenticator, es_key: SigningKey, auth_log: pytest.LogCaptureFixture
) -> None:
    token = token_for(es_key, jti="once")
    assert (await auth.authenticate(token, AUD)).jti == "once"

    await expect_401(auth, token, auth_log, "replayed jti")
    # A fresh token reusing the jti is a replay too.
    await expect_401(auth, token_for(es_key, jti="once"), auth_log, "replayed jti")


async def test_missing_jti_is_rejected(
    auth: Authenticator, es_key: SigningKey, auth_log: pytest.LogCaptureFixture
) -> None:
    await expect_401(auth, token_for(es_key, jti=None), auth_log, "jti")


@pytest.mark.parametrize("jti", ["", 42, "x" * 256])
async def test_unusable_jti_is_rejected(
    auth: Authenticator, es_key: SigningKey, auth_log: pytest.LogCaptureFixture, jti: Any
) -> None:
    token = token_for(es_key, jti=None, extra_claims={"jti": jti})

    await expect_401(auth, token, auth_log, "jti")


@pytest.mark.parametrize("claim", ["exp", "iat", "aud", "iss"])
async def test_missing_required_claim_is_rejected(
    auth: Authenticator, es_key: SigningKey, auth_log: pytest.LogCaptureFixture, claim: str
) -> None:
    token = token_for(es_key, extra_claims={claim: None})

    reason = "no iss claim" if claim == "iss" else claim
    await expect_401(auth, token, auth_log, reason)


@pytest.mark.parametrize("value", ["1760000300", True, float("nan"), float("inf"), None])
async def test_exp_must_be_a_finite_number(
    auth: Authenticator, es_key: SigningKey, auth_log: pytest.LogCaptureFixture, value: Any
) -> None:
    payload = {**claims(iss=ISS, aud=AUD, iat=NOW), "exp": value}
    token = sign(es_key, {"alg": "ES384", "typ": "JWT", "kid": es_key.kid}, payload)

    await expect_401(auth, bearer(token), auth_log, "exp")


async def test_lifetime_over_the_maximum_is_rejected(
    auth: Authenticator, es_key: SigningKey, auth_log: pytest.LogCaptureFixture
) -> None:
    token = token_for(es_key, lifetime=MAX_LIFETIME + 1)

    await expect_401(auth, token, auth_log, "lifetime")


async def test_exp_before_iat_is_rejected(
    auth: Authenticator, es_key: SigningKey, auth_log: pytest.LogCaptureFixture
) -> None:
    token = token_for(es_key, iat=NOW + 30, extra_claims={"exp": NOW + 20})

    await expect_401(auth, token, auth_log, "exp is not after iat")


async def test_non_string_tenant_is_rejected(
    auth: Authenticator, es_key: SigningKey, auth_log: pytest.LogCaptureFixture
) -> None:
    token = token_for(es_key, extra_claims={"tenant": {"id": 1}})

    await expect_401(auth, token, auth_log, "tenant")


# --- the Authorization header ----------------------------------------------------------------


async def test_missing_authorization_header_is_rejected(
    auth: Authenticator, auth_log: pytest.LogCaptureFixture
) -> None:
    await expect_401(auth, None, auth_log, "no Authorization header")


@pytest.mark.parametrize("scheme", ["Basic", "Token", "DPoP", ""])
async def test_non_bearer_scheme_is_rejected(
    auth: Authenticator, es_key: SigningKey, auth_log: pytest.LogCaptureFixture, scheme: str
) -> None:
    token = mint(es_key, iss=ISS, aud=AUD, iat=NOW)

    await expect_401(auth, f"{scheme} {token}".strip(), auth_log, "not a Bearer credential")


async def test_bearer_scheme_is_case_insensitive(auth: Authenticator, es_key: SigningKey) -> None:
    token = mint(es_key, iss=ISS, aud=AUD, iat=NOW)

    assert (await auth.authenticate(f"bearer {token}", AUD)).issuer == ISS


@pytest.mark.parametrize(
    "authorization",
    [
        "Bearer",
        "Bearer ",
        "Bearer garbage",
        "Bearer a.b.c",
        "Bearer ...",
        "Bearer eyJhbGciOiJFUzM4NCJ9",
        "Bearer eyJ.eyJ.sig",
        "Bearer " + "A" * 20_000,
        "Bearer tøken.ünïcode.x",
    ],
)
async def test_garbage_token_is_rejected(
    auth: Authenticator, auth_log: pytest.LogCaptureFixture, authorization: str
) -> None:
    caplog = auth_log
    caplog.clear()
    with pytest.raises(ServiceError) as failure:
        await auth.authenticate(authorization, AUD)
    assert failure.value.status == 401
    assert failure.value.diagnostics == "authentication failed"
    assert any(r.name == "rpl_cds.auth" for r in caplog.records)


# --- robustness ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fuzz_jwks(tmp_path_factory: pytest.TempPathFactory, es_key: SigningKey) -> Path:
    return write_jwks(tmp_path_factory.mktemp("fuzz") / "jwks.json", es_key)


@pytest.fixture(scope="module")
def fuzz_auth(fuzz_jwks: Path) -> Authenticator:
    # Built once: hypothesis runs each example in its own event loop, and with a JWKS file the
    # HTTP client is never used, so no loop-bound resource is shared between examples.
    settings = Settings(
        auth_issuers={ISS: IssuerConfig(jwks_file=fuzz_jwks)},
        public_base_url="https://cds.example.org",
    )
    clock = FakeClock()
    return Authenticator(
        settings, httpx.AsyncClient(trust_env=False), MemoryReplayCache(clock), clock
    )


def _fuzz_authenticate(auth: Authenticator, authorization: str, may_pass: bool = True) -> None:
    """A 401 with the fixed safe message; a 200 only where the input may be a valid token."""

    async def run() -> tuple[int, str]:
        try:
            await auth.authenticate(authorization, AUD)
        except ServiceError as error:
            return error.status, error.diagnostics
        return 200, "ok"

    allowed = {(401, "authentication failed")} | ({(200, "ok")} if may_pass else set())
    assert asyncio.run(run()) in allowed


_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=6,
)


@hypothesis_settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(authorization=st.text(max_size=200))
def test_arbitrary_authorization_text_is_a_401_or_nothing(
    fuzz_auth: Authenticator, authorization: str
) -> None:
    # Random text is never a token signed by a trusted key: it must not authenticate.
    _fuzz_authenticate(fuzz_auth, authorization, may_pass=False)


@hypothesis_settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    header=st.dictionaries(
        st.sampled_from(["alg", "typ", "kid", "jku", "crit", "b64", "x5u"]), _JSON_VALUES
    ),
    payload=st.dictionaries(
        st.sampled_from(["iss", "aud", "exp", "iat", "nbf", "jti", "sub", "tenant"]), _JSON_VALUES
    ),
)
def test_signed_tokens_with_odd_headers_and_claims_never_crash(
    fuzz_auth: Authenticator, es_key: SigningKey, header: dict[str, Any], payload: dict[str, Any]
) -> None:
    # Start from a valid token and let hypothesis overwrite parts of it.
    full_header = {"alg": "ES384", "typ": "JWT", "kid": es_key.kid, **header}
    full_payload = {**claims(iss=ISS, aud=AUD, iat=NOW), **payload}
    _fuzz_authenticate(fuzz_auth, bearer(sign(es_key, full_header, full_payload)))
