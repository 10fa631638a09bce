"""What sets the p99: the service under load with one thing changed at a time (issue 13, item 4).

For each body and each variant, starts `rpl-cds serve` (1 worker, as the load benchmark does:
Server-Timing on, log level WARNING) with one setting changed, drives it with the load generator
at 8 connections, and prints p50, p99 and max of the latency; the floor app on the same body is
the reference. The variants:

- `served`: the defaults a worker serves with (young-generation GC threshold 100,000).
- `gc-700`: CPython's own GC threshold (`RPL_CDS_GC_YOUNG_THRESHOLD=700`), the setting before.
- `info-log`: `RPL_CDS_LOG_LEVEL=INFO`, as production logs by default: one JSON line per call.

Then, in this process, what freeing a parsed body costs (the worker pays it after each response):
the time to drop `orjson.loads` of each body. Prints figures; asserts nothing.

    .venv/bin/python -m bench.pauses [--bodies pv-200,pv-5000] [--duration 6] [--warmup 1]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from datetime import date
from pathlib import Path
from typing import Any

import orjson

from bench.bodies import Body, bodies_for
from bench.procs import Server, discovered_services, start_floor, start_service, stop
from bench.run import machine, measured

CONNECTIONS = 8
VARIANTS: Mapping[str, Mapping[str, str]] = {
    "served": {},
    "gc-700": {"gc_young_threshold": "700"},
    "info-log": {"log_level": "INFO"},
}


def _bodies(work: Path, today: date) -> list[Body]:
    return bodies_for(discovered_services(work, "data-bodies"), today)


def _row(name: str, run: Mapping[str, Any]) -> str:
    def ms(key: str) -> str:
        value = run.get(key)
        return "-" if value is None else f"{value:.1f}"

    return (
        f"| {name} | {run['rps']:.0f} | {ms('p50_ms')} | {ms('p99_ms')} | {ms('max_ms')} | "
        f"{ms('total_p99_ms')} |"
    )


def _load_runs(
    bodies: Sequence[Body], work: Path, duration: float, warmup: float
) -> dict[str, dict[str, dict[str, Any]]]:
    """body name -> variant (and "floor") -> the load run's summary."""
    runs: dict[str, dict[str, dict[str, Any]]] = {body.name: {} for body in bodies}
    for body in bodies:
        (work / f"{body.name}.json").write_bytes(body.payload)
    servers: list[tuple[str, Server]] = []
    for variant, settings in VARIANTS.items():
        servers.append((variant, start_service(1, work / f"data-{variant}", work, **settings)))
    servers.append(("floor", start_floor(1, work)))
    try:
        for body in bodies:
            path = f"/cds-services/{body.service_id}"
            # In turns, body by body, so that a change in the machine's speed touches every
            # variant alike.
            for name, server in servers:
                runs[body.name][name] = measured(
                    server, path, work / f"{body.name}.json", CONNECTIONS, duration, warmup
                )
                print(f"  {body.name} {name}: p99 {runs[body.name][name]['p99_ms']:.1f} ms")
    finally:
        for _, server in servers:
            stop(server)
    return runs


def free_cost_ms(payload: bytes, repeats: int = 20) -> float:
    """Median milliseconds to drop a parsed body (with the collector off, as a worker between
    its rare collections)."""
    times = []
    gc.disable()
    try:
        for _ in range(repeats):
            parsed = orjson.loads(payload)
            started = time.perf_counter()
            del parsed
            times.append((time.perf_counter() - started) * 1000)
    finally:
        gc.enable()
    return statistics.median(times)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.pauses", description=__doc__.split("\n\n")[0])
    parser.add_argument("--bodies", default="pv-200,pv-5000", help="comma-separated names")
    parser.add_argument("--duration", type=float, default=6.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    args = parser.parse_args(argv)
    wanted = args.bodies.split(",")
    speed = machine()
    print(
        f"python loop {speed['python_loop_seconds_at_start']:.3f} s, CPUs busy "
        f"{speed['cpu_busy_at_start']:.0%} at start; {CONNECTIONS} connections, 1 worker"
    )
    with tempfile.TemporaryDirectory(prefix="rpl-cds-pauses-") as tmp:
        work = Path(tmp)
        bodies = [body for body in _bodies(work, date.today()) if body.name in wanted]
        runs = _load_runs(bodies, work, args.duration, args.warmup)
    for body in bodies:
        print(f"\n### {body.name} ({body.resources} resources, {len(body.payload) // 1024} KB)\n")
        print("| variant | req/s | p50 ms | p99 ms | max ms | server total p99 ms |")
        print("|---|---|---|---|---|---|")
        for name, run in runs[body.name].items():
            print(_row(name, run))
    print("\n| body | free a parsed body, ms (median) |\n|---|---|")
    for body in bodies:
        print(f"| {body.name} | {free_cost_ms(body.payload):.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
