"""FastAPI dependencies that require a verified client JWT when authentication is on."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from service.auth.identity import ClientIdentity
from service.errors import ServiceError
from service.ops.timing import timer_of
from service.runtime import Runtime, get_runtime


def audience_for(request: Request, runtime: Runtime) -> str:
    """The exact URL the client called (CDS Hooks: `aud` is the endpoint URL), on the configured
    public base URL: never on the request's Host header, which the caller chooses."""
    base = runtime.settings.public_base_url
    if base is None:
        # Settings refuse authentication without it; reaching here is a deployment bug.
        raise ServiceError(500, "the service has no public base URL to check tokens against")
    return str(base).rstrip("/") + request.url.path


async def authenticated(
    request: Request, runtime: Annotated[Runtime, Depends(get_runtime)]
) -> ClientIdentity | None:
    if runtime.authenticator is None:
        return None
    with timer_of(request).phase("auth"):
        return await runtime.authenticator.authenticate(
            request.headers.get("authorization"), audience_for(request, runtime)
        )


async def authenticated_admin(
    identity: Annotated[ClientIdentity | None, Depends(authenticated)],
    runtime: Annotated[Runtime, Depends(get_runtime)],
) -> ClientIdentity | None:
    allowed = runtime.settings.admin_issuers
    if identity is not None and allowed and identity.issuer not in allowed:
        raise ServiceError(403, "this client may not read analytics")
    return identity
