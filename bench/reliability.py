"""Reliability benchmark of the CDS Hooks service, on loopback: the real `rpl-cds serve` in a
subprocess, driven through failures rather than timed.

1. fuzz: requests generated from the served contract (two fuzzing processes: the generator, not
   the service, is the bottleneck), every schemathesis check; requests, 5xx, check failures.
2. soak: 32 connections of hook calls with prefetch, without prefetch (against bench/fhir_stub.py)
   and feedback for 60 s; 5xx; RSS of each worker before and after.
3. kill -9: feedback items with unique card uuids posted, the service's processes SIGKILLed when
   half were acknowledged, then restarted; acknowledged vs in the database (read directly) vs lost,
   on SQLite (1 worker) and PostgreSQL (2 workers); the rest re-sent afterwards, as an EHR retries.
4. SIGTERM: the signal under 32 connections of hook calls and feedback; requests accepted before it
   and not answered, acknowledged feedback not stored, issued cards not recorded.
5. database cut: PostgreSQL behind tests/support/tcp_proxy.py, cut for a few seconds under load and
   restored; hook-call 5xx, feedback answers during the cut, time until /readyz and feedback
   recover (no restart).
6. overload: 256 connections of 1,000-resource bodies; 200s vs 503s (with Retry-After), p99 of
   the 200s.
7. secrets: a short run with authentication on (valid, replayed, forged, expired and garbage JWTs),
   then every line every service process wrote (stdout and stderr, all scenarios) searched for
   the canaries the benchmark sent: patient ids, access tokens, JWTs, odd and non-ASCII tokens, and
   the tokens and patient ids the fuzzer generated.

Writes bench/results/reliability.md and .json and prints the Markdown table. Exit status 1 when an
expectation (0 5xx, 0 lost, 0 secrets, ...) is not met, 0 otherwise. Bounded: every load has a
request count and a deadline; every process started is stopped at the end, also on failure; a
PostgreSQL database of its own is created and dropped (RPL_CDS_TEST_POSTGRES_URL or the local
server; its scenarios are reported as not run when there is none).

    .venv/bin/python -m bench.reliability [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from bench.bodies import ROOT, Body, Patients, build_bodies, make_patients, no_prefetch_body
from bench.loadgen import percentile
from bench.mixed import Outcome, Planned, Run, drive, get_status
from bench.procs import (
    Server,
    call,
    process_tree,
    start_fhir_stub,
    start_service,
    stop,
    worker_rss,
)
from bench.run import machine, python_speed
from service.feedback.database import normalise_url

# isort: split
# bench.bodies put tests/ on sys.path: the proxy is the one the database-outage tests use.
from support.tcp_proxy import TcpProxy

RESULTS = ROOT / "bench" / "results"
POSTGRES_URL_ENV = "RPL_CDS_TEST_POSTGRES_URL"
DEFAULT_POSTGRES_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
DATABASE_PREFIX = "rpl_cds_bench_"
ISSUER = "https://ehr.bench.invalid"
PUBLIC_BASE_URL = "https://cds.bench.invalid"
CANARY = "rplcanary"  # in every canary the benchmark makes up: one word to look for
FEEDBACK_ITEMS_PER_REQUEST = 5


@dataclass(frozen=True)
class Sizes:
    fuzz_requests: int
    fuzz_budget: float  # seconds
    soak_seconds: float
    connections: int  # soak, SIGTERM, cut
    kill_sqlite_items: int
    kill_postgres_items: int
    sigterm_answered_before: int
    cut_before: float
    cut_seconds: float
    cut_after: float
    overload_connections: int
    overload_seconds: float
    auth_calls: int  # per kind of token
    workers: int  # where a scenario runs several workers (1 in --quick: each start costs seconds)
    fuzzers: int  # fuzzing processes side by side
    overload_limit: int  # RPL_CDS_MAX_CONCURRENT_CALLS in the overload (32: the default)


FULL = Sizes(5000, 300.0, 60.0, 32, 10_000, 4_000, 6 * 32, 3.0, 4.0, 3.0, 256, 10.0, 20, 2, 2, 32)
# A smoke run for the test suite: tiny counts, and a low call limit so that the overload refuses
# calls without costing seconds of CPU.
QUICK = Sizes(20, 20.0, 0.5, 8, 100, 100, 16, 0.3, 0.6, 0.2, 16, 0.5, 2, 1, 1, 2)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# Canaries. ---------------------------------------------------------------------------------------


@dataclass
class Canaries:
    """Secrets the benchmark sends, to be looked for in the service's logs afterwards."""

    run_id: str = field(default_factory=lambda: secrets.token_hex(4))
    # label -> values; `per_log` ones are only looked for in the log of the service they went to.
    everywhere: dict[str, set[str]] = field(default_factory=dict)
    per_log: dict[Path, dict[str, set[str]]] = field(default_factory=dict)

    @property
    def patient_prefix(self) -> str:
        return f"{CANARY}-pt-{self.run_id}"

    @property
    def access_token(self) -> str:
        return f"{CANARY}-tok-{self.run_id}-{secrets.token_urlsafe(24)}"

    def fake_jwt(self) -> str:
        """JWT-shaped (header.payload.signature, base64url), carrying the canary inside."""
        header = _b64({"alg": "ES384", "typ": "JWT", "kid": f"{CANARY}-kid"})
        payload = _b64({"iss": ISSUER, "sub": f"{CANARY}-sub-{self.run_id}"})
        return f"{header}.{payload}.{CANARY}{self.run_id}{secrets.token_urlsafe(32)}"

    def odd_tokens(self) -> list[str]:
        """Tokens a careless log line would mangle: non-ASCII, control characters, quotes, very
        long; each carries the canary word."""
        tag = f"{CANARY}{self.run_id}"
        return [
            f"{tag}-ÄÖü-токен-令牌",
            f"{tag} with spaces\tand tab",
            f"{tag}\"quote's\\back",
            f"{tag}\r\nX-Injected: header",
            f"{tag}\x00nul\x1bescape",
            f"{tag}-{'x' * 2000}",
            f"{tag}=+/~._-",
        ]

    def add(self, label: str, value: str, log_path: Path | None = None) -> None:
        if log_path is None:
            self.everywhere.setdefault(label, set()).add(value)
        else:
            self.per_log.setdefault(log_path, {}).setdefault(label, set()).add(value)


def _b64(document: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(document).encode()).rstrip(b"=").decode()


