"""Liveness, readiness and metrics. Open without a JWT: orchestrators and scrapers carry none, and
none of these answers holds patient data."""

from __future__ import annotations

from typing import Annotated

import orjson
from fastapi import APIRouter, Depends
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.errors import outcome_response
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
    database = await runtime.store.ping()
    checks = {
        "knowledge": f"{len(runtime.catalogue.services)} services",
        "database": "reachable" if database else "unreachable",
    }
    if not database:
        return outcome_response(503, "not ready: the database is unreachable")
    body = {"status": "ready", "checks": checks}
    return Response(orjson.dumps(body), media_type="application/json")


@router.get("/metrics")
async def metrics(runtime: RuntimeDep) -> Response:
    return Response(generate_latest(runtime.metrics.exposition()), media_type=CONTENT_TYPE_LATEST)
