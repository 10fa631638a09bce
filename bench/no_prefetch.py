"""The no-prefetch path: the service reads the patient from a local sekmet-fhir server.

The benchmark patients are loaded into sekmet-fhir (one transaction of PUTs, as
`rpl-cds load-scenarios` does). Each prefetch query the service would send is first timed alone
(sequential GETs with the bearer token, following `next` links up to the service's page limit):
the slowest query's median is the reference the service's whole call is compared with, since the
service sends its queries concurrently. All of them are also timed sent together, from one thread
each, as the service sends them: how long the server takes to answer that, whatever the service.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

from bench.bodies import Patients, no_prefetch_body
from bench.procs import Server, call, card_topics, start_service, stop
from service.fhir.load import to_transaction
from service.fhir.templates import Unrenderable, render
from service.settings import Settings

MAX_PAGES: int = Settings.model_fields["fhir_max_pages"].default
USER = "Practitioner/syn-clinician"

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


def run(
    services: list[dict[str, Any]],
    patients: Patients,
    today: date,
    work: Path,
    measure: Measure,
    connections: tuple[int, ...],
    repeats: int,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """Load the patients, time the queries, then drive the service (1 worker) per patient."""
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
            for spec in patients.specs.values():
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
