"""Everything a request needs that outlives it, built once in the app's lifespan and handed to
handlers through FastAPI dependencies (never module globals)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import httpx
from fastapi import Request

from service.cdshooks.catalogue import Catalogue
from service.fhir.fetch import FhirFetcher
from service.ops.metrics import Metrics
from service.settings import Settings

if TYPE_CHECKING:
    from service.auth.authenticator import Authenticator
    from service.feedback.issued_writer import IssuedCardWriter
    from service.feedback.store import FeedbackStore
    from service.feedback.suppression import Suppression


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
