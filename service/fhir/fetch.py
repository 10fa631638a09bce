"""Fetching prefetch data from the EHR's FHIR server, within one time budget per hook call.

Missing keys are fetched concurrently through the one shared httpx client, with the call's
`Bearer` access token, following Bundle `next` links up to a page and a resource cap. An
idempotent GET is retried once on a connection error or 502/503/504 while the budget allows.
Bodies are read up to a size cap and no further. A `next` link that loops or leaves the server is
not followed, and the token is only ever sent to the server the call named. Which servers and
addresses may be contacted at all is `egress.py`'s concern; an answer of another resource type
than the query asks for is a failure of that key, not data.

Nothing here logs a URL (it holds the patient id), the token, or an exception's text (it may
hold either).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx
import orjson

from service.fhir.egress import AddressRefused, EgressPolicy
from service.fhir.expected import expected_type, foreign_types
from service.ops.metrics import Metrics
from service.settings import Settings

log = logging.getLogger("rpl_cds.fhir")

_RETRY_STATUSES = frozenset({502, 503, 504})
# Time kept back for the rest of the call (evaluating, answering) out of the budget.
_RESERVE_SECONDS = 0.05


class FetchError(Exception):
    """A key could not be read; `reason` is safe to log and to show (no URL, no token)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class Fetched:
    """What one key gave: its resources, and why it is incomplete or failed (None when whole)."""

    resources: list[dict[str, Any]] = field(default_factory=list)
    problem: str | None = None


