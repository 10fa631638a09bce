"""The no-prefetch path: the service reads the patient from a local sekmet-fhir server.

The benchmark patients are loaded into sekmet-fhir (one transaction of PUTs, as
`rpl-cds load-scenarios` does). Each prefetch query the service would send is first timed alone
(sequential GETs with the bearer token, following `next` links up to the service's page limit):
the slowest query's median is the reference the service's whole call is compared with, since the
service sends its queries concurrently. All of them are also timed sent together, from one thread
each, as the service sends them: how long the server takes to answer that, whatever the service.
Then the service's whole call and those queries sent together are timed in turns, pair by pair:
the service's time above the server's own is the median of the pairs' differences.

`bench.run` runs this after the load runs; alone, for the no-prefetch figures and targets only:

    .venv/bin/python -m bench.no_prefetch [--sizes 30,200] [--duration 4] [--quick]
"""

from __future__ import annotations

import argparse
import http.client
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

from bench.bodies import SIZES, Patients, make_patients, no_prefetch_body
from bench.procs import (
    LOOPBACK,
    Server,
    call,
    card_topics,
    discovered_services,
    start_service,
    stop,
)
from service.fhir.load import to_transaction
from service.fhir.templates import Unrenderable, render
from service.settings import Settings

MAX_PAGES: int = Settings.model_fields["fhir_max_pages"].default
USER = "Practitioner/syn-clinician"
PAIRS_MIN = 30

Measure = Callable[[Server, str, Path, int], dict[str, Any]]


def read_query(fhir: Any, query: str) -> tuple[int, int]:
    """Read one query as the service does, following `next` links; (resources, pages)."""
    headers = {**fhir.auth_headers, "Accept": "application/fhir+json, application/json"}
    url: str | None = f"{fhir.base_url}/{query}"
    resources = pages = 0
    while url is not None and pages < MAX_PAGES:
        response = fhir.http.get(url, headers=headers)
        response.raise_for_status()
        document = response.json()
        pages += 1
        if document.get("resourceType") != "Bundle":
            return resources + 1, pages
        resources += len(document.get("entry") or [])
        url = next(
            (
                urljoin(f"{fhir.base_url}/", link["url"])
                for link in document.get("link") or []
                if link.get("relation") == "next"
            ),
            None,
        )
    return resources, pages


def time_query(fhir: Any, query: str, repeats: int) -> dict[str, Any]:
    """Median and spread of one query read alone."""
    durations = []
    resources = pages = 0
    for _ in range(repeats):
        started = time.perf_counter()
        resources, pages = read_query(fhir, query)
        durations.append((time.perf_counter() - started) * 1000)
    return {
        "p50_ms": statistics.median(durations),
        "min_ms": min(durations),
        "resources": resources,
        "pages": pages,
    }


def time_together(fhir: Any, queries: list[str], repeats: int) -> float:
    """Median milliseconds until every query is answered, all sent at once."""
    durations = []
    with ThreadPoolExecutor(max_workers=len(queries)) as pool:
        for _ in range(repeats):
            started = time.perf_counter()
            list(pool.map(lambda query: read_query(fhir, query), queries))
            durations.append((time.perf_counter() - started) * 1000)
    return statistics.median(durations)


def time_paired(
    fhir: Any, queries: list[str], service: Server, path: str, body: bytes, repeats: int
) -> dict[str, Any]:
    """The service's whole call and the same queries sent together by this process, alternately,
    one after the other: on a shared machine whose speed drifts from second to second, only
    figures taken side by side compare. Medians of each and of the per-pair difference (ms)."""
    connection = http.client.HTTPConnection(LOOPBACK, service.port, timeout=120)
    headers = {"Content-Type": "application/json"}
    calls, together, above = [], [], []
    try:
        with ThreadPoolExecutor(max_workers=len(queries)) as pool:
            for _ in range(repeats):
                started = time.perf_counter()
                list(pool.map(lambda query: read_query(fhir, query), queries))
                middle = time.perf_counter()
                connection.request("POST", path, body=body, headers=headers)
                response = connection.getresponse()
                response.read()
                ended = time.perf_counter()
                if response.status != 200:
                    raise RuntimeError(f"service {path}: HTTP {response.status}")
                together.append((middle - started) * 1000)
                calls.append((ended - middle) * 1000)
                above.append(calls[-1] - together[-1])
    finally:
        connection.close()
    return {
        "service_p50_ms": statistics.median(calls),
        "together_p50_ms": statistics.median(together),
        "above_p50_ms": statistics.median(above),
        "pairs": repeats,
    }


