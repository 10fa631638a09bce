"""The load benchmark's Markdown report and its check against the issue's targets."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

PHASES = ("auth", "prefetch", "record", "apply", "suppress", "encode")
# Issue 13's targets (2 cores; 1 worker, 8 connections, ratios from one run).
RATIO_TARGETS = {"pv-200": 0.50, "pv-30": 0.30, "pv-5000": 1.0, "order-sign-3": 0.30}
P99_FLOOR_FACTOR = 1.5
RSS_TARGET_MB = 120.0
# "A few milliseconds" above what the FHIR server takes to answer the same queries sent together.
NO_PREFETCH_ABOVE_MS = 5.0
CELL = (1, 8)  # workers, connections of issue 13's targets
# Issue 6's targets, still reported.
RATIO_MIN = 0.30
P99_MAX_MS = 25.0
SERVER_SMALL_MAX_MS = 3.0
SERVER_LARGE_MAX_MS = 60.0
ORDER_SIGN_MAX_MS = 2.0
READY_MAX_SECONDS = 2.0
RSS_MAX_MB = 150.0
NO_PREFETCH_SLACK_MS = 10.0
ELAPSED_MAX_SECONDS = 600.0
TARGET_CELL = (1, "pv-200", 8)  # workers, body, connections
PHASE_CELL = (1, 8)  # workers, connections of the server-side figures


def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _errors(run: dict[str, Any]) -> int:
    bad = sum(v for k, v in run["statuses"].items() if k != "200")
    return int(bad + sum(run["failures"].values()))


def _cpu(run: dict[str, Any]) -> str:
    """CPU seconds of each worker, then of the load generator, over the run (warm-up included)."""
    workers = "+".join(f"{s:.1f}" for s in run.get("worker_cpu_seconds", []))
    return f"{workers or '-'}; client {run.get('client_cpu_seconds', 0):.1f}"


def _ratio(service: dict[str, Any], floor: dict[str, Any]) -> float | None:
    return service["rps"] / floor["rps"] if floor["rps"] else None


def progress(
    workers: int, body: str, connections: int, service: dict[str, Any], floor: dict[str, Any]
) -> str:
    ratio = _ratio(service, floor)
    return (
        f"w{workers} {body:<12} c{connections:<2}  service {service['rps']:7.1f} req/s "
        f"p50 {_num(service['p50_ms'])} p99 {_num(service['p99_ms'])} ms | floor "
        f"{floor['rps']:7.1f} req/s p50 {_num(floor['p50_ms'])} p99 {_num(floor['p99_ms'])} ms"
        f" | ratio {_num(ratio, 2)}"
    )


def _cell(results: dict[str, Any], workers: int, body: str, connections: int) -> Any:
    for run in results["runs"]:
        if (run["workers"], run["body"], run["connections"]) == (workers, body, connections):
            return run
    return None


def _target(text: str, measured: str, value: float | None, ok: bool | None) -> dict[str, Any]:
    return {"target": text, "measured": measured, "value": value, "met": ok}


def _server_p50(results: dict[str, Any], body: str) -> float | None:
    run = _cell(results, PHASE_CELL[0], body, PHASE_CELL[1])
    return None if run is None else run["service"]["server_p50_ms"]


def _linear(results: dict[str, Any]) -> dict[str, Any]:
    """Record + apply + encode p50 grows no faster than the resources (x5 per step)."""
    steps = [("pv-200", "pv-1000", 5.0), ("pv-1000", "pv-5000", 5.0)]
    growths = []
    for small, big, factor in steps:
        low, high = _server_p50(results, small), _server_p50(results, big)
        growths.append((high / low if low and high else None, factor))
    return _target(
        "server-side (record + apply + encode) p50 grows no faster than linearly "
        "(x5 resources: 200 -> 1,000 -> 5,000)",
        ", ".join(f"x{_num(g, 1)}" for g, _ in growths),
        max((g for g, _ in growths if g is not None), default=None),
        all(g is not None and g <= f for g, f in growths),
    )


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 13's targets, each with its figure."""
    rows = []
    workers, connections = CELL
    where = f"{workers} worker, {connections} connections"
    for body, minimum in RATIO_TARGETS.items():
        cell = _cell(results, workers, body, connections)
        ratio = _ratio(cell["service"], cell["floor"]) if cell else None
        rows.append(
            _target(
                f"{body}, {where}: service >= {minimum:.2f} of the floor's req/s",
                f"{_num(ratio, 2)} ({cell['service']['rps']:.0f} vs {cell['floor']['rps']:.0f} "
                "req/s)"
                if cell
                else "not measured",
                ratio,
                ratio is not None and ratio >= minimum,
            )
        )
    for body in results["bodies"]:
        cell = _cell(results, workers, body["name"], connections)
        if cell is None:
            continue
        mine, floor = cell["service"]["p99_ms"], cell["floor"]["p99_ms"]
        factor = mine / floor if mine is not None and floor else None
        rows.append(
            _target(
                f"{body['name']}, {where}: service p99 <= {P99_FLOOR_FACTOR:g} x the floor's p99",
                f"x{_num(factor, 2)} ({_num(mine)} vs {_num(floor)} ms)",
                factor,
                factor is not None and factor <= P99_FLOOR_FACTOR,
            )
        )
    for server in results["servers"]:
        if server["app"] != "service":
            continue
        rss = max((r for r in server["workers_mb"] if r is not None), default=None)
        rows.append(
            _target(
                f"service RSS <= {RSS_TARGET_MB:.0f} MB per worker after the run "
                f"({server['workers']} worker(s))",
                f"{_num(rss, 0)} MB",
                rss,
                rss is not None and rss <= RSS_TARGET_MB,
            )
        )
    rows.append(_linear(results))
    for patient in (results.get("no_prefetch") or {}).get("patients", []):
        paired = patient.get("paired")
        if paired:
            above = paired["above_p50_ms"]
            measured = (
                f"{_num(above)} ms above (median of {paired['pairs']} pairs; medians "
                f"{paired['service_p50_ms']:.1f} vs {paired['together_p50_ms']:.1f} ms)"
            )
        else:
            run = next((r for r in patient["runs"] if r["connections"] == 1), None)
            p50 = run["p50_ms"] if run else None
            above = p50 - patient["together_p50_ms"] if p50 is not None else None
            measured = (
                f"{_num(above)} ms above ({_num(p50)} vs {patient['together_p50_ms']:.1f} ms)"
            )
        rows.append(
            _target(
                f"no prefetch, {patient['patient']}, one call at a time: the service's time <= "
                f"{NO_PREFETCH_ABOVE_MS:g} ms above the FHIR server's for the same queries "
                "sent together",
                measured,
                above,
                above is not None and above <= NO_PREFETCH_ABOVE_MS,
            )
        )
    return rows