def _forms(value: str) -> set[str]:
    """How a value may appear in a JSON log line: as it is, JSON-escaped (ASCII or not),
    percent-encoded (in a logged URL), or its signature part alone for a JWT."""
    forms = {
        value,
        json.dumps(value)[1:-1],
        json.dumps(value, ensure_ascii=False)[1:-1],
        urllib.parse.quote(value, safe=""),
    }
    if value.count(".") == 2 and len(value.rsplit(".", 1)[1]) >= 16:
        forms.add(value.rsplit(".", 1)[1])
    return {form for form in forms if form}


def scan_logs(logs: list[Path], canaries: Canaries) -> dict[str, Any]:
    """Occurrences of each kind of canary in the service logs; the canary word counts on its own
    (it is in every made-up secret), the generated ones by value."""
    word = f"the word {CANARY!r} (in every made-up token, JWT and patient id)"
    found: dict[str, int] = {word: 0}
    lines = 0
    files: dict[str, int] = {}
    for path in logs:
        text = path.read_bytes().decode("utf-8", errors="replace")
        lines += text.count("\n")
        # A made-up canary that leaks is counted once, by its word; the breakdown by kind below
        # says which it was. Values without the word (fuzzer-generated, signed JWTs) add to it.
        hits = text.count(CANARY)
        found[word] += hits
        groups = list(canaries.everywhere.items()) + list(canaries.per_log.get(path, {}).items())
        for label, values in groups:
            for value in values:
                count = sum(text.count(form) for form in _forms(value))
                found[label] = found.get(label, 0) + count
                if CANARY not in value:
                    hits += count
        files[path.name] = hits
    distinct = sum(len(v) for v in canaries.everywhere.values()) + sum(
        len(v) for per in canaries.per_log.values() for v in per.values()
    )
    return {
        "log_files": len(logs),
        "log_lines": lines,
        "canary_values": distinct,
        "occurrences": sum(files.values()),
        "by_kind": found,
        "by_file": {name: hits for name, hits in files.items() if hits},
    }


# Context: services, databases, bodies. ----------------------------------------------------------


@dataclass
class Context:
    sizes: Sizes
    work: Path
    today: date
    canaries: Canaries
    services: list[dict[str, Any]]
    bodies: dict[str, Body] = field(default_factory=dict)
    started: list[Server] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)
    postgres: str | None = None  # server URL when reachable
    patients: Patients | None = None

    @property
    def data(self) -> Path:
        # One data directory for every service: the knowledge cache is built once. Each scenario
        # names its own database.
        return self.work / "data"

    def start(self, workers: int, database_url: str, **settings: str) -> Server:
        server = start_service(
            workers, self.data, self.work, log_level="INFO", database_url=database_url, **settings
        )
        self.started.append(server)
        self.logs.append(server.log_path)
        return server

    def path(self, hook: str) -> str:
        service = next(s for s in self.services if s["hook"] == hook)
        return f"/cds-services/{service['id']}"


def sqlite_url(directory: Path) -> str:
    directory.mkdir(parents=True, exist_ok=True)
    return f"sqlite+aiosqlite:///{directory / 'rpl-cds.db'}"


def _admin_engine(server_url: str) -> Any:
    return create_async_engine(
        normalise_url(server_url),
        isolation_level="AUTOCOMMIT",
        poolclass=NullPool,
        connect_args={"timeout": 5},
    )


async def _postgres_reachable(server_url: str) -> bool:
    engine = _admin_engine(server_url)
    try:
        async with asyncio.timeout(10), engine.connect() as connection:
            await connection.exec_driver_sql("SELECT 1")
        return True
    except Exception:  # any failure: the PostgreSQL scenarios are reported as not run
        return False
    finally:
        await engine.dispose()


@contextmanager
def postgres_database(server_url: str) -> Iterator[str]:
    """A new, empty database of the benchmark's own on the server, dropped afterwards (as
    tests/support/db.py makes them); yields its URL."""
    name = DATABASE_PREFIX + secrets.token_hex(6)

    async def create() -> None:
        engine = _admin_engine(server_url)
        try:
            async with engine.connect() as connection:
                await connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
        finally:
            await engine.dispose()

    async def drop() -> None:
        engine = _admin_engine(server_url)
        try:
            async with engine.connect() as connection:
                # A killed service leaves backends behind for a moment; they would block DROP.
                await connection.execute(
                    sa.text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = :name AND pid <> pg_backend_pid()"
                    ),
                    {"name": name},
                )
                await connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}"')
        finally:
            await engine.dispose()

    asyncio.run(create())
    try:
        yield normalise_url(server_url).set(database=name).render_as_string(hide_password=False)
    finally:
        asyncio.run(drop())


def stored_feedback(database_url: str) -> set[str]:
    """Card uuids in the feedback table, read directly (not through the service)."""
    return set(asyncio.run(_select(database_url, "SELECT card_uuid FROM feedback")))


def issued_cards(database_url: str) -> set[str]:
    return set(asyncio.run(_select(database_url, "SELECT uuid FROM issued_cards")))


async def _select(database_url: str, query: str) -> list[str]:
    engine = create_async_engine(normalise_url(database_url), poolclass=NullPool)
    try:
        async with engine.connect() as connection:
            return [str(v) for v in (await connection.exec_driver_sql(query)).scalars()]
    finally:
        await engine.dispose()


def build(ctx: Context) -> None:
    """The benchmark bodies, with the patient ids replaced by canaries."""
    view = next(s for s in ctx.services if s["hook"] == "patient-view")
    patients = make_patients(view["prefetch"], ctx.today)
    ctx.canaries.add("patient id", ctx.canaries.patient_prefix)
    for body in build_bodies(ctx.services, patients, ctx.today):
        ctx.bodies[body.name] = _canary_patient(ctx, body)
    ctx.patients = patients


def _canary_bytes(ctx: Context, payload: bytes) -> bytes:
    return payload.replace(b"bench-rpl-", f"{ctx.canaries.patient_prefix}-".encode())


def _canary_patient(ctx: Context, body: Body) -> Body:
    return Body(
        body.name, body.service_id, body.hook, body.resources, _canary_bytes(ctx, body.payload)
    )


def feedback_body(cards: tuple[str, ...]) -> bytes:
    now = datetime.now(UTC).isoformat()
    items = [{"card": card, "outcome": "overridden", "outcomeTimestamp": now} for card in cards]
    return json.dumps({"feedback": items}).encode()


