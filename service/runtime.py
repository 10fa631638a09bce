"""Everything a request needs that outlives it, built once in the app's lifespan and handed to
handlers through FastAPI dependencies (never module globals).

The handlers of every package import this module, so it imports their components for typing only:
the composition root adds no arrow back to the packages at run time (app.py builds it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import httpx
from fastapi import Request

from service.settings import Settings

if TYPE_CHECKING:
    from service.auth.authenticator import Authenticator
    from service.cdshooks.catalogue import Catalogue
    from service.cdshooks.suppression import Suppression
    from service.feedback.issued_writer import IssuedCardWriter
    from service.feedback.store import FeedbackStore
    from service.fhir.fetch import FhirFetcher
    from service.ops.metrics import Metrics


@dataclass
class Runtime:
    settings: Settings
    catalogue: Catalogue
    store: FeedbackStore
    issued: IssuedCardWriter
    http: httpx.AsyncClient
    metrics: Metrics
    authenticator: Authenticator | None
    fetcher: FhirFetcher
    suppression: Suppression


# async: a plain function dependency would be run in the thread pool, a thread hop per request.
async def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime
