"""Real signing keys, JWKS documents, client JWTs and a loopback JWKS server for tests.

Tokens are assembled by hand (not with `jwt.encode`) so that tests can produce exactly the header
an attacker or a misbehaving EHR would send, including ones PyJWT refuses to create.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from enum import Enum
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Literal

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import get_default_algorithms

_CURVES: Final[dict[str, ec.EllipticCurve]] = {
    "ES256": ec.SECP256R1(),
    "ES384": ec.SECP384R1(),
    "ES512": ec.SECP521R1(),
}
_RSA_ALGS: Final = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})


@dataclass(frozen=True)
class SigningKey:
    """A client's private signing key and the public JWK a JWKS would publish for it."""

    kid: str
    alg: str
    private_pem: bytes
    public_pem: bytes
    public_jwk: dict[str, Any]


def new_key(alg: str, kid: str | None = None, *, rsa_bits: int = 2048) -> SigningKey:
    """A fresh key pair for `alg` (ES256/384/512, RS* or PS*)."""
    private: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
    if alg in _CURVES:
        private = ec.generate_private_key(_CURVES[alg])
    elif alg in _RSA_ALGS:
        private = rsa.generate_private_key(public_exponent=65537, key_size=rsa_bits)
    else:
        raise ValueError(f"no key generator for {alg}")
    kid = kid or f"{alg.lower()}-{uuid.uuid4().hex[:8]}"
    private_pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    algorithm = get_default_algorithms()[alg]
    public_jwk: dict[str, Any] = algorithm.to_jwk(private.public_key(), as_dict=True)
    public_jwk.update({"kid": kid, "alg": alg, "use": "sig"})
    return SigningKey(kid, alg, private_pem, public_pem, public_jwk)


def new_es384_key(kid: str = "es384-1") -> SigningKey:
    return new_key("ES384", kid)


def new_rs384_key(kid: str = "rs384-1", *, bits: int = 2048) -> SigningKey:
    return new_key("RS384", kid, rsa_bits=bits)


def jwks(*keys: SigningKey) -> dict[str, Any]:
    """The JWKS document publishing the public halves of `keys`."""
    return {"keys": [dict(key.public_jwk) for key in keys]}


def write_jwks(path: Path, *keys: SigningKey) -> Path:
    path.write_text(json.dumps(jwks(*keys)), encoding="utf-8")
    return path


class _Default(Enum):
    RANDOM = "random"


RANDOM_JTI: Final = _Default.RANDOM


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _segment(obj: dict[str, Any]) -> str:
    return b64url(json.dumps(obj, separators=(",", ":")).encode())


def _without_none(base: dict[str, Any], overrides: dict[str, Any] | None) -> dict[str, Any]:
    merged = {**base, **(overrides or {})}
    return {name: value for name, value in merged.items() if value is not None}


def claims(
    *,
    iss: str,
    aud: str | list[str],
    lifetime: int = 300,
    jti: str | Literal[_Default.RANDOM] | None = RANDOM_JTI,
    extra_claims: dict[str, Any] | None = None,
    iat: int | None = None,
) -> dict[str, Any]:
    """CDS Hooks client claims; a None in `extra_claims` removes that claim."""
    issued = int(time.time()) if iat is None else iat
    base: dict[str, Any] = {"iss": iss, "aud": aud, "iat": issued, "exp": issued + lifetime}
    if jti is RANDOM_JTI:
        base["jti"] = str(uuid.uuid4())
    elif jti is not None:
        base["jti"] = jti
    return _without_none(base, extra_claims)


def sign(key: SigningKey, header: dict[str, Any], payload: dict[str, Any]) -> str:
    """A compact JWS over exactly `header` and `payload`, signed with the key's own algorithm
    whatever the header claims."""
    signing_input = f"{_segment(header)}.{_segment(payload)}"
    algorithm = get_default_algorithms()[key.alg]
    signature = algorithm.sign(signing_input.encode(), algorithm.prepare_key(key.private_pem))
    return f"{signing_input}.{b64url(signature)}"


def mint(
    key: SigningKey,
    *,
    iss: str,
    aud: str | list[str],
    lifetime: int = 300,
    jti: str | Literal[_Default.RANDOM] | None = RANDOM_JTI,
    extra_claims: dict[str, Any] | None = None,
    headers: dict[str, Any] | None = None,
    iat: int | None = None,
) -> str:
    """A CDS Hooks client JWT. `jti=None` omits the jti; None values in `headers` or
    `extra_claims` remove that header parameter or claim (e.g. `headers={"typ": None}`)."""
    header = _without_none({"alg": key.alg, "kid": key.kid, "typ": "JWT"}, headers)
    payload = claims(
        iss=iss, aud=aud, lifetime=lifetime, jti=jti, extra_claims=extra_claims, iat=iat
    )
    return sign(key, header, payload)


def unsigned_token(header: dict[str, Any], payload: dict[str, Any]) -> str:
    """An `alg: none` style token (empty signature)."""
    return f"{_segment(header)}.{_segment(payload)}."


def hs256_token(secret: bytes, header: dict[str, Any], payload: dict[str, Any]) -> str:
    """An HMAC-signed token; with a public key as `secret` this is the classic key-confusion
    attack, which PyJWT itself refuses to produce."""
    signing_input = f"{_segment(header)}.{_segment(payload)}"
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(mac)}"


def bearer(token: str) -> str:
    return f"Bearer {token}"


@dataclass
class _Route:
    body: bytes
    status: int = 200
    content_type: str = "application/json"


@dataclass
class JwksServer:
    """A real HTTP server on 127.0.0.1 (ephemeral port) serving JSON documents per path and
    counting the requests it receives. Use as a context manager:

        with JwksServer() as server:
            server.publish("/jwks.json", jwks(key))
            url = server.url("/jwks.json")
    """

    requests: Counter[str] = field(default_factory=Counter)
    _routes: dict[str, _Route] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None

    def publish(self, path: str, document: dict[str, Any] | bytes, *, status: int = 200) -> str:
        body = document if isinstance(document, bytes) else json.dumps(document).encode()
        with self._lock:
            self._routes[path] = _Route(body, status)
        return self.url(path)

    def count(self, path: str) -> int:
        with self._lock:
            return self.requests[path]

    def url(self, path: str) -> str:
        if self._server is None:
            raise RuntimeError("the server is not running")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}{path}"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with owner._lock:
                    owner.requests[self.path] += 1
                    route = owner._routes.get(self.path)
                if route is None:
                    route = _Route(b'{"error": "not found"}', 404)
                self.send_response(route.status)
                self.send_header("Content-Type", route.content_type)
                self.send_header("Content-Length", str(len(route.body)))
                self.end_headers()
                self.wfile.write(route.body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler

    def __enter__(self) -> JwksServer:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        # A short poll interval keeps shutdown() (and so each test's teardown) quick.
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None