def previous_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 6's targets."""
    rows = []
    cell = _cell(results, *TARGET_CELL)
    if cell is not None:
        ratio = _ratio(cell["service"], cell["floor"])
        rows.append(
            _target(
                "patient-view 200 resources, 1 worker, 8 connections: "
                f"service >= {RATIO_MIN:.0%} of the floor's req/s",
                f"{_num(ratio and ratio * 100, 0)}% ({cell['service']['rps']:.0f} vs "
                f"{cell['floor']['rps']:.0f} req/s)",
                ratio,
                ratio is not None and ratio >= RATIO_MIN,
            )
        )
        p99 = cell["service"]["p99_ms"]
        rows.append(
            _target(
                f"the same: service p99 <= {P99_MAX_MS:.0f} ms",
                f"{_num(p99)} ms",
                p99,
                p99 is not None and p99 <= P99_MAX_MS,
            )
        )
    where = f"{PHASE_CELL[0]} worker, {PHASE_CELL[1]} connections"
    for body in ("pv-30", "pv-200"):
        p50 = _server_p50(results, body)
        rows.append(
            _target(
                f"server-side (record + apply + encode) p50 <= {SERVER_SMALL_MAX_MS:.0f} ms, "
                f"{body} ({where})",
                f"{_num(p50, 2)} ms",
                p50,
                p50 is not None and p50 <= SERVER_SMALL_MAX_MS,
            )
        )
    large = _server_p50(results, "pv-5000")
    rows.append(
        _target(
            f"server-side p50 <= {SERVER_LARGE_MAX_MS:.0f} ms, pv-5000",
            f"{_num(large, 2)} ms",
            large,
            large is not None and large <= SERVER_LARGE_MAX_MS,
        )
    )
    rows.append(_linear(results))
    order = next((b["name"] for b in results["bodies"] if b["hook"] == "order-sign"), None)
    order_p50 = _server_p50(results, order) if order else None
    rows.append(
        _target(
            f"order-sign with 3 draft orders: server-side p50 <= {ORDER_SIGN_MAX_MS:.0f} ms",
            f"{_num(order_p50, 2)} ms",
            order_p50,
            order_p50 is not None and order_p50 <= ORDER_SIGN_MAX_MS,
        )
    )
    for server in results["servers"]:
        if server["app"] != "service":
            continue
        starts = [
            ("restart: knowledge cache warm, database migrated", server["ready_seconds"]),
            ("first start: empty data directory", server["first_start_seconds"]),
        ]
        for which, ready in starts:
            rows.append(
                _target(
                    f"service start to ready <= {READY_MAX_SECONDS:.0f} s ({server['workers']} "
                    f"worker(s); {which})",
                    f"{ready:.2f} s",
                    ready,
                    ready <= READY_MAX_SECONDS,
                )
            )
        rss = max((r for r in server["workers_mb"] if r is not None), default=None)
        rows.append(
            _target(
                f"service RSS <= {RSS_MAX_MB:.0f} MB per worker after the run "
                f"({server['workers']} worker(s))",
                f"{_num(rss, 0)} MB",
                rss,
                rss is not None and rss <= RSS_MAX_MB,
            )
        )
    for patient in (results.get("no_prefetch") or {}).get("patients", []):
        run = next((r for r in patient["runs"] if r["connections"] == 1), None)
        p50 = run["p50_ms"] if run else None
        limit = patient["slowest_p50_ms"] + NO_PREFETCH_SLACK_MS
        rows.append(
            _target(
                f"no prefetch, {patient['patient']}, 1 connection: p50 <= slowest single query "
                f"+ {NO_PREFETCH_SLACK_MS:.0f} ms",
                f"{_num(p50)} ms vs {limit:.1f} ms ({patient['slowest_query']} "
                f"{patient['slowest_p50_ms']:.1f} ms + {NO_PREFETCH_SLACK_MS:.0f}); the server "
                f"answers all the queries sent together in {patient['together_p50_ms']:.1f} ms",
                p50,
                p50 is not None and p50 <= limit,
            )
        )
    elapsed = results.get("elapsed_seconds")
    rows.append(
        _target(
            "the whole benchmark runs in under 10 minutes",
            f"{_num(elapsed, 0)} s",
            elapsed,
            elapsed is not None and elapsed < ELAPSED_MAX_SECONDS,
        )
    )
    return rows


