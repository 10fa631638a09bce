"""Per-phase timing of a hook call, for the `Server-Timing` response header (when enabled).

The benchmark reads it to see where server time goes (auth, prefetch fetching, building the
record, $apply, card encoding) without a profiler in the request path.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from fastapi import Request


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
