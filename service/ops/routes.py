"""Liveness, readiness and metrics. Open without a JWT: orchestrators and scrapers carry none, and
none of these answers holds patient data."""

from __future__ import annotations

from typing import Annotated

import orjson
from fastapi import APIRouter, Depends
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.errors import Issue, outcome_response
from service.feedback.outage import RETRY_AFTER_SECONDS
from service.runtime import Runtime, get_runtime

router = APIRouter()

# What orchestrators and scrapers call: answered however busy the service is.
OPERATIONS_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})

RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


@router.get("/healthz")
async def healthz() -> Response:
    return Response(orjson.dumps({"status": "alive"}), media_type="application/json")


@router.get("/readyz")
async def readyz(runtime: RuntimeDep) -> Response:
    # The reason is in fixed words from the store, never the driver's message: this endpoint is
    # open, and a driver's message can name the host, port and user.
    problem = await runtime.store.check()
    if problem is not None:
        return outcome_response(
            503,
            f"not ready: the database is unavailable ({problem})",
            [Issue(f"database: {problem}")],
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        )
    checks = {
        "knowledge": f"{len(runtime.catalogue.services)} services",
        "database": "reachable",
    }
    body = {"status": "ready", "checks": checks}
    return Response(orjson.dumps(body), media_type="application/json")


@router.get("/metrics")
async def metrics(runtime: RuntimeDep) -> Response:
    return Response(generate_latest(runtime.metrics.exposition()), media_type=CONTENT_TYPE_LATEST)