def _met(ok: bool | None) -> str:
    return "-" if ok is None else ("met" if ok else "**not met**")


def _speed(machine: dict[str, Any], when: str) -> str:
    return _num(machine.get(f"python_loop_seconds_at_{when}"), 2)


def render(results: dict[str, Any]) -> str:
    machine = results["machine"]
    settings = results["settings"]
    lines = [
        "# Load benchmark",
        "",
        f"{results['date']}; {machine['nproc']} cores ({machine['cpu']}), Python "
        f"{machine['python']}, {machine['platform']}; commit {machine['commit'] or '-'}; CPUs "
        f"{machine['cpu_busy_at_start']:.0%} busy just before the start (load average "
        f"{machine['loadavg_at_start']:.2f} at start, {machine.get('loadavg_at_end', 0):.2f} at "
        f"the end). Machine speed: a 5-million-step Python loop took "
        f"{_speed(machine, 'start')} s at the start, {_speed(machine, 'end')} s at the end (a shared machine's speed "
        "varies: compare runs by it). Each run: "
        f"{settings['duration_seconds']:g} s measured after {settings['warmup_seconds']:g} s "
        "of warm-up, service then floor with the same body; authentication off; "
        f"{results.get('elapsed_seconds', 0):.0f} s in all.",
        "",
        "Bodies (patient-view prefetch answered from the record: pv-30 code-filtered as the "
        "templates ask, larger ones as an EHR that ignores the filters):",
        "",
    ]
    lines += _table(
        ["body", "service", "resources in prefetch", "bytes", "cards (topics)"],
        (
            [b["name"], b["service"], str(b["resources"]), f"{b['bytes']:,}", ", ".join(b["cards"])]
            for b in results["bodies"]
        ),
    )
    lines += ["", "## Throughput and latency (client side, ms)", ""]
    rows = []
    for run in results["runs"]:
        service, floor = run["service"], run["floor"]
        rows.append(
            [
                str(run["workers"]),
                run["body"],
                str(run["connections"]),
                _num(service["rps"]),
                _num(floor["rps"]),
                _num(_ratio(service, floor), 2),
                _num(service["p50_ms"]),
                _num(service["p99_ms"]),
                _num(floor["p50_ms"]),
                _num(floor["p99_ms"]),
                _cpu(service),
                _cpu(floor),
                f"{_errors(service)}/{_errors(floor)}",
            ]
        )
    lines += _table(
        [
            "workers",
            "body",
            "conns",
            "service req/s",
            "floor req/s",
            "service/floor",
            "service p50",
            "service p99",
            "floor p50",
            "floor p99",
            "service CPU s",
            "floor CPU s",
            "errors s/f",
        ],
        rows,
    )
    lines += [
        "",
        "Latency is per request, from sending it to reading the whole answer; requests that "
        "complete inside the measured window count. CPU s: CPU seconds of each server worker "
        "and of the load generator (a separate process) over the run, warm-up included.",
    ]
    workers, connections = PHASE_CELL
    lines += [
        "",
        f"## Server-side time per phase (Server-Timing, ms; {workers} worker, "
        f"{connections} connections)",
        "",
    ]
    resources = {b["name"]: b["resources"] for b in results["bodies"]}
    rows = []
    for run in results["runs"]:
        if (run["workers"], run["connections"]) != PHASE_CELL:
            continue
        service = run["service"]
        phases = service["phases_p50_ms"]
        rows.append(
            [
                run["body"],
                str(resources.get(run["body"], "")),
                *(_num(phases.get(name), 2) if name in phases else "-" for name in PHASES),
                _num(service["server_p50_ms"], 2),
                _num(service["server_p99_ms"], 2),
                _num(service.get("total_p50_ms"), 2),
                _num(service.get("total_p99_ms"), 2),
                _num(service.get("unmeasured_p50_ms"), 2),
                _num(service["p50_ms"], 2),
            ]
        )
    lines += _table(
        [
            "body",
            "resources",
            *(f"{name} p50" for name in PHASES),
            "record+apply+encode p50",
            "record+apply+encode p99",
            "total p50",
            "total p99",
            "unmeasured p50",
            "client p50",
        ],
        rows,
    )
    lines += [
        "",
        "`-`: the phase did not run (auth is off; prefetch is the service's own fetching). "
        "total: from the start of the request's handling in the worker (its line and headers "
        "parsed) to its response headers. unmeasured: per request, total less every named phase "
        "(reading and parsing the body, validating the call, routing, middleware; at several "
        "connections also the time the worker spends on other requests meanwhile). client p50: "
        "the load generator's latency, for comparison (it adds the network, the server's HTTP "
        "parsing and the wait for the worker's event loop).",
        "",
        "## Start-up and memory",
        "",
    ]
    lines += _table(
        [
            "app",
            "workers",
            "start to ready (s): restart",
            "first start",
            "RSS per worker after the run (MB)",
            "supervisor",
        ],
        (
            [
                s["app"],
                str(s["workers"]),
                f"{s['ready_seconds']:.2f}",
                f"{s['first_start_seconds']:.2f}" if s["app"] == "service" else "-",
                ", ".join(_num(r, 0) for r in s["workers_mb"]),
                _num(s["supervisor_mb"], 0) + (" MB" if s["supervisor_mb"] else ""),
            ]
            for s in results["servers"]
        ),
    )
    lines += no_prefetch_section(results.get("no_prefetch"))
    lines += ["", "## Targets (issue 13)", ""]
    lines += _table(
        ["target", "measured", ""],
        ([t["target"], t["measured"], _met(t["met"])] for t in results.get("targets", [])),
    )
    if results.get("previous_targets"):
        lines += ["", "## Previous targets (issue 6)", ""]
        lines += _table(
            ["target", "measured", ""],
            ([t["target"], t["measured"], _met(t["met"])] for t in results["previous_targets"]),
        )
    return "\n".join(lines) + "\n"