def feedback(ctx: Context, count: int = 2) -> Planned:
    cards = tuple(str(uuid.uuid4()) for _ in range(count))
    path = ctx.path("patient-view") + "/feedback"
    return Planned("feedback", path, feedback_body(cards), cards, keep_body=True)


def hook_call(
    ctx: Context, name: str, keep_body: bool = False, headers: dict[str, str] | None = None
) -> Planned:
    body = ctx.bodies[name]
    return Planned(
        name, f"/cds-services/{body.service_id}", body.payload, headers=headers, keep_body=keep_body
    )


def acknowledged(run: Run) -> set[str]:
    """Feedback items answered 200 with `stored` (re-sent duplicates are stored 0 times, but
    every card here is new)."""
    cards: set[str] = set()
    for outcome in run.answered("feedback"):
        if outcome.status == 200 and "stored" in json.loads(outcome.body):
            cards.update(outcome.planned.items)
    return cards


def _5xx(outcomes: list[Outcome]) -> int:
    return sum(1 for o in outcomes if o.status is not None and o.status >= 500)


def _errors(outcomes: list[Outcome]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for outcome in outcomes:
        if outcome.error is not None:
            counts[outcome.error] = counts.get(outcome.error, 0) + 1
    return counts


# Scenarios. --------------------------------------------------------------------------------------


def scenario_fuzz(ctx: Context) -> dict[str, Any]:
    server = ctx.start(1, sqlite_url(ctx.work / "db-fuzz"))
    try:
        base_url = f"http://127.0.0.1:{server.port}"
        services_file = ctx.work / "services.json"
        services_file.write_text(json.dumps(ctx.services))
        processes = ctx.sizes.fuzzers  # the generator is CPU-bound; the service mostly idles
        share = -(-ctx.sizes.fuzz_requests // processes)
        outputs = [ctx.work / f"fuzz-{index}.json" for index in range(processes)]
        children = [
            subprocess.Popen(  # noqa: S603 (our own interpreter and arguments)
                [
                    sys.executable,
                    "-m",
                    "bench.fuzz",
                    "--base-url",
                    base_url,
                    "--target",
                    str(share),
                    "--budget",
                    str(ctx.sizes.fuzz_budget),
                    "--seed-offset",
                    str(index * 1_000_000),
                    "--output",
                    str(output),
                    "--services",
                    str(services_file),
                ],
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
                stderr=(ctx.work / f"fuzz-{index}.err").open("wb"),
            )
            for index, output in enumerate(outputs)
        ]
        try:
            for child in children:
                child.wait(timeout=ctx.sizes.fuzz_budget + 120)
        finally:
            for child in children:
                if child.poll() is None:
                    child.kill()
                    child.wait(timeout=10)
        parts = []
        for index, output in enumerate(outputs):
            if not output.exists():
                error = (ctx.work / f"fuzz-{index}.err").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"fuzzing process {index} failed:\n{error}")
            parts.append(json.loads(output.read_text()))
        explicit = _odd_token_requests(ctx, server)
    finally:
        stop(server)
    for part in parts:
        for value in part["generated_secrets"]:
            ctx.canaries.add("tokens and patient ids the fuzzer generated", value, server.log_path)
    merged: dict[str, Any] = {
        "requests": sum(p["requests"] for p in parts),
        "server_errors": sum(p["server_errors"] for p in parts),
        "failing_requests": sum(p["failing_requests"] for p in parts),
        "seconds": max(p["seconds"] for p in parts),
        "operations": parts[0]["operations"],
        "rounds": sum(p["rounds"] for p in parts),
        "generated_secrets": sum(len(p["generated_secrets"]) for p in parts),
        "examples": [e for p in parts for e in p["examples"]][:5],
    }
    for key in ("statuses", "check_failures", "transport_errors", "generation_errors"):
        combined: dict[str, int] = {}
        for part in parts:
            for name, count in part[key].items():
                combined[name] = combined.get(name, 0) + count
        merged[key] = dict(sorted(combined.items()))
    merged["odd_token_requests"] = explicit
    return merged


def _odd_token_requests(ctx: Context, server: Server) -> dict[str, Any]:
    """The canary tokens and patient ids, odd ones included, in hook calls: as the FHIR access
    token, as the patient id, and as an Authorization header (ignored with authentication off,
    but a header logged by mistake would show)."""
    base = json.loads(ctx.bodies["pv-30"].payload)
    path = ctx.path("patient-view")
    planned: list[Planned] = []
    for token in [ctx.canaries.access_token, *ctx.canaries.odd_tokens()]:
        ctx.canaries.add("access tokens (odd ones included)", token)
        body = {
            **base,
            "fhirServer": "http://127.0.0.1:9/fhir",
            "fhirAuthorization": {
                "access_token": token,
                "token_type": "Bearer",
                "expires_in": 300,
                "scope": "patient/*.read",
                "subject": "rpl-cds-bench",
            },
        }
        planned.append(Planned("odd-token", path, json.dumps(body).encode()))
        patient = {**base, "context": {**base["context"], "patientId": token}}
        planned.append(Planned("odd-patient", path, json.dumps(patient).encode()))
        fake = ctx.canaries.fake_jwt()
        ctx.canaries.add("JWTs", fake)
        planned.append(
            Planned(
                "odd-header",
                path,
                ctx.bodies["pv-30"].payload,
                headers={"Authorization": f"Bearer {fake}"},
            )
        )
    latin = f"Bearer {CANARY}{ctx.canaries.run_id}-ÿþ-latin1"
    ctx.canaries.add("access tokens (odd ones included)", latin.removeprefix("Bearer "))
    planned.append(
        Planned("odd-header", path, ctx.bodies["pv-30"].payload, headers={"Authorization": latin})
    )
    run = asyncio.run(drive(server.port, lambda _i, n: planned[n], 1, 60, len(planned)))
    return {"requests": len(run.outcomes), "statuses": run.statuses(), "5xx": _5xx(run.outcomes)}


def scenario_soak(ctx: Context) -> dict[str, Any]:
    assert ctx.patients is not None
    token = ctx.canaries.access_token
    ctx.canaries.add("access tokens (odd ones included)", token)
    spec = ctx.patients.specs[30]
    resources = json.dumps(spec.resources(ctx.today)).encode()
    data = ctx.work / "fhir-stub.json"
    data.write_text(
        json.dumps({"token": token, "resources": json.loads(_canary_bytes(ctx, resources))})
    )
    stub = start_fhir_stub(data, ctx.work)
    ctx.started.append(stub)
    try:
        fhir = f"http://127.0.0.1:{stub.port}/fhir"
        nopf = no_prefetch_body(ctx.services, spec, ctx.today, fhir, token)
        ctx.bodies["nopf-30"] = _canary_patient(ctx, nopf)
        fake = ctx.canaries.fake_jwt()
        ctx.canaries.add("JWTs", fake)
        header = {"Authorization": f"Bearer {fake}"}
        server = ctx.start(
            ctx.sizes.workers, sqlite_url(ctx.work / "db-soak"), fhir_allow_http="true"
        )
        try:
            kinds: list[Callable[[], Planned]] = [
                lambda: hook_call(ctx, "pv-30", headers=header),
                lambda: feedback(ctx),
                lambda: hook_call(ctx, "nopf-30", keep_body=True, headers=header),
                lambda: hook_call(ctx, "order-sign-3", headers=header),
            ]
            warm = asyncio.run(drive(server.port, lambda _i, n: kinds[n % 4](), 1, 30, 8))
            rss_before = worker_rss(server)
            run = asyncio.run(
                drive(
                    server.port,
                    lambda i, n: kinds[(i + n) % 4](),
                    ctx.sizes.connections,
                    ctx.sizes.soak_seconds,
                    1_000_000,
                )
            )
            rss_after = worker_rss(server)
        finally:
            stop(server)
    finally:
        stop(stub)
    by_kind = {}
    for kind in ("pv-30", "nopf-30", "order-sign-3", "feedback"):
        outcomes = [o for o in run.outcomes if o.kind == kind]
        latencies = [o.latency * 1000 for o in outcomes if o.status == 200 and o.latency]
        by_kind[kind] = {
            "requests": len(outcomes),
            "statuses": run.statuses(kind),
            "p50_ms": percentile(latencies, 0.5),
            "p99_ms": percentile(latencies, 0.99),
        }
    incomplete = sum(
        1
        for o in run.outcomes
        if o.kind == "nopf-30" and o.status == 200 and b"data-incomplete" in o.body
    )
    return {
        "seconds": ctx.sizes.soak_seconds,
        "connections": ctx.sizes.connections,
        "workers": ctx.sizes.workers,
        "requests": len(run.outcomes),
        "warm_up_statuses": warm.statuses(),
        "statuses": run.statuses(),
        "5xx": _5xx(run.outcomes),
        "errors": _errors(run.outcomes),
        "by_kind": by_kind,
        "nopf_data_incomplete": incomplete,
        "rss_before": rss_before,
        "rss_after": rss_after,
    }


def scenario_kill9(
    ctx: Context, backend: str, database_url: str, workers: int, items: int
) -> dict[str, Any]:
    """Feedback items posted by 32 connections; every process of the service SIGKILLed once half
    are acknowledged; then restarted, and what was not stored re-sent."""
    cards = [str(uuid.uuid4()) for _ in range(items)]
    batches = [
        tuple(cards[start : start + FEEDBACK_ITEMS_PER_REQUEST])
        for start in range(0, items, FEEDBACK_ITEMS_PER_REQUEST)
    ]
    path = ctx.path("patient-view") + "/feedback"
    server = ctx.start(workers, database_url)
    killed: dict[str, Any] = {}

    async def load() -> Run:
        run = Run()
        sent = iter(range(len(batches)))

        def plan(_index: int, _number: int) -> Planned:
            batch = batches[next(sent, len(batches) - 1)]
            return Planned("feedback", path, feedback_body(batch), batch, keep_body=True)

        async def killer() -> None:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and not run.stop.is_set():
                done = sum(len(o.planned.items) for o in run.outcomes if o.status == 200)
                if done >= items // 2:
                    pids = process_tree(server)
                    for pid in pids:
                        with suppress(ProcessLookupError):
                            os.kill(pid, signal.SIGKILL)
                    killed.update(at_acknowledged=done, processes=len(pids))
                    return
                await asyncio.sleep(0.002)

        watcher = asyncio.create_task(killer())
        await drive(server.port, plan, 32, 120, len(batches), run=run, reconnect=False)
        run.stop.set()
        await watcher
        return run

    try:
        run = asyncio.run(load())
        server.process.wait(timeout=30)
        acked = acknowledged(run)
        stored = stored_feedback(database_url)
        ours = stored & set(cards)
        restarted = ctx.start(workers, database_url)
        try:
            missing = [c for c in cards if c not in ours]
            retry = [
                tuple(missing[s : s + FEEDBACK_ITEMS_PER_REQUEST])
                for s in range(0, len(missing), FEEDBACK_ITEMS_PER_REQUEST)
            ]
            pending = iter(retry)

            def resend(_index: int, _number: int) -> Planned:
                batch = next(pending, retry[-1])
                return Planned("feedback", path, feedback_body(batch), batch, keep_body=True)

            again = (
                asyncio.run(drive(restarted.port, resend, 8, 120, len(retry))) if retry else Run()
            )
            ready_seconds = restarted.ready_seconds
        finally:
            stop(restarted)
        final = stored_feedback(database_url) & set(cards)
    finally:
        stop(server)
    return {
        "backend": backend,
        "workers": workers,
        "items": items,
        "killed": killed,
        "requests_before_kill": len(run.outcomes),
        "statuses_before_kill": run.statuses(),
        "acknowledged": len(acked),
        "stored_after_kill": len(ours),
        "stored_not_acknowledged": len(ours - acked),
        "lost": len(acked - ours),
        "restart_ready_seconds": ready_seconds,
        "resent": len(missing),
        "resent_statuses": again.statuses(),
        "stored_in_the_end": len(final),
    }


def scenario_sigterm(ctx: Context) -> dict[str, Any]:
    database_url = sqlite_url(ctx.work / "db-sigterm")
    grace = 10
    server = ctx.start(ctx.sizes.workers, database_url, shutdown_grace_seconds=str(grace))
    kinds = [lambda: hook_call(ctx, "pv-30", keep_body=True), lambda: feedback(ctx)]
    marks: dict[str, float] = {}

    async def load() -> Run:
        run = Run()

        async def signaller() -> None:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                if len(run.answered()) >= ctx.sizes.sigterm_answered_before:
                    break
                await asyncio.sleep(0.005)
            marks["signalled"] = time.monotonic()
            server.process.send_signal(signal.SIGTERM)
            with suppress(subprocess.TimeoutExpired):
                await asyncio.to_thread(server.process.wait, grace + 20)
            marks["exited"] = time.monotonic()

        task = asyncio.create_task(signaller())
        connections = ctx.sizes.connections
        await drive(
            server.port,
            lambda i, n: kinds[(i + n) % 2](),
            connections,
            90,
            200_000,
            run=run,
            reconnect=False,
        )
        await task
        return run

    try:
        run = asyncio.run(load())
    finally:
        stop(server)
    signalled = marks["signalled"]
    failed = [o for o in run.outcomes if o.error is not None]
    # The closed door: a connection made after the signal, refused or reset before any answer.
    closed_door = [o for o in failed if o.connected_at >= signalled]
    cut = [o for o in failed if o.connected_at < signalled]
    acked = acknowledged(run)
    stored = stored_feedback(database_url)
    cards = {
        card["uuid"]
        for o in run.answered("pv-30")
        if o.status == 200
        for card in json.loads(o.body)["cards"]
    }
    recorded = issued_cards(database_url)
    return {
        "workers": ctx.sizes.workers,
        "connections": ctx.sizes.connections,
        "requests": len(run.outcomes),
        "answered": len(run.answered()),
        "answered_after_signal": sum(1 for o in run.answered() if (o.answered_at or 0) > signalled),
        "statuses": run.statuses(),
        "non_200": sum(1 for o in run.answered() if o.status != 200),
        "unanswered_accepted": len(cut),
        "unanswered_examples": [o.error for o in cut[:5]],
        "closed_door": len(closed_door),
        "acknowledged": len(acked),
        "acknowledged_not_stored": len(acked - stored),
        "cards_issued": len(cards),
        "cards_not_recorded": len(cards - recorded),
        "exit_seconds": marks.get("exited", signalled) - signalled,
        "returncode": server.process.returncode,
    }


def scenario_cut(ctx: Context, server_url: str) -> dict[str, Any]:
    sizes = ctx.sizes
    with postgres_database(server_url) as direct, TcpProxy("127.0.0.1", _port(direct)) as proxy:
        through = normalise_url(direct).set(port=proxy.port).render_as_string(hide_password=False)
        server = ctx.start(ctx.sizes.workers, through)
        marks: dict[str, float] = {}
        readyz: list[tuple[float, int | None]] = []
        kinds = [lambda: hook_call(ctx, "pv-30"), lambda: feedback(ctx)]

        async def load() -> Run:
            run = Run()

            async def controller() -> None:
                await asyncio.sleep(sizes.cut_before)
                await asyncio.to_thread(proxy.cut)
                marks["cut"] = time.monotonic()
                await asyncio.sleep(sizes.cut_seconds)
                await asyncio.to_thread(proxy.restore)
                marks["restored"] = time.monotonic()
                deadline = marks["restored"] + 30
                while time.monotonic() < deadline:
                    back = [
                        o.answered_at
                        for o in run.outcomes
                        if o.kind == "feedback"
                        and o.status == 200
                        and o.sent_at is not None
                        and o.sent_at >= marks["restored"]
                    ]
                    if back and "feedback_back" not in marks:
                        marks["feedback_back"] = min(a for a in back if a is not None)
                    if "readyz_back" in marks and "feedback_back" in marks:
                        break
                    await asyncio.sleep(0.05)
                await asyncio.sleep(sizes.cut_after)
                run.stop.set()

            async def prober() -> None:
                while not run.stop.is_set():
                    status = await get_status(server.port, "/readyz")
                    now = time.monotonic()
                    readyz.append((now, status))
                    if "restored" in marks and status == 200 and "readyz_back" not in marks:
                        marks["readyz_back"] = now
                    await asyncio.sleep(0.1)

            tasks = [asyncio.create_task(controller()), asyncio.create_task(prober())]
            await drive(
                server.port,
                lambda i, n: kinds[(i + n) % 2](),
                sizes.connections,
                120,
                500_000,
                run=run,
            )
            await asyncio.gather(*tasks)
            return run

        try:
            run = asyncio.run(load())
        finally:
            stop(server)
        acked = acknowledged(run)
        stored = stored_feedback(direct)
    cut, restored = marks["cut"], marks["restored"]

    def during(o: Outcome) -> bool:
        # Sent and answered inside the cut: a request that straddles the restore may meet the
        # database back, and its 200 is right.
        return (
            o.sent_at is not None
            and cut <= o.sent_at
            and o.answered_at is not None
            and o.answered_at < restored
        )

    calls = [o for o in run.outcomes if o.kind == "pv-30"]
    feedback_cut = [o for o in run.outcomes if o.kind == "feedback" and during(o)]
    return {
        "workers": ctx.sizes.workers,
        "connections": sizes.connections,
        "cut_seconds": restored - cut,
        "requests": len(run.outcomes),
        "hook_calls": len(calls),
        "hook_calls_during_cut": sum(1 for o in calls if during(o)),
        "hook_call_statuses": run.statuses("pv-30"),
        "hook_call_5xx": _5xx(calls),
        "feedback_statuses": run.statuses("feedback"),
        "feedback_during_cut": len(feedback_cut),
        "feedback_during_cut_statuses": _status_counts(feedback_cut),
        # When they were sent and answered, from the cut (s): a 200 inside a cut needs explaining.
        "feedback_200_during_cut": [
            [round(o.sent_at - cut, 3), round((o.answered_at or 0) - cut, 3)]
            for o in feedback_cut
            if o.status == 200 and o.sent_at is not None
        ],
        "feedback_during_cut_503_retry_after": sum(
            1 for o in feedback_cut if o.status == 503 and o.retry_after
        ),
        "feedback_5xx_other_than_503": sum(
            1
            for o in run.outcomes
            if o.kind == "feedback" and o.status and o.status >= 500 and o.status != 503
        ),
        "errors": _errors(run.outcomes),
        "readyz_during_cut": _status_counts_raw([s for t, s in readyz if cut <= t < restored]),
        "readyz_back_seconds": marks["readyz_back"] - restored if "readyz_back" in marks else None,
        "feedback_back_seconds": (
            marks["feedback_back"] - restored if "feedback_back" in marks else None
        ),
        "acknowledged": len(acked),
        "lost": len(acked - stored),
    }


def _status_counts(outcomes: list[Outcome]) -> dict[str, int]:
    return _status_counts_raw([o.status for o in outcomes])


def _status_counts_raw(statuses: list[int | None]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for status in statuses:
        key = "no answer" if status is None else str(status)
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items()))


