"""CPU time per hook call, in process: the request pipeline without the network, over the load
benchmark's bodies (bench/bodies.py). Decode, checks, record, `$apply`, cards, encode: what a
worker spends per call apart from the HTTP server and the database. CPU time (not wall time), so
that figures taken on a shared machine compare; the fixed Python loop's time says how fast the
machine was. Prints figures; asserts nothing.

    .venv/bin/python -m bench.call_cpu [--seconds 2] [--only pv-200] [--profile pv-200]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from collections.abc import Callable
from datetime import UTC, date, datetime

import orjson

from bench.bodies import Body, bodies_for
from bench.run import python_speed
from service.cdshooks.call import parse_call
from service.cdshooks.cards import encode_cards
from service.cdshooks.catalogue import Catalogue, load_catalogue
from service.cdshooks.prefetch import resolve_prefetch
from service.cdshooks.subject import subject_of
from service.engine import apply_plan
from service.ops.serving_process import tune_for_serving
from service.settings import Settings


def one_call(catalogue: Catalogue, body: Body) -> Callable[[], bytes]:
    service = catalogue.services[body.service_id]

    def call() -> bytes:
        parsed = orjson.loads(body.payload)
        hook_call = parse_call(service, parsed)
        today = datetime.now(UTC).date()
        resolution = resolve_prefetch(service.prefetch, hook_call.prefetch)
        subject = subject_of(service.hook, hook_call.context, resolution.record, today)
        result = apply_plan(service.plan, subject)
        cards = encode_cards(
            result.request_group,
            hook_instance=hook_call.hook_instance,
            service_id=service.id,
            default_source=service.title or service.id,
        )
        return orjson.dumps({"cards": [card.body for card in cards]})

    return call


def bundled() -> tuple[Catalogue, list[Body]]:
    """The bundled knowledge's catalogue and the load benchmark's bodies for its services."""
    settings = Settings()
    catalogue = load_catalogue(settings.all_knowledge_dirs, settings.knowledge_parameters)
    return catalogue, bodies_for(catalogue.discovery()["services"], date.today())


def cpu_per_call(call: Callable[[], bytes], seconds: float) -> tuple[float, float, int]:
    """Median and mean CPU ms per call over batches, and the calls made."""
    for _ in range(5):
        call()
    batches: list[float] = []
    calls = 0
    started = time.process_time()
    while time.process_time() - started < seconds:
        batch_start = time.process_time()
        for _ in range(10):
            call()
        batches.append((time.process_time() - batch_start) * 100)  # ms per call
        calls += 10
    return statistics.median(batches), statistics.fmean(batches), calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--only", action="append", default=[])
    parser.add_argument("--profile", help="a body name: run it under pyinstrument instead")
    args = parser.parse_args()

    catalogue, bodies = bundled()
    tune_for_serving()  # as a serving worker: the knowledge frozen out of the collector's sight
    if args.profile:
        from pyinstrument import Profiler

        call = one_call(catalogue, next(b for b in bodies if b.name == args.profile))
        profiler = Profiler(interval=0.0005)
        profiler.start()
        deadline = time.process_time() + args.seconds
        while time.process_time() < deadline:
            call()
        profiler.stop()
        print(profiler.output_text(unicode=False, color=False, show_all=False))
        return
    print(f"python loop: {python_speed():.3f} s (machine speed; lower is faster)")
    print(f"gc thresholds {gc.get_threshold()}")
    print("| body | resources | KB | CPU ms/call (median) | mean | calls |")
    print("|---|---|---|---|---|---|")
    for body in bodies:
        if args.only and body.name not in args.only:
            continue
        median, mean, calls = cpu_per_call(one_call(catalogue, body), args.seconds)
        print(
            f"| {body.name} | {body.resources} | {len(body.payload) // 1024} | "
            f"{median:.3f} | {mean:.3f} | {calls} |"
        )


if __name__ == "__main__":
    main()
