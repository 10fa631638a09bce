"""Authentication of CDS clients (EHRs) by the JWT they sign for every call (CDS Hooks 2.0,
"Security"): `Authorization: Bearer <JWS>` with the client's asymmetric key, published in a JWKS.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Final, NoReturn

import httpx
import jwt
from jwt import PyJWK

from service.auth.identity import ClientIdentity
from service.auth.jwks import JwksCache, KeySet
from service.auth.replay import ReplayCache
from service.errors import ServiceError
from service.settings import ASYMMETRIC_ALGORITHMS, IssuerConfig, Settings

log = logging.getLogger("rpl_cds.auth")

# Far above any real client JWT (an RS4096 token is ~1 kB); refusing early bounds the parsing
# work an unauthenticated caller can cause.
MAX_TOKEN_CHARS: Final = 16_384
# The jti is stored by the replay cache; a bound keeps one caller from writing large rows.
MAX_JTI_CHARS: Final = 255
# Attacker-controlled values are logged shortened and repr()-quoted (no log injection).
_LOG_VALUE_CHARS: Final = 120

_REQUIRED_CLAIMS: Final = ["iss", "aud", "exp", "iat", "jti"]


class _Rejected(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _reject(reason: str) -> NoReturn:
    raise _Rejected(reason)


def _shown(value: object) -> str:
    text = value if isinstance(value, str) else str(value)
    return repr(text[:_LOG_VALUE_CHARS])


def _timestamp(claims: dict[str, Any], name: str) -> float:
    value = claims.get(name)
    # bool is an int subclass, and Python's json accepts NaN/Infinity: neither is a NumericDate.
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        _reject(f"claim {name} is not a NumericDate")
    return float(value)


class Authenticator:
    """Checks the bearer JWT of one call and answers who the client is, or a generic 401.

    Caches (JWKS per source) live on the instance; create one per application."""

    def __init__(
        self,
        settings: Settings,
        http: httpx.AsyncClient,
        replay: ReplayCache,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._settings = settings
        self._replay = replay
        self._clock = clock
        self._skew = settings.auth_clock_skew_seconds
        # Intersected again although Settings validates it: a Settings built with
        # model_construct() skips validation, and HS*/none here would be a forgery hole.
        self._algorithms = frozenset(settings.auth_algorithms) & ASYMMETRIC_ALGORITHMS
        self._keys = JwksCache(
            http, refresh_seconds=settings.auth_jwks_refresh_seconds, clock=clock
        )

    async def authenticate(self, authorization: str | None, audience: str) -> ClientIdentity:
        """Authenticate the raw `Authorization` header value for a call to the exact URL
        `audience`. Every failure is the same 401 so that a caller learns nothing from it;
        the specific reason goes to the log (never the token)."""
        context: dict[str, str] = {}
        try:
            return await self._authenticate(authorization, audience, context)
        except _Rejected as exc:
            reason = exc.reason
        except jwt.PyJWTError as exc:
            reason = f"{type(exc).__name__}: {exc}"
        details = " ".join(f"{name}={value}" for name, value in context.items())
        log.info("client authentication failed: %s %s", _shown(reason), details)
        raise ServiceError(401, "authentication failed", headers={"WWW-Authenticate": "Bearer"})

    async def _authenticate(
        self, authorization: str | None, audience: str, context: dict[str, str]
    ) -> ClientIdentity:
        token = self._bearer_token(authorization)

        header = jwt.get_unverified_header(token)
        alg, kid, jku = self._check_header(header, context)

        # iss is read unverified only to choose whose keys verify the signature; it is
        # verified together with everything else below.
        unverified = jwt.decode(token, options={"verify_signature": False})
        iss = unverified.get("iss")
        if not isinstance(iss, str):
            _reject("no iss claim")
        context["iss"] = _shown(iss)
        issuer = self._settings.auth_issuers.get(iss)
        if issuer is None:
            _reject("unknown issuer")

        key = await self._find_key(issuer, kid, alg, jku)
        if key is None:
            _reject("no key for kid")

        claims = jwt.decode(
            token,
            key,
            algorithms=[alg],
            audience=audience,
            issuer=iss,
            options={
                "require": _REQUIRED_CLAIMS,
                "enforce_minimum_key_length": True,
                # Time claims are checked below against the injected clock.
                "verify_exp": False,
                "verify_iat": False,
                "verify_nbf": False,
            },
        )
        exp = self._check_times(claims)

        jti = claims["jti"]
        if not isinstance(jti, str) or not jti or len(jti) > MAX_JTI_CHARS:
            _reject("jti is not a usable string")
        subject = claims.get("sub")
        tenant = claims.get("tenant")
        if tenant is not None and not isinstance(tenant, str):
            _reject("tenant is not a string")

        # Kept until the token could no longer be accepted anyway (exp plus the skew leeway).
        expires_at = datetime.fromtimestamp(exp + self._skew, UTC)
        if not await self._replay.remember_jti(iss, jti, expires_at=expires_at):
            _reject("replayed jti")
        return ClientIdentity(issuer=iss, jti=jti, subject=subject, tenant=tenant)

    @staticmethod
    def _bearer_token(authorization: str | None) -> str:
        if authorization is None:
            _reject("no Authorization header")
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer":
            _reject("not a Bearer credential")
        token = token.strip()
        if not token:
            _reject("empty bearer token")
        if len(token) > MAX_TOKEN_CHARS:
            _reject("token too long")
        return token

    def _check_header(
        self, header: dict[str, Any], context: dict[str, str]
    ) -> tuple[str, str, str | None]:
        alg = header.get("alg")
        # Before any key lookup, so that `none` and HMAC tokens never meet a key.
        if not isinstance(alg, str) or alg not in self._algorithms:
            _reject(f"algorithm {_shown(alg)} not allowed")
        typ = header.get("typ")
        if not isinstance(typ, str) or typ.lower() != "jwt":
            _reject(f"typ {_shown(typ)} is not JWT")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            _reject("no kid")
        context["kid"] = _shown(kid)
        jku = header.get("jku")
        if jku is not None and not isinstance(jku, str):
            _reject("jku is not a string")
        if "crit" in header or "b64" in header:
            # RFC 7797 unencoded payloads are not JWTs; no CDS client sends them.
            _reject("critical or b64 header parameters are not supported")
        return alg, kid, jku

    async def _find_key(
        self, issuer: IssuerConfig, kid: str, alg: str, jku: str | None
    ) -> PyJWK | None:
        # Keys the operator pinned (a file, or a URL they chose) win over a `jku`, which the
        # token itself names: a client that always sends a `jku` (the CDS Hooks Sandbox does)
        # is verified with the pinned keys, and the `jku` is never fetched. Only a `kid` that no
        # pinned set holds may be looked up at a `jku`, and only at one on the allowlist.
        pinned = await self._pinned_keys(issuer, kid)
        if pinned is not None:
            # A pinned kid is final even when its key cannot verify this alg: falling through to
            # the `jku` would let a token swap the operator's key for one it points at.
            return pinned.find(kid, alg)
        if jku is not None:
            # Exact string match: a prefix or host match would let anyone who can publish a
            # file under an allowed host supply their own keys.
            if jku not in issuer.jku_allowlist:
                _reject(f"jku {_shown(jku)} not on the issuer's allowlist")
            return await self._keys.key_from_url(jku, kid, alg)
        if issuer.jwks_file is None and issuer.jwks_url is None:
            _reject("the issuer only allows keys by jku and the token has none")
        return None

    async def _pinned_keys(self, issuer: IssuerConfig, kid: str) -> KeySet | None:
        """The operator-configured key set that holds `kid`, or None."""
        if issuer.jwks_file is not None:
            keys = await self._keys.keys_from_file(issuer.jwks_file)
            if keys is not None and kid in keys:
                return keys
        if issuer.jwks_url is not None:
            keys = await self._keys.keys_from_url(str(issuer.jwks_url), kid)
            if keys is not None and kid in keys:
                return keys
        return None

    def _check_times(self, claims: dict[str, Any]) -> float:
        now = self._clock()
        exp = _timestamp(claims, "exp")
        iat = _timestamp(claims, "iat")
        if exp <= now - self._skew:
            _reject("token expired")
        if iat > now + self._skew:
            _reject("token issued in the future")
        if "nbf" in claims and _timestamp(claims, "nbf") > now + self._skew:
            _reject("token not yet valid (nbf)")
        if exp <= iat:
            _reject("exp is not after iat")
        if exp - iat > self._settings.auth_max_token_lifetime_seconds:
            _reject("token lifetime above the maximum")
        return exp
