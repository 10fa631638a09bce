"""Why a throughput target is met or not: each benchmark body's in-process CPU per phase beside
the floor app's own work on the same bytes, the CPU the target leaves the service, and the
expressions that cost the most. Prints Markdown; asserts nothing.

The model: at 1 worker and 8 connections both apps keep their worker's CPU busy (the load
benchmark's CPU column: about 5 s of CPU in 5 s), so a request costs 1/throughput of CPU. The
floor's request is the HTTP stack (uvicorn, FastAPI, reading the body) plus its own work (orjson
parse of the whole body, freeing it, one constant card). The service pays the same HTTP stack plus
its pipeline. A throughput ratio R is then reached when the pipeline fits in

    budget = 1 / (R x floor throughput) - HTTP stack,  HTTP stack = 1 / floor throughput - floor work

The floor's throughput comes from the load benchmark's last results (bench/results/latest.json),
scaled by the two runs' Python-loop times to this run's machine speed (a shared machine's speed
varies by 2x or more from hour to hour; run this right after the load benchmark). The model is
least exact at 5,000 resources: there the floor's own work is mostly its garbage collector walking
the parsed body, which depends on when its collections fall, and when the floor work measured here
exceeds the floor's whole request in the load run the HTTP stack shows as 0.

    .venv/bin/python -m bench.explain [--seconds 2] [--results bench/results/latest.json]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import orjson

from bench.bodies import Body
from bench.call_cpu import bundled
from bench.floor_app import CARD
from bench.report import CELL, RATIO_TARGETS
from bench.run import python_speed
from service.cdshooks.call import parse_call
from service.cdshooks.cards import encode_cards
from service.cdshooks.catalogue import Catalogue
from service.cdshooks.prefetch import resolve_prefetch
from service.cdshooks.subject import subject_of
from service.engine import apply_plan
from service.engine.fhirpath.expression import CompiledExpression
from service.ops.serving_process import tune_for_serving

RESULTS = Path(__file__).resolve().parent / "results" / "latest.json"
PHASES = ("decode", "checks", "record", "apply", "encode", "free")
TOP_EXPRESSIONS = 5
_PIPE = "\\|"  # a union's `|` inside a Markdown table cell


@dataclass(frozen=True)
class Split:
    phases: dict[str, float]  # name -> mean CPU ms per call
    floor_ms: float  # the floor app's own work on the same body, mean CPU ms (floor_work)

    @property
    def total(self) -> float:
        return sum(self.phases.values())


def phase_split(catalogue: Catalogue, body: Body, seconds: float) -> dict[str, float]:
    """Mean CPU ms per phase of the pipeline routes.py and call.py run (without the HTTP
    server, authentication and the database), and of the floor's work on the same bytes."""
    service = catalogue.services[body.service_id]
    samples: dict[str, list[float]] = {name: [] for name in PHASES}
    clock = time.process_time
    deadline = clock() + seconds
    while clock() < deadline or not samples["apply"]:
        t0 = clock()
        parsed = orjson.loads(body.payload)
        t1 = clock()
        call = parse_call(service, parsed)
        t2 = clock()
        resolution = resolve_prefetch(service.prefetch, call.prefetch)
        subject = subject_of(service.hook, call.context, resolution.record, _today())
        t3 = clock()
        result = apply_plan(service.plan, subject)
        t4 = clock()
        cards = encode_cards(
            result.request_group,
            hook_instance=call.hook_instance,
            service_id=service.id,
            default_source=service.title or service.id,
        )
        orjson.dumps({"cards": [card.body for card in cards]})
        t5 = clock()
        del parsed, call, resolution, subject, result, cards
        t6 = clock()
        for name, spent in zip(
            PHASES, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5), strict=True
        ):
            samples[name].append(spent * 1000)
    return {k: statistics.fmean(v) for k, v in samples.items()}


