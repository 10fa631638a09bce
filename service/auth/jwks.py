"""Client signing keys: JWKS documents read from a file or fetched over HTTP, cached per source."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import httpx
from jwt import PyJWK, PyJWTError

log = logging.getLogger("rpl_cds.auth")

# A JWKS endpoint sits on the request path of an EHR call that has a budget of a few seconds, so a
# slow key server must fail fast; the overall deadline also bounds a server that trickles bytes.
FETCH_TIMEOUT: Final = httpx.Timeout(2.0)
FETCH_DEADLINE_SECONDS: Final = 3.0
# Real JWKS documents are a few kB; the cap keeps a hostile or broken endpoint from filling memory.
MAX_JWKS_BYTES: Final = 256 * 1024
# Keys that are still known are re-fetched this often anyway, so that a key the client removed
# from its JWKS (e.g. after a compromise) stops being accepted without a restart.
MAX_KEY_AGE_SECONDS: Final = 3600.0


class JwksError(Exception):
    """A JWKS document that could not be obtained or is not a JWK Set."""


class KeySet:
    """The verification keys of one JWKS document, looked up by `kid` and header `alg`."""

    def __init__(self, document: Any) -> None:
        if not isinstance(document, Mapping) or not isinstance(document.get("keys"), list):
            raise JwksError("not a JWK Set (no 'keys' array)")
        self._by_kid: dict[str, list[dict[str, Any]]] = {}
        # Built lazily because an RSA JWK without "alg" can serve RS256/RS384/PS384...: the
        # algorithm comes from the token header (already checked against the allowlist).
        self._built: dict[tuple[str, str], PyJWK | None] = {}
        for jwk in document["keys"]:
            if _usable_for_verification(jwk):
                self._by_kid.setdefault(jwk["kid"], []).append(jwk)

    @classmethod
    def from_json(cls, raw: bytes) -> KeySet:
        try:
            return cls(json.loads(raw))
        except (ValueError, RecursionError) as exc:
            raise JwksError(f"JWKS is not JSON: {exc}") from None

    def __contains__(self, kid: object) -> bool:
        return kid in self._by_kid

    def __len__(self) -> int:
        return len(self._by_kid)

    def find(self, kid: str, alg: str) -> PyJWK | None:
        """The key published under `kid` that can verify `alg`, or None."""
        if kid not in self._by_kid:
            # Not memoised: kids come from unauthenticated tokens and would grow the cache.
            return None
        cache_key = (kid, alg)
        if cache_key not in self._built:
            self._built[cache_key] = self._build(kid, alg)
        return self._built[cache_key]

    def _build(self, kid: str, alg: str) -> PyJWK | None:
        for jwk in self._by_kid.get(kid, ()):
            declared = jwk.get("alg")
            if declared is not None and declared != alg:
                continue
            try:
                # Binding the PyJWK to `alg` makes PyJWT verify with exactly that algorithm and
                # check the key type and EC curve against it.
                return PyJWK(jwk, algorithm=alg)
            except PyJWTError as exc:
                log.debug("JWK %r unusable for %s: %s", kid, alg, type(exc).__name__)
        return None


def _usable_for_verification(jwk: Any) -> bool:
    if not isinstance(jwk, Mapping):
        return False
    kid = jwk.get("kid")
    if not isinstance(kid, str) or not kid or not isinstance(jwk.get("kty"), str):
        return False
    if "d" in jwk or jwk.get("kty") == "oct":
        # Private or symmetric key material has no place in a client's public JWKS; using it
        # would verify with a secret the whole world may now know.
        log.warning("ignoring JWK %r: it carries private or symmetric key material", kid)
        return False
    if jwk.get("use", "sig") != "sig":
        return False
    key_ops = jwk.get("key_ops")
    return key_ops is None or (isinstance(key_ops, list) and "verify" in key_ops)


@dataclass
class _UrlEntry:
    keys: KeySet | None = None
    fetched_at: float = float("-inf")
    attempted_at: float = float("-inf")


class JwksCache:
    """Keys per JWKS source. URL sources are refetched when a `kid` is unknown (key rotation),
    at most once per `refresh_seconds` per URL, and at least every MAX_KEY_AGE_SECONDS."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        refresh_seconds: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._http = http
        self._refresh_seconds = refresh_seconds
        self._clock = clock
        self._files: dict[Path, KeySet] = {}
        self._urls: dict[str, _UrlEntry] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def key_from_url(self, url: str, kid: str, alg: str) -> PyJWK | None:
        keys = await self.keys_from_url(url, kid)
        return keys.find(kid, alg) if keys is not None else None

    async def keys_from_file(self, path: Path) -> KeySet | None:
        """The key set in `path`, or None when it cannot be read."""
        keys = self._files.get(path)
        if keys is None:
            try:
                raw = await asyncio.to_thread(path.read_bytes)
                keys = KeySet.from_json(raw)
            except (OSError, JwksError) as exc:
                # Not cached: an operator fixing the file should not need a restart.
                log.warning("cannot read JWKS file %s: %s", path, exc)
                return None
            self._files[path] = keys
        return keys

    async def keys_from_url(self, url: str, kid: str) -> KeySet | None:
        """The key set published at `url`, refetched first when it does not hold `kid` (the
        client may have rotated its keys) and the refresh window allows; None when it was
        never obtained."""
        entry = self._urls.get(url)
        if (
            entry is not None
            and entry.keys is not None
            and not self._aged(entry)
            and kid in entry.keys
        ):
            return entry.keys
        lock = self._locks.setdefault(url, asyncio.Lock())
        async with lock:
            # Concurrent requests with the same new kid queue here; the first one fetches and
            # the others find its result (or the rate limit) instead of fetching again.
            entry = self._urls.setdefault(url, _UrlEntry())
            if entry.keys is not None and not self._aged(entry) and kid in entry.keys:
                return entry.keys
            if self._clock() - entry.attempted_at >= self._refresh_seconds:
                await self._fetch(url, entry)
            return entry.keys

    def _aged(self, entry: _UrlEntry) -> bool:
        return self._clock() - entry.fetched_at >= max(MAX_KEY_AGE_SECONDS, self._refresh_seconds)

    async def _fetch(self, url: str, entry: _UrlEntry) -> None:
        started = self._clock()
        previous_attempt, entry.attempted_at = entry.attempted_at, started
        try:
            async with asyncio.timeout(FETCH_DEADLINE_SECONDS):
                raw = await self._get(url)
            keys = KeySet.from_json(raw)
        except asyncio.CancelledError:
            # The caller went away mid-fetch; that says nothing about the key server, so the
            # next request may fetch at once instead of waiting out the refresh window.
            entry.attempted_at = previous_attempt
            raise
        except (httpx.HTTPError, TimeoutError, JwksError) as exc:
            # Keep serving the previous keys: an outage of the client's key server should not
            # lock out a client whose key we already know.
            log.warning("JWKS fetch from %s failed: %s", url, str(exc) or type(exc).__name__)
            return
        entry.keys = keys
        entry.fetched_at = started
        log.info("fetched JWKS from %s (%d key ids)", url, len(keys))

    async def _get(self, url: str) -> bytes:
        # Redirects are not followed: the configured or allowlisted URL is the trust anchor.
        async with self._http.stream(
            "GET",
            url,
            headers={"Accept": "application/jwk-set+json, application/json"},
            timeout=FETCH_TIMEOUT,
            follow_redirects=False,
        ) as response:
            if response.status_code != 200:
                raise JwksError(f"HTTP {response.status_code}")
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > MAX_JWKS_BYTES:
                    raise JwksError(f"JWKS larger than {MAX_JWKS_BYTES} bytes")
            return bytes(body)
