"""Who called: the authenticated CDS client. Apart from the authenticator, so that the routes can
name it without importing PyJWT and cryptography into a service that runs without authentication."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ClientIdentity:
    """The authenticated CDS client behind one call."""

    issuer: str
    jti: str
    subject: str | None = None  # Epic sends sub = its CDS Hooks client id; tolerated, not required
    tenant: str | None = None
