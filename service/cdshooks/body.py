"""Reading a JSON request body within a size limit, with CDS Hooks-conformant errors.

The decoder is orjson, the one place that says why. Issue 13 compared msgspec on the load
benchmark's bodies (CPU time, decode and free, in a worker's GC settings): decoding to plain
objects it was within 10% of orjson (0.20 vs 0.23 ms at 200 resources, 15-16 vs 18 ms at 5,000),
not worth a second JSON library. What would pay is not building the resources the knowledge never
reads. Measured at 5,000 resources (bench/bodies.py, in process, one run, a slow hour: a
5-million-step Python loop took 0.35 s): orjson's decode and free 32 ms; msgspec with each
prefetch Bundle's entries left as `msgspec.Raw` 8 ms; the same with every entry's resourceType,
id, status and codes decoded into typed structures (what the record and the retrieve index need
to pick the resources to decode) 18 ms, plus about 5 ms to decode and free the ones picked (a
sixth of them here: every MedicationRequest and ServiceRequest is read): 23 ms instead of 32, of a
call of 75-90 ms, before what the checks and the record would save working on the smaller
structures. That needs the shape checks (models.prefetch_problems), the record (status and id of
every resource), the wrong-type check (fhir/expected.py) and repeat suppression's facts digest
(the content of every resource without a version) to work from undecoded resources, and is not
done.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import Request

from service.errors import ServiceError

JSON_MEDIA_TYPES = frozenset({"application/json", "application/fhir+json"})


async def read_json(request: Request, limit: int) -> Any:
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type not in JSON_MEDIA_TYPES:
        raise ServiceError(
            415, f"Content-Type must be application/json, not '{media_type or 'none'}'"
        )
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ServiceError(413, f"request body is larger than the {limit}-byte limit")
    # The body is streamed and counted so that a client that lies about (or omits) its length
    # cannot make the service buffer more than the limit.
    body = bytearray()
    async for chunk in request.stream():
        body.extend(chunk)
        if len(body) > limit:
            raise ServiceError(413, f"request body is larger than the {limit}-byte limit")
    if not body:
        raise ServiceError(400, "request body is empty; a JSON object is required")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise ServiceError(400, f"request body is not valid JSON: {error}") from None
