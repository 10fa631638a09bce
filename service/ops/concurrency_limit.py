"""A bound on the requests one worker handles at once; past it, 503 with Retry-After at once.

A worker's CPU work is serial: with more calls in progress than it can finish in the EHR's time,
each one waits behind the others, and calls the EHR has already given up on still take their turn
(at 256 connections with 1,000-resource bodies, seconds). Refusing the excess at the door, before
its body is parsed, bounds the work in progress and tells the client to come back. The answer is a
FHIR OperationOutcome (`transient`), like every other error of the service.

A refusal is not free: uvicorn still receives the body and discards it, so that the keep-alive
connection stays usable (closing it with the body unread would reset it, and the client could lose
the 503). A client that retries at once instead of after Retry-After makes refusals most of the
worker's work: measured at 256 connections of 1.6 MB bodies with such a client, the limit of 32
gave fewer answered calls than no limit, with a p99 only a little lower.

uvicorn's own `limit_concurrency` is not used: it counts open connections (idle keep-alive ones
too), answers in plain text without Retry-After, and would refuse health checks and scrapes, which
must keep working when the service is busy (they are exempt here).
"""

from __future__ import annotations

from collections.abc import Collection

import orjson
from prometheus_client import Counter
from starlette.types import ASGIApp, Receive, Scope, Send

from service.errors import operation_outcome

RETRY_AFTER_SECONDS = 1


class ConcurrencyLimit:
    def __init__(
        self, app: ASGIApp, *, limit: int, exempt_paths: Collection[str], rejected: Counter
    ) -> None:
        self.app = app
        self.limit = limit
        self.exempt_paths = frozenset(exempt_paths)
        self.rejected = rejected
        self.in_progress = 0
        # Built once: refusing has to stay cheap when there are many to refuse.
        self._body = orjson.dumps(
            operation_outcome(
                503,
                f"the service is handling as many calls as it can ({limit} per process); "
                f"retry after {RETRY_AFTER_SECONDS} s",
            )
        )
        self._headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(self._body)).encode()),
            (b"retry-after", str(RETRY_AFTER_SECONDS).encode()),
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.exempt_paths:
            await self.app(scope, receive, send)
            return
        if self.in_progress >= self.limit:
            self.rejected.inc()
            await send({"type": "http.response.start", "status": 503, "headers": self._headers})
            await send({"type": "http.response.body", "body": self._body})
            return
        # One event loop per worker: the count needs no lock.
        self.in_progress += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_progress -= 1