def _port(url: str) -> int:
    return normalise_url(url).port or 5432


def scenario_overload(ctx: Context) -> dict[str, Any]:
    server = ctx.start(
        ctx.sizes.workers,
        sqlite_url(ctx.work / "db-overload"),
        max_concurrent_calls=str(ctx.sizes.overload_limit),
    )
    try:
        call = hook_call(ctx, "pv-1000")
        run = asyncio.run(
            drive(
                server.port,
                lambda _i, _n: call,
                ctx.sizes.overload_connections,
                ctx.sizes.overload_seconds,
                1_000_000,
            )
        )
    finally:
        stop(server)
    accepted = [o.latency * 1000 for o in run.outcomes if o.status == 200 and o.latency]
    refused = [o for o in run.outcomes if o.status == 503]
    return {
        "workers": ctx.sizes.workers,
        "connections": ctx.sizes.overload_connections,
        "limit_per_worker": ctx.sizes.overload_limit,
        "seconds": ctx.sizes.overload_seconds,
        "body_bytes": len(call.body),
        "requests": len(run.outcomes),
        "statuses": run.statuses(),
        "ok": len(accepted),
        "refused_503": len(refused),
        "refused_without_retry_after": sum(1 for o in refused if not o.retry_after),
        "other": sum(1 for o in run.outcomes if o.status not in (200, 503)),
        "errors": _errors(run.outcomes),
        "p50_ms": percentile(accepted, 0.5),
        "p99_ms": percentile(accepted, 0.99),
        "refused_p99_ms": percentile(
            [o.latency * 1000 for o in refused if o.latency is not None], 0.99
        ),
    }


