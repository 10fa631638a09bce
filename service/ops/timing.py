"""Per-phase timing of a hook call, for the `Server-Timing` response header (when enabled).

The benchmark reads it to see where server time goes (auth, prefetch fetching, building the
record, $apply, card encoding) without a profiler in the request path, and `total` (the whole
request in this process, see `TotalTiming`) shows what the named phases leave out.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from fastapi import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class PhaseTimer:
    def __init__(self) -> None:
        self.phases: dict[str, float] = {}  # name -> milliseconds, summed over repeats

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            elapsed = (time.perf_counter() - started) * 1000
            self.phases[name] = self.phases.get(name, 0.0) + elapsed

    def header(self) -> str:
        return ", ".join(f"{name};dur={ms:.3f}" for name, ms in self.phases.items())


def timer_of(request: Request) -> PhaseTimer:
    timer: PhaseTimer | None = getattr(request.state, "timer", None)
    if timer is None:
        timer = request.state.timer = PhaseTimer()
    return timer


class TotalTiming:
    """Adds `total;dur=<ms>` to the `Server-Timing` header of every HTTP response (only installed
    when `RPL_CDS_SERVER_TIMING` is on).

    It starts when the ASGI call starts: the server has read and parsed the request line and
    headers by then, and this is the earliest moment an ASGI app can observe (the first byte
    read off the socket is not visible through ASGI; under load the event loop's queueing before
    the call starts is therefore outside `total`). The first `http.request` message would be
    later still: a route reads its body only after authentication, so `auth` would fall outside
    `total`. It ends when the response headers are sent, since Server-Timing is one of them: the
    body send that follows (one small write of the JSON already encoded) is not in it. The named
    phases all run inside that span, so `total` is at least their sum; the difference is what
    they do not measure (reading and parsing the body, validation, routing, middleware).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()

        async def timed(message: Message) -> None:
            if message["type"] == "http.response.start":
                total = f"total;dur={(time.perf_counter() - started) * 1000:.3f}".encode()
                headers = list(message.get("headers", []))
                for index, (name, value) in enumerate(headers):
                    if name.lower() == b"server-timing":
                        headers[index] = (name, value + b", " + total)
                        break
                else:
                    headers.append((b"server-timing", total))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, timed)