def floor_work(payloads: dict[str, bytes], seconds: float) -> dict[str, float]:
    """Mean CPU ms of bench/floor_app.py's handler on each body (parse it whole, check it, free
    it, the constant card), measured in a process of its own: the floor app runs with CPython's
    garbage collector settings and its own heap, and a large body costs it young collections
    that a tuned service worker does not make."""
    with tempfile.TemporaryDirectory(prefix="rpl-bench-floor-") as scratch:
        files = []
        for name, payload in payloads.items():
            path = Path(scratch) / f"{name}.json"
            path.write_bytes(payload)
            files.append(str(path))
        command = [sys.executable, "-m", "bench.explain", "--floor-work", *files]
        command += ["--seconds", str(seconds)]
        done = subprocess.run(command, capture_output=True, check=True)  # noqa: S603 (ours)
    measured: dict[str, float] = orjson.loads(done.stdout)
    return measured


def _floor_work_here(files: Sequence[str], seconds: float) -> dict[str, float]:
    import bench.floor_app  # noqa: F401  (the floor's imports: its heap, as far as they make it)

    measured = {}
    for file in files:
        payload = Path(file).read_bytes()
        spent: list[float] = []
        deadline = time.process_time() + seconds
        while time.process_time() < deadline or not spent:
            started = time.process_time()
            parsed = orjson.loads(payload)
            assert isinstance(parsed, dict)
            del parsed
            bytes(CARD)
            spent.append((time.process_time() - started) * 1000)
        measured[Path(file).stem] = statistics.fmean(spent)
    return measured


def _today() -> date:
    return datetime.now(UTC).date()


@contextmanager
def expression_costs() -> Iterator[dict[str, list[float]]]:
    """Wall time and evaluations per knowledge expression text while the block runs. The engine
    has no timing hook of its own (one on the request path would cost every call), so the
    benchmark wraps CompiledExpression.values for the block and puts it back after."""
    costs: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    original = CompiledExpression.values

    def timed(self: CompiledExpression, *args: Any, **kwargs: Any) -> list[Any]:
        started = time.perf_counter()
        try:
            return original(self, *args, **kwargs)
        finally:
            cost = costs[self.text]
            cost[0] += time.perf_counter() - started
            cost[1] += 1

    CompiledExpression.values = timed  # type: ignore[method-assign]
    try:
        yield costs
    finally:
        CompiledExpression.values = original  # type: ignore[method-assign]


@dataclass(frozen=True)
class ExpressionCosts:
    total_ms: float  # all expressions, per call
    evaluations: float  # per call
    costliest: list[tuple[str, float]]  # (text, ms per call)


def costliest(catalogue: Catalogue, body: Body, calls: int) -> ExpressionCosts:
    """What `apply`'s expressions cost per call over `calls` calls, and which cost the most."""
    service = catalogue.services[body.service_id]
    with expression_costs() as costs:
        for _ in range(calls):
            call = parse_call(service, orjson.loads(body.payload))
            record = resolve_prefetch(service.prefetch, call.prefetch).record
            apply_plan(service.plan, subject_of(service.hook, call.context, record, _today()))
    ranked = sorted(costs.items(), key=lambda item: item[1][0], reverse=True)
    per_call = [(text, seconds * 1000 / calls) for text, (seconds, _) in ranked]
    return ExpressionCosts(
        total_ms=sum(ms for _, ms in per_call),
        evaluations=sum(count for _, count in costs.values()) / calls,
        costliest=per_call[:TOP_EXPRESSIONS],
    )


def floor_rps(results: dict[str, Any]) -> dict[str, float]:
    workers, connections = CELL
    return {
        run["body"]: run["floor"]["rps"]
        for run in results["runs"]
        if run["workers"] == workers and run["connections"] == connections
    }


