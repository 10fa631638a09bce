"""Load benchmark of the CDS Hooks service against a floor app, on loopback.

For 1 and 2 workers: starts `rpl-cds serve` (with a Server-Timing header) and the floor app
(bench/floor_app.py: same framework and server settings, one constant card), timing each from
process start to ready; drives both, alternately, with the same request bodies (patient-view
with 30, 200, 1,000 and 5,000 resources in prefetch, order-sign with 3 draft orders) at 1, 8
and 32 connections for a fixed duration each; then reads each worker's RSS. Then the
no-prefetch path against a local sekmet-fhir server loaded with the same patients. Writes
bench/results/latest.md and latest.json and prints the Markdown.

    .venv/bin/python -m bench.run [--duration 4] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from bench import no_prefetch, report
from bench.bodies import ROOT, Body, build_bodies, make_patients
from bench.loadgen import measure
from bench.procs import (
    Server,
    call,
    card_topics,
    cpu_seconds,
    start_floor,
    start_service,
    stop,
    worker_pids,
    worker_rss,
)

RESULTS = ROOT / "bench" / "results"
WORKERS = (1, 2)
CONNECTIONS = (1, 8, 32)
NO_PREFETCH_CONNECTIONS = (1, 8)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _check(service: Server, floor: Server, bodies: Sequence[Body]) -> list[dict[str, Any]]:
    """One call per body to each app (it must answer 200), with the service's card topics: the
    filler must not change the cards."""
    checked: list[dict[str, Any]] = []
    for body in bodies:
        path = f"/cds-services/{body.service_id}"
        topics = card_topics(call(service, "POST", path, body.payload))
        call(floor, "POST", path, body.payload)
        checked.append(
            {
                "name": body.name,
                "service": body.service_id,
                "hook": body.hook,
                "resources": body.resources,
                "bytes": len(body.payload),
                "cards": topics,
            }
        )
    views = {tuple(b["cards"]) for b in checked if b["hook"] == "patient-view"}
    if len(views) > 1:
        log(f"warning: patient-view bodies give different cards: {views}")
    return checked


def measured(
    app: Server, path: str, body_file: Path, connections: int, duration: float, warmup: float
) -> dict[str, Any]:
    """One load run against `app`, with the CPU seconds each of its workers used meanwhile."""
    pids = worker_pids(app)
    before = [cpu_seconds(pid) for pid in pids]
    result = measure(app.port, path, body_file, connections, duration, warmup)
    result["worker_cpu_seconds"] = [cpu_seconds(p) - b for p, b in zip(pids, before, strict=True)]
    return result


def cpu_busy(seconds: float = 1.0) -> float:
    """The share of all cores' time that was busy over `seconds` (from /proc/stat)."""

    def sample() -> tuple[int, int]:
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = values[3] + values[4]  # idle + iowait
        return sum(values) - idle, sum(values)

    busy0, total0 = sample()
    time.sleep(seconds)
    busy1, total1 = sample()
    return (busy1 - busy0) / max(1, total1 - total0)


def python_speed() -> float:
    """Seconds for a fixed pure-Python loop: this machine's speed when the figures were taken
    (shared cloud machines vary by 2x from hour to hour), to compare runs by."""
    started = time.perf_counter()
    total = 0
    for number in range(5_000_000):
        total += number
    return time.perf_counter() - started