def run(
    services: list[dict[str, Any]],
    patients: Patients,
    today: date,
    work: Path,
    measure: Measure,
    connections: tuple[int, ...],
    repeats: int,
    log: Callable[[str], None],
    sizes: Collection[int] = SIZES,
) -> dict[str, Any]:
    """Load the patients, time the queries, then drive the service (1 worker) per patient (of
    the `sizes` given)."""
    # tests/ is on sys.path once bench.bodies is imported (sekmet-fhir is a test extra).
    from support.fhir_server import sekmet_server

    view = next(s for s in services if s["hook"] == "patient-view")
    templates: Mapping[str, str] = view["prefetch"]
    results: dict[str, Any] = {"patients": []}
    with sekmet_server(work / "fhir") as fhir:
        started = time.perf_counter()
        fhir.transaction(to_transaction(patients.resources(today)))
        results["load_seconds"] = time.perf_counter() - started
        log(f"sekmet-fhir: {len(patients.resources(today))} resources loaded")
        service = start_service(1, work / "data-nopf", work, fhir_allow_http="true")
        try:
            results["service_ready_seconds"] = service.ready_seconds
            for size, spec in patients.specs.items():
                if size not in sizes:
                    continue
                context = {"patientId": spec.id, "userId": USER}
                queries, rendered = {}, []
                for key, template in templates.items():
                    try:
                        rendered.append(render(template, context, today))
                    except Unrenderable:
                        continue
                    queries[key] = time_query(fhir, rendered[-1], repeats)
                slowest = max(queries, key=lambda k: queries[k]["p50_ms"])
                body = no_prefetch_body(services, spec, today, fhir.base_url, fhir.token)
                body_file = work / f"{body.name}.json"
                body_file.write_bytes(body.payload)
                path = f"/cds-services/{body.service_id}"
                entry: dict[str, Any] = {
                    "patient": spec.id,
                    "cards": card_topics(call(service, "POST", path, body.payload)),
                    "record_resources": len(spec.resources(today)),
                    "fetched_resources": sum(q["resources"] for q in queries.values()),
                    "queries": queries,
                    "slowest_query": slowest,
                    "slowest_p50_ms": queries[slowest]["p50_ms"],
                    "sum_p50_ms": sum(q["p50_ms"] for q in queries.values()),
                    "together_p50_ms": time_together(fhir, rendered, repeats),
                    "paired": time_paired(
                        fhir, rendered, service, path, body.payload, max(PAIRS_MIN, repeats)
                    ),
                    "runs": [],
                }
                for count in connections:
                    summary = measure(service, path, body_file, count)
                    entry["runs"].append({"connections": count, **summary})
                    log(
                        f"no prefetch {spec.id} c{count}: {summary['rps']:.0f} req/s, "
                        f"p50 {_ms(summary['p50_ms'])} (slowest query {slowest} "
                        f"{queries[slowest]['p50_ms']:.1f} ms)"
                    )
                results["patients"].append(entry)
        finally:
            stop(service)
    return results


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


def main(argv: Sequence[str] | None = None) -> int:
    # Imported here: bench.run imports this module.
    from bench import report
    from bench.run import NO_PREFETCH_CONNECTIONS, measured, python_speed
    from bench.run import log as say

    parser = argparse.ArgumentParser(prog="bench.no_prefetch", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)), help="patients' sizes")
    parser.add_argument("--duration", type=float, default=4.0, help="seconds measured per run")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds not counted per run")
    parser.add_argument("--quick", action="store_true", help="1 s each, 0.3 s warm-up")
    args = parser.parse_args(argv)
    duration, warmup = (1.0, 0.3) if args.quick else (args.duration, args.warmup)
    sizes = {int(size) for size in args.sizes.split(",")}
    say(f"machine speed: a 5-million-step Python loop took {python_speed():.2f} s")
    today = date.today()
    with tempfile.TemporaryDirectory(prefix="rpl-cds-bench-") as tmp:
        work = Path(tmp)
        # The services and their prefetch templates, as bench.run has them from discovery.
        services = discovered_services(work, "data-nopf")
        view = next(s for s in services if s["hook"] == "patient-view")
        patients = make_patients(view["prefetch"], today)

        def measure_one(server: Server, path: str, body: Path, count: int) -> dict[str, Any]:
            return measured(server, path, body, count, duration, warmup)

        section = run(
            services,
            patients,
            today,
            work,
            measure_one,
            NO_PREFETCH_CONNECTIONS,
            repeats=10 if args.quick else 20,
            log=say,
            sizes=sizes,
        )
    results = {"no_prefetch": section, "runs": [], "bodies": [], "servers": []}
    lines = report.no_prefetch_section(section)
    lines += ["", "## Targets (issue 13, no prefetch)", ""]
    rows = [t for t in report.targets(results) if t["target"].startswith("no prefetch")]
    lines += [
        f"- {t['target']}: {t['measured']} ({'met' if t['met'] else 'not met'})" for t in rows
    ]
    print("\n".join(lines))
    say(f"machine speed: a 5-million-step Python loop took {python_speed():.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