def render(
    splits: dict[str, Split],
    costs: dict[str, ExpressionCosts],
    results: dict[str, Any],
    loop_now: float,
) -> str:
    machine = results["machine"]
    loop_then = (
        machine["python_loop_seconds_at_start"] + machine["python_loop_seconds_at_end"]
    ) / 2
    scale = loop_now / loop_then  # > 1: this machine is slower now than during the load run
    lines = [
        "# Where the time goes",
        "",
        f"Python loop {loop_now:.3f} s now; {loop_then:.3f} s during the load benchmark at "
        f"{machine.get('commit', '?')} ({results.get('date', '?')}): its per-request figures are "
        f"scaled by {scale:.2f} to this run. CPU ms per call, means (throughput pays the "
        "garbage collections a median would leave out).",
        "",
        "## Pipeline phases in process, and the floor's work on the same body",
        "",
        "| body | " + " | ".join(PHASES) + " | service total | floor work | service / floor work |",
        "|---|" + "---|" * (len(PHASES) + 3),
    ]
    for name, split in splits.items():
        cells = " | ".join(f"{split.phases[p]:.2f}" for p in PHASES)
        lines.append(
            f"| {name} | {cells} | {split.total:.2f} | {split.floor_ms:.2f} | "
            f"{split.total / split.floor_ms:.1f}x |"
        )
    lines += [
        "",
        "decode: orjson parse of the whole body; checks: the envelope, context and prefetch "
        "shape; record: prefetch resolved into the patient record; apply: the plan's $apply; "
        "encode: cards and their JSON; free: dropping the parsed body and record.",
        "",
        "## What each throughput target leaves the pipeline",
        "",
        "| target | floor req/s (load run) | floor CPU per request | of which HTTP stack | "
        "pipeline budget at the target | pipeline spent | over budget |",
        "|---|---|---|---|---|---|---|",
    ]
    rps = floor_rps(results)
    for body, ratio in RATIO_TARGETS.items():
        if body not in splits or body not in rps:
            continue
        split = splits[body]
        per_request = 1000 / rps[body] * scale
        http = max(per_request - split.floor_ms, 0.0)
        budget = per_request / ratio - http
        over = split.total / budget if budget > 0 else float("inf")
        lines.append(
            f"| {body} >= {ratio:.2f} | {rps[body]:.0f} | {per_request:.2f} | {http:.2f} | "
            f"{budget:.2f} | {split.total:.2f} | {over:.1f}x |"
        )
    lines += ["", "## The costliest expressions of `apply` (wall ms per call)", ""]
    for name, cost in costs.items():
        mean_us = cost.total_ms * 1000 / max(cost.evaluations, 1)
        lines.append(
            f"**{name}**: all expressions {cost.total_ms:.2f} ms per call, "
            f"{cost.evaluations:.0f} evaluations ({mean_us:.0f} µs each on average)."
        )
        lines.append("")
        lines += ["| ms | expression |", "|---|---|"]
        for text, ms in cost.costliest:
            shown = (text if len(text) <= 160 else text[:157] + "...").replace("|", _PIPE)
            lines.append(f"| {ms:.2f} | `{shown}` |")
        lines.append("")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="CPU seconds per body")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--floor-work", nargs="+", help=argparse.SUPPRESS)  # floor_work's child
    args = parser.parse_args(argv)
    if args.floor_work:
        print(orjson.dumps(_floor_work_here(args.floor_work, args.seconds)).decode())
        return
    results = orjson.loads(args.results.read_bytes())
    catalogue, bodies = bundled()
    tune_for_serving()  # as a serving worker: knowledge frozen, the worker's young threshold
    loop_now = python_speed()
    floor = floor_work({body.name: body.payload for body in bodies}, args.seconds / 2)
    splits = {
        body.name: Split(phase_split(catalogue, body, args.seconds), floor[body.name])
        for body in bodies
    }
    costs = {
        body.name: costliest(catalogue, body, _calls_for(splits[body.name], args.seconds / 2))
        for body in bodies
    }
    gc.collect()
    print(render(splits, costs, results, loop_now))


def _calls_for(split: Split, seconds: float) -> int:
    """Calls that take about `seconds` (at least 5: each expression's figure is a mean)."""
    return max(5, int(seconds * 1000 / max(split.total, 0.01)))


if __name__ == "__main__":
    main()