def machine(sample_cpu: bool = True) -> dict[str, Any]:
    """The machine and its state; `sample_cpu` False skips the one-second busy sample (a smoke
    run that a test waits for)."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        commit = subprocess.run(
            ["git", "describe", "--always", "--dirty"],  # noqa: S607
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
    except OSError:
        commit = ""
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg_at_start": os.getloadavg()[0],
        "cpu_busy_at_start": cpu_busy() if sample_cpu else 0.0,
        "python_loop_seconds_at_start": python_speed(),
        "commit": commit,
    }


def run_workers(
    workers: int,
    work: Path,
    today: date,
    state: dict[str, Any],
    results: dict[str, Any],
    connections: Sequence[int],
    duration: float,
    warmup: float,
) -> None:
    # Started twice: first on an empty data directory (knowledge validated and cached, database
    # created), then as every later start finds it; the second one is measured under load.
    data_dir = work / f"data-w{workers}"
    first = start_service(workers, data_dir, work)
    stop(first)
    service = start_service(workers, data_dir, work)
    try:
        floor = start_floor(workers, work)
        try:
            log(
                f"{workers} worker(s): service ready in {first.ready_seconds:.2f} s (first "
                f"start), {service.ready_seconds:.2f} s (restart); floor in "
                f"{floor.ready_seconds:.2f} s"
            )
            if "bodies" not in state:
                services = call(service, "GET", "/cds-services")["services"]
                view = next(s for s in services if s["hook"] == "patient-view")
                state["services"] = services
                state["patients"] = make_patients(view["prefetch"], today)
                state["bodies"] = build_bodies(services, state["patients"], today)
                for body in state["bodies"]:
                    (work / f"{body.name}.json").write_bytes(body.payload)
                results["bodies"] = _check(service, floor, state["bodies"])
            else:
                _check(service, floor, state["bodies"])
            for body in state["bodies"]:
                body_file = work / f"{body.name}.json"
                path = f"/cds-services/{body.service_id}"
                for count in connections:
                    ran = {
                        app.name: measured(app, path, body_file, count, duration, warmup)
                        for app in (service, floor)
                    }
                    results["runs"].append(
                        {"workers": workers, "body": body.name, "connections": count, **ran}
                    )
                    log(report.progress(workers, body.name, count, ran["service"], ran["floor"]))
            for app in (service, floor):
                results["servers"].append(
                    {
                        "app": app.name,
                        "workers": workers,
                        "ready_seconds": app.ready_seconds,
                        "first_start_seconds": (
                            first.ready_seconds if app is service else app.ready_seconds
                        ),
                        **worker_rss(app),
                    }
                )
        finally:
            stop(floor)
    finally:
        stop(service)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=4.0, help="seconds measured per run")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds not counted per run")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 s each, 0.3 s warm-up")
    parser.add_argument("--no-fhir", action="store_true", help="skip the no-prefetch path")
    parser.add_argument("--output", type=Path, default=RESULTS, help="default: bench/results")
    args = parser.parse_args(argv)
    duration, warmup = (1.0, 0.3) if args.quick else (args.duration, args.warmup)
    started = time.perf_counter()
    today = date.today()
    results: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "settings": {
            "duration_seconds": duration,
            "warmup_seconds": warmup,
            "workers": list(WORKERS),
            "connections": list(CONNECTIONS),
            "service_env": {
                "RPL_CDS_SERVER_TIMING": "true",
                "RPL_CDS_LOG_LEVEL": "WARNING",
                "authentication": "off (no RPL_CDS_AUTH_ISSUERS)",
            },
        },
        "bodies": [],
        "runs": [],
        "servers": [],
        "no_prefetch": None,
    }
    if results["machine"]["cpu_busy_at_start"] > 0.1:
        busy = results["machine"]["cpu_busy_at_start"]
        log(f"warning: the CPUs were {busy:.0%} busy before the benchmark started")
    state: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="rpl-cds-bench-") as tmp:
        work = Path(tmp)
        for workers in WORKERS:
            run_workers(workers, work, today, state, results, CONNECTIONS, duration, warmup)
        if not args.no_fhir:

            def measure_one(server: Server, path: str, body: Path, count: int) -> dict[str, Any]:
                return measured(server, path, body, count, duration, warmup)

            results["no_prefetch"] = no_prefetch.run(
                state["services"],
                state["patients"],
                today,
                work,
                measure_one,
                NO_PREFETCH_CONNECTIONS,
                repeats=10 if args.quick else 20,
                log=log,
            )
    results["elapsed_seconds"] = time.perf_counter() - started
    results["machine"]["loadavg_at_end"] = os.getloadavg()[0]
    results["machine"]["python_loop_seconds_at_end"] = python_speed()
    results["targets"] = report.targets(results)
    results["previous_targets"] = report.previous_targets(results)
    markdown = report.render(results)
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "latest.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.output / "latest.md").write_text(markdown)
    print(markdown)
    log(f"wrote {args.output / 'latest.md'} and latest.json in {results['elapsed_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