@dataclass
class FhirFetcher:
    http: httpx.AsyncClient  # built on egress.checked_transport: addresses checked on connect
    settings: Settings
    metrics: Metrics
    policy: EgressPolicy

    async def fetch_all(
        self, fhir_server: str, token: str | None, queries: Mapping[str, str], budget: float
    ) -> dict[str, Fetched]:
        """Every query at once; whatever has not finished when the budget runs out is reported as
        timed out (the call still answers in time with what it has)."""
        deadline = time.monotonic() + budget - _RESERVE_SECONDS
        base = fhir_server.rstrip("/") + "/"
        tasks = {
            key: asyncio.create_task(self._fetch_key(base, query, token, deadline))
            for key, query in queries.items()
        }
        if not tasks:
            return {}
        _, pending = await asyncio.wait(
            tasks.values(), timeout=max(0.0, deadline - time.monotonic())
        )
        for task in pending:
            task.cancel()
        # Every task is awaited before any result is read: a task whose exception nobody
        # retrieves is logged by asyncio with the exception's repr, which can hold the token.
        await asyncio.gather(*tasks.values(), return_exceptions=True)
        return {key: self._outcome(task, task in pending) for key, task in tasks.items()}

    def _outcome(self, task: asyncio.Task[Fetched], timed_out: bool) -> Fetched:
        if timed_out:
            self.metrics.fhir_errors.labels("timeout").inc()
            return Fetched(problem="timed out")
        error = task.exception()
        if error is None:
            return task.result()
        # A bug, not a fault of the server: said in the log by type only (its text and
        # traceback locals may hold the URL or the token), and reported as missing data.
        self.metrics.fhir_errors.labels("unexpected").inc()
        log.error("FHIR fetch failed unexpectedly", extra={"error": type(error).__name__})
        return Fetched(problem="the service failed to read it")

    async def _fetch_key(
        self, base: str, query: str, token: str | None, deadline: float
    ) -> Fetched:
        fetched = Fetched()
        expected = expected_type(query)
        resource_type = expected or "unknown"
        url: str | None = urljoin(base, query)
        visited: set[str] = set()
        try:
            for _ in range(self.settings.fhir_max_pages):
                if url is None:
                    return fetched
                visited.add(url)
                started = time.monotonic()
                document = await self._get(url, token, deadline)
                self.metrics.fhir_fetch.labels(resource_type).observe(time.monotonic() - started)
                url = self._read(document, expected, fetched, base, visited)
                if len(fetched.resources) >= self.settings.fhir_max_resources:
                    del fetched.resources[self.settings.fhir_max_resources :]
                    fetched.problem = "more resources than this service reads; the rest was skipped"
                    return fetched
            if url is not None:
                fetched.problem = "more pages than this service reads; the rest was skipped"
            return fetched
        except FetchError as error:
            self.metrics.fhir_errors.labels(error.reason.split(":")[0][:40]).inc()
            log.info(
                "FHIR fetch failed", extra={"resource_type": resource_type, "reason": error.reason}
            )
            return Fetched(resources=fetched.resources, problem=error.reason)

    async def _get(self, url: str, token: str | None, deadline: float) -> Any:
        headers = {"Accept": "application/fhir+json, application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        for attempt in (1, 2):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise FetchError("timed out")
            try:
                async with self.http.stream(
                    "GET", url, headers=headers, timeout=remaining
                ) as response:
                    if response.status_code in _RETRY_STATUSES and attempt == 1:
                        continue
                    if response.status_code != 200:
                        raise FetchError(f"the FHIR server answered HTTP {response.status_code}")
                    body = await self._body(response)
            except httpx.TimeoutException:
                raise FetchError("timed out") from None
            except (httpx.TransportError, httpx.DecodingError) as error:
                if isinstance(error.__cause__, AddressRefused):
                    raise FetchError(
                        "the FHIR server's address is not one this service may contact"
                    ) from None
                if attempt == 1 and isinstance(error, httpx.TransportError):
                    continue
                raise FetchError(
                    f"could not reach the FHIR server ({type(error).__name__})"
                ) from None
            try:
                return orjson.loads(body)
            except orjson.JSONDecodeError:
                raise FetchError("the FHIR server sent malformed JSON") from None
        raise FetchError("the FHIR server failed twice")

    async def _body(self, response: httpx.Response) -> bytes:
        limit = self.settings.fhir_max_response_bytes
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise FetchError("the FHIR server's response is larger than this service reads")
        body = bytearray()
        async for chunk in response.aiter_bytes():
            body.extend(chunk)
            if len(body) > limit:
                raise FetchError("the FHIR server's response is larger than this service reads")
        return bytes(body)

    def _read(
        self,
        document: Any,
        expected: str | None,
        fetched: Fetched,
        base: str,
        visited: set[str],
    ) -> str | None:
        """Add the document's resources to `fetched`; return the next page to read, if any."""
        if not isinstance(document, dict) or not isinstance(document.get("resourceType"), str):
            raise FetchError("the FHIR server sent JSON that is not a FHIR resource")
        kind = document["resourceType"]
        if kind == "OperationOutcome":
            raise FetchError("the FHIR server answered with an OperationOutcome")
        foreign = foreign_types(document, expected) if expected else []
        if foreign:
            # The part before the colon is the metric's label; the types are safe to show.
            raise FetchError(f"the FHIR server sent other resource types: {', '.join(foreign)}")
        if kind != "Bundle":
            fetched.resources.append(document)
            return None
        entries = document.get("entry") or []
        resources = [
            entry["resource"]
            for entry in entries
            if isinstance(entry, dict) and isinstance(entry.get("resource"), dict)
        ]
        fetched.resources.extend(
            r for r in resources if r.get("resourceType") != "OperationOutcome"
        )
        next_url = next(
            (
                link.get("url")
                for link in document.get("link") or []
                if isinstance(link, dict) and link.get("relation") == "next"
            ),
            None,
        )
        if not isinstance(next_url, str) or not next_url:
            return None
        absolute = urljoin(base, next_url)
        if not _same_server(absolute, base) or absolute in visited:
            # Following it would send the token elsewhere, or loop forever.
            fetched.problem = "a next-page link was not followed (it left the server or looped)"
            return None
        return absolute


def _same_server(url: str, base: str) -> bool:
    """Same scheme, host and port, and a path at or under the base (HAPI FHIR's paging links are
    the base itself with a query: `{base}?_getpages=...`)."""
    target, origin = urlsplit(url), urlsplit(base)
    root = origin.path.rstrip("/")
    same_origin = (target.scheme, target.hostname, target.port) == (
        origin.scheme,
        origin.hostname,
        origin.port,
    )
    return same_origin and (target.path == root or target.path.startswith(root + "/"))