def scenario_auth(ctx: Context) -> dict[str, Any]:
    """Authentication on: valid, replayed, forged, expired and garbage JWTs on hook calls."""
    key = ec.generate_private_key(ec.SECP384R1())
    other = ec.generate_private_key(ec.SECP384R1())
    kid = f"bench-{ctx.canaries.run_id}"
    jwk = json.loads(ECAlgorithm.to_jwk(key.public_key()))
    jwks = ctx.work / "ehr.jwks"
    jwks.write_text(json.dumps({"keys": [{**jwk, "kid": kid, "alg": "ES384", "use": "sig"}]}))
    issuers = json.dumps({ISSUER: {"jwks_file": str(jwks)}})
    server = ctx.start(
        1,
        sqlite_url(ctx.work / "db-auth"),
        auth_issuers=issuers,
        public_base_url=PUBLIC_BASE_URL,
    )
    path = ctx.path("patient-view")

    def token(signer: Any = key, lifetime: int = 300) -> str:
        now = datetime.now(UTC)
        claims = {
            "iss": ISSUER,
            "sub": f"{CANARY}-sub-{ctx.canaries.run_id}",
            "aud": f"{PUBLIC_BASE_URL}{path}",
            "iat": now - timedelta(seconds=600 if lifetime < 0 else 0),
            "exp": now + timedelta(seconds=lifetime),
            "jti": f"{CANARY}-jti-{uuid.uuid4()}",
        }
        value = jwt.encode(claims, signer, algorithm="ES384", headers={"kid": kid})
        ctx.canaries.add("JWTs", value, server.log_path)
        return value

    n = ctx.sizes.auth_calls
    valid = [token() for _ in range(n)]
    kinds: list[tuple[str, str]] = [("valid", t) for t in valid]
    kinds += [("replayed", t) for t in valid]
    kinds += [("forged", token(other)) for _ in range(n)]
    kinds += [("expired", token(lifetime=-300)) for _ in range(n)]
    garbage = [
        f"{CANARY}{ctx.canaries.run_id}-not-a-jwt-{secrets.token_urlsafe(16)}" for _ in range(n)
    ]
    for value in garbage:
        ctx.canaries.add("JWTs", value, server.log_path)
    kinds += [("garbage", t) for t in garbage]
    body = ctx.bodies["pv-30"].payload
    planned = [
        Planned(kind, path, body, headers={"Authorization": f"Bearer {value}"})
        for kind, value in kinds
    ]
    try:
        run = asyncio.run(drive(server.port, lambda _i, k: planned[k], 1, 60, len(planned)))
    finally:
        stop(server)
    return {
        "requests": len(run.outcomes),
        "statuses": {kind: run.statuses(kind) for kind in dict.fromkeys(k for k, _ in kinds)},
        "5xx": _5xx(run.outcomes),
    }