def no_prefetch_section(section: dict[str, Any] | None) -> list[str]:
    if not section:
        return []
    lines = [
        "",
        "## No prefetch (the service fetches from sekmet-fhir on loopback; 1 worker)",
        "",
        f"Service ready in {section['service_ready_seconds']:.2f} s; patients loaded in "
        f"{section['load_seconds']:.1f} s. Queries timed alone: p50 of sequential reads, "
        "following `next` links as the service does.",
        "",
    ]
    rows = []
    for patient in section["patients"]:
        queries = ", ".join(
            f"{key} {q['p50_ms']:.1f}" for key, q in sorted(patient["queries"].items())
        )
        for run in patient["runs"]:
            phases = run["phases_p50_ms"]
            rows.append(
                [
                    patient["patient"],
                    str(patient["record_resources"]),
                    str(patient["fetched_resources"]),
                    f"{patient['slowest_query']} {patient['slowest_p50_ms']:.1f}",
                    str(run["connections"]),
                    _num(run["rps"]),
                    _num(run["p50_ms"]),
                    _num(run["p99_ms"]),
                    _num(phases.get("prefetch"), 1),
                    _num(run["server_p50_ms"], 2),
                    _num(run.get("total_p50_ms"), 1),
                    _num(run.get("unmeasured_p50_ms"), 2),
                    str(_errors(run)),
                ]
            )
        rows.append(
            [
                "",
                "",
                "",
                f"all queries (ms): {queries}; their sum {patient['sum_p50_ms']:.1f}; sent "
                f"together {patient['together_p50_ms']:.1f}{_paired(patient.get('paired'))}; "
                "cards: "
                f"{', '.join(patient['cards']) or 'none'}",
                *([""] * 9),
            ]
        )
    lines += _table(
        [
            "patient",
            "record",
            "fetched",
            "slowest query p50 (ms)",
            "conns",
            "req/s",
            "p50",
            "p99",
            "prefetch p50",
            "record+apply+encode p50",
            "total p50",
            "unmeasured p50",
            "errors",
        ],
        rows,
    )
    return lines


def _paired(paired: dict[str, Any] | None) -> str:
    if not paired:
        return ""
    return (
        f"; in turns with the service's call ({paired['pairs']} pairs): service "
        f"{paired['service_p50_ms']:.1f}, queries together {paired['together_p50_ms']:.1f}, "
        f"difference {paired['above_p50_ms']:.1f}"
    )
