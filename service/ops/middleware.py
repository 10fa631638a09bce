"""Timing, metrics and the per-call log line for every HTTP request (pure ASGI: no body copy)."""

from __future__ import annotations

import logging
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.ops.logging import CALL_LOGGER
from service.ops.metrics import Metrics
from service.ops.routes import OPERATIONS_PATHS

log = logging.getLogger(CALL_LOGGER)


class CallObserver:
    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def observe(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, observe)
        finally:
            self._record(scope, status, time.perf_counter() - started)

    def _record(self, scope: Scope, status: int, seconds: float) -> None:
        state: dict[str, Any] = scope.get("state", {})
        fields: dict[str, Any] = state.get("log", {})
        route = scope.get("route")
        endpoint = getattr(route, "path", "unmatched")
        service = fields.get("service", "-")
        self.metrics.requests.labels(endpoint, service, str(status)).inc()
        self.metrics.latency.labels(endpoint, service).observe(seconds)
        if endpoint in OPERATIONS_PATHS:
            return
        log.info(
            "call",
            extra={
                "method": scope["method"],
                "endpoint": endpoint,
                "status": status,
                "duration_ms": round(seconds * 1000, 2),
                **fields,
            },
        )