# Report. -----------------------------------------------------------------------------------------


@dataclass
class Row:
    scenario: str
    figure: str
    measured: str
    expected: str = ""
    ok: bool | None = None  # None: a figure to read, not a pass/fail expectation


def _n(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _rss(rss: dict[str, Any]) -> str:
    return ", ".join(_n(v) for v in rss["workers_mb"])


def rows(results: dict[str, Any]) -> list[Row]:
    out: list[Row] = []
    f = results.get("fuzz")
    if f:
        target = results["sizes"]["fuzz_requests"]
        statuses = ", ".join(f"{k}: {v:,}" for k, v in f["statuses"].items())
        out.append(
            Row(
                "1 fuzz",
                f"requests ({f['operations']} operations, valid and invalid; {statuses})",
                f"{f['requests']:,}",
                f">= {target:,}",
                f["requests"] >= target,
            )
        )
        out.append(Row("1 fuzz", "5xx", f"{f['server_errors']}", "0", f["server_errors"] == 0))
        failures = "; ".join(f"{k}: {v}" for k, v in f["check_failures"].items()) or "none"
        out.append(
            Row(
                "1 fuzz",
                "requests failing a check (by check)",
                f"{f['failing_requests']} ({failures})",
                "0",
                f["failing_requests"] == 0,
            )
        )
        odd = f["odd_token_requests"]
        out.append(
            Row(
                "1 fuzz",
                "canary and odd tokens / patient ids / Authorization headers sent",
                f"{odd['requests']} ({', '.join(f'{k}: {v}' for k, v in odd['statuses'].items())})",
                "no 5xx",
                odd["5xx"] == 0,
            )
        )
    s = results.get("soak")
    if s:
        kinds = "; ".join(
            f"{k} {v['requests']:,} (p99 {_n(v['p99_ms'])} ms)" for k, v in s["by_kind"].items()
        )
        out.append(
            Row(
                "2 soak",
                f"requests, {s['connections']} connections, {s['seconds']:g} s, {s['workers']} workers ({kinds})",
                f"{s['requests']:,}",
            )
        )
        out.append(Row("2 soak", "5xx", str(s["5xx"]), "0", s["5xx"] == 0))
        bad = sum(v for k, v in s["statuses"].items() if k != "200")
        out.append(
            Row(
                "2 soak",
                "other non-200 answers or connection errors",
                f"{bad} {s['statuses'] if bad else ''}".strip(),
                "0",
                bad == 0,
            )
        )
        out.append(
            Row(
                "2 soak",
                "no-prefetch calls answered with a data-incomplete card",
                str(s["nopf_data_incomplete"]),
            )
        )
        out.append(
            Row(
                "2 soak",
                "RSS per worker, before -> after (MB)",
                f"{_rss(s['rss_before'])} -> {_rss(s['rss_after'])}",
            )
        )
    for key, label in (
        ("kill_sqlite", "3 kill -9, SQLite"),
        ("kill_postgres", "3 kill -9, PostgreSQL"),
    ):
        k = results.get(key)
        if k is None:
            continue
        if "skipped" in k:
            out.append(Row(label, "not run", k["skipped"], "", False))
            continue
        out.append(
            Row(
                f"{label} ({k['workers']} worker{'s' if k['workers'] > 1 else ''})",
                "items acknowledged / stored / lost",
                f"{k['acknowledged']:,} / {k['stored_after_kill']:,} / {k['lost']}",
                "lost 0",
                k["lost"] == 0,
            )
        )
        out.append(
            Row(
                label,
                "restart to ready; then the rest re-sent: stored of all items",
                f"{k['restart_ready_seconds']:.1f} s; {k['stored_in_the_end']:,} of {k['items']:,}",
                f"{k['items']:,}",
                k["stored_in_the_end"] == k["items"],
            )
        )
    t = results.get("sigterm")
    if t:
        out.append(
            Row(
                f"4 SIGTERM ({t['workers']} workers, {t['connections']} connections)",
                "requests answered (after the signal) / non-200",
                f"{t['answered']:,} ({t['answered_after_signal']}) / {t['non_200']}",
                "non-200 0",
                t["non_200"] == 0,
            )
        )
        out.append(
            Row(
                "4 SIGTERM",
                "accepted before the signal, not answered",
                str(t["unanswered_accepted"]),
                "0",
                t["unanswered_accepted"] == 0,
            )
        )
        out.append(
            Row(
                "4 SIGTERM",
                "feedback acknowledged, not stored / cards issued, not recorded",
                f"{t['acknowledged_not_stored']} of {t['acknowledged']:,} / {t['cards_not_recorded']} of {t['cards_issued']:,}",
                "0 / 0",
                t["acknowledged_not_stored"] == 0 and t["cards_not_recorded"] == 0,
            )
        )
        out.append(
            Row(
                "4 SIGTERM",
                "exit after the signal",
                f"{t['exit_seconds']:.1f} s (code {t['returncode']})",
                "< grace (10 s)",
                t["exit_seconds"] < 10,
            )
        )
    c = results.get("cut")
    if c:
        if "skipped" in c:
            out.append(Row("5 database cut", "not run", c["skipped"], "", False))
        else:
            out.append(
                Row(
                    f"5 database cut ({c['cut_seconds']:.1f} s, PostgreSQL, {c['workers']} workers)",
                    f"hook-call 5xx ({c['hook_calls']:,} calls, {c['hook_calls_during_cut']:,} during the cut)",
                    str(c["hook_call_5xx"]),
                    "0",
                    c["hook_call_5xx"] == 0,
                )
            )
            statuses = ", ".join(f"{k}: {v}" for k, v in c["feedback_during_cut_statuses"].items())
            ok_cut = (
                c["feedback_during_cut_503_retry_after"] == c["feedback_during_cut"]
                and c["feedback_during_cut"] > 0
            )
            out.append(
                Row(
                    "5 database cut",
                    "feedback during the cut: 503 with Retry-After / all",
                    f"{c['feedback_during_cut_503_retry_after']} / {c['feedback_during_cut']} ({statuses})",
                    "all",
                    ok_cut,
                )
            )
            out.append(
                Row(
                    "5 database cut",
                    "feedback 5xx other than 503 (whole run)",
                    str(c["feedback_5xx_other_than_503"]),
                    "0",
                    c["feedback_5xx_other_than_503"] == 0,
                )
            )
            recovered = (
                c["readyz_back_seconds"] is not None and c["feedback_back_seconds"] is not None
            )
            out.append(
                Row(
                    "5 database cut",
                    "after restore: /readyz 200 again / feedback stored again",
                    f"{_n(c['readyz_back_seconds'], 2)} s / {_n(c['feedback_back_seconds'], 2)} s",
                    "without restart",
                    recovered,
                )
            )
            out.append(
                Row(
                    "5 database cut",
                    "feedback acknowledged / lost",
                    f"{c['acknowledged']:,} / {c['lost']}",
                    "lost 0",
                    c["lost"] == 0,
                )
            )
    o = results.get("overload")
    if o:
        out.append(
            Row(
                f"6 overload ({o['connections']} connections, {o['seconds']:g} s, 1,000-resource bodies, {o['workers']} workers)",
                "200 / 503 (without Retry-After) / other",
                f"{o['ok']:,} / {o['refused_503']:,} ({o['refused_without_retry_after']}) / {o['other'] + sum(o['errors'].values())}",
                "503s with Retry-After; other 0",
                o["refused_without_retry_after"] == 0 and o["other"] == 0 and not o["errors"],
            )
        )
        out.append(
            Row(
                "6 overload",
                "p50 / p99 of the accepted (200) requests; p99 of a 503",
                f"{_n(o['p50_ms'])} / {_n(o['p99_ms'])} ms; {_n(o['refused_p99_ms'])} ms",
            )
        )
    a = results.get("auth")
    if a:
        statuses = "; ".join(
            f"{k} {', '.join(f'{s}: {n}' for s, n in v.items())}" for k, v in a["statuses"].items()
        )
        expected_ok = a["statuses"].get("valid", {}) == {"200": results["sizes"]["auth_calls"]}
        rejected = all(set(v) == {"401"} for k, v in a["statuses"].items() if k != "valid")
        out.append(
            Row(
                "7 secrets",
                f"authentication on: JWTs by kind ({statuses})",
                f"{a['requests']}",
                "valid 200, others 401",
                expected_ok and rejected,
            )
        )
    scan = results.get("secrets")
    if scan:
        kinds = "; ".join(f"{k}: {v}" for k, v in scan["by_kind"].items())
        out.append(
            Row(
                "7 secrets",
                f"occurrences in {scan['log_lines']:,} log lines of {scan['log_files']} service processes, {scan['canary_values']:,} canary values ({kinds})",
                str(scan["occurrences"]),
                "0",
                scan["occurrences"] == 0,
            )
        )
    for name, error in results.get("errors", {}).items():
        out.append(Row(name, "scenario failed", error.splitlines()[0][:200], "", False))
    return out


def render(results: dict[str, Any], table: list[Row]) -> str:
    m = results["machine"]
    lines = [
        "# Reliability benchmark",
        "",
        f"{results['date']}; {m['nproc']} cores ({m['cpu']}), Python {m['python']}; commit "
        f"{m['commit'] or '-'}; CPUs {m['cpu_busy_at_start']:.0%} busy just before the start. "
        f"Machine speed: a 5-million-step Python loop took {m['python_loop_seconds_at_start']:.2f} s "
        f"at the start, {m['python_loop_seconds_at_end']:.2f} s at the end (a shared machine's "
        f"speed varies: latencies are noisy). {results['elapsed_seconds']:.0f} s in all"
        f"{' (--quick: tiny counts, figures mean nothing)' if results['quick'] else ''}.",
        "",
        "| scenario | figure | measured | expected | |",
        "|---|---|---|---|---|",
    ]
    for row in table:
        mark = "" if row.ok is None else ("ok" if row.ok else "**NO**")
        lines.append(
            f"| {row.scenario} | {row.figure} | {row.measured} | {row.expected} | {mark} |"
        )
    examples = (results.get("fuzz") or {}).get("examples") or []
    if examples:
        lines += ["", "Fuzzing: requests that failed a check (first ones, as curl commands):", ""]
        lines += [f"    {e[:1500]}".replace("\n", "\n    ") for e in examples]
    return "\n".join(lines) + "\n"


# Main. -------------------------------------------------------------------------------------------


def run_all(ctx: Context, results: dict[str, Any], only: set[str] | None) -> None:
    def want(name: str) -> bool:
        return only is None or name in only

    def attempt(name: str, work: Callable[[], dict[str, Any]]) -> None:
        if not want(name):
            return
        started = time.monotonic()
        log(f"{name} ...")
        try:
            results[name] = work()
        except Exception as error:  # report the scenario as failed; the others still run
            results.setdefault("errors", {})[name] = f"{type(error).__name__}: {error}"
            log(f"{name} failed: {type(error).__name__}: {error}")
        log(f"{name}: {time.monotonic() - started:.0f} s")

    sizes = ctx.sizes
    attempt("fuzz", lambda: scenario_fuzz(ctx))
    attempt("soak", lambda: scenario_soak(ctx))
    attempt(
        "kill_sqlite",
        lambda: scenario_kill9(
            ctx, "sqlite", sqlite_url(ctx.work / "db-kill"), 1, sizes.kill_sqlite_items
        ),
    )
    postgres = ctx.postgres
    if postgres is None:
        skipped = {"skipped": "no PostgreSQL server (set RPL_CDS_TEST_POSTGRES_URL)"}
        if want("kill_postgres"):
            results["kill_postgres"] = skipped
        if want("cut"):
            results["cut"] = skipped
    else:

        def kill_postgres() -> dict[str, Any]:
            with postgres_database(postgres) as url:
                return scenario_kill9(
                    ctx, "postgres", url, sizes.workers, sizes.kill_postgres_items
                )

        attempt("kill_postgres", kill_postgres)
    attempt("sigterm", lambda: scenario_sigterm(ctx))
    if postgres is not None:
        attempt("cut", lambda: scenario_cut(ctx, postgres))
    attempt("overload", lambda: scenario_overload(ctx))
    attempt("auth", lambda: scenario_auth(ctx))
    results["secrets"] = scan_logs(ctx.logs, ctx.canaries)


SCENARIOS = ("fuzz", "soak", "kill_sqlite", "kill_postgres", "sigterm", "cut", "overload", "auth")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.reliability", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny counts: a smoke run for tests")
    parser.add_argument(
        "--only", action="append", choices=SCENARIOS, help="run only these (repeatable)"
    )
    parser.add_argument("--output", type=Path, default=RESULTS, help="default: bench/results")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    started = time.perf_counter()
    results: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "quick": args.quick,
        "sizes": sizes.__dict__,
        "machine": machine(sample_cpu=not args.quick),
    }
    server_url = os.environ.get(POSTGRES_URL_ENV) or DEFAULT_POSTGRES_URL
    with tempfile.TemporaryDirectory(prefix="rpl-cds-reliability-") as tmp:
        ctx = Context(sizes, Path(tmp), date.today(), Canaries(), [])
        try:
            if asyncio.run(_postgres_reachable(server_url)):
                ctx.postgres = server_url
            # Discovery from the service itself (loading the knowledge here would cost seconds).
            first = ctx.start(1, sqlite_url(ctx.work / "db-discovery"))
            try:
                ctx.services = call(first, "GET", "/cds-services")["services"]
            finally:
                stop(first)
            build(ctx)
            run_all(ctx, results, set(args.only) if args.only else None)
        finally:
            for server in ctx.started:
                stop(server)  # already stopped ones are skipped; this catches any left over
    results["elapsed_seconds"] = time.perf_counter() - started
    results["machine"]["python_loop_seconds_at_end"] = python_speed()
    table = rows(results)
    results["table"] = [row.__dict__ for row in table]
    markdown = render(results, table)
    name = "reliability-quick" if args.quick else "reliability"
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / f"{name}.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    (args.output / f"{name}.md").write_text(markdown)
    print(markdown)
    log(f"wrote {args.output / name}.md and .json in {results['elapsed_seconds']:.0f} s")
    return 0 if all(row.ok is not False for row in table) else 1


if __name__ == "__main__":
    sys.exit(main())
