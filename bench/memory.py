"""Where a worker's resident memory goes: RSS after each stage of a serving process's start, in a
fresh interpreter, and after hook calls of every benchmark body. Prints figures; asserts nothing.

The stages import the service's dependencies in groups (each group's figure is what it adds to
those before it: shared libraries count where they are first loaded), then the service's own
modules, then build the app and run its lifespan (knowledge loaded, database opened) as a worker
does, then answer calls in process. The floor app (bench/floor_app.py) has the first group only.

    .venv/bin/python -m bench.memory [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from datetime import date
from pathlib import Path

# (label, modules): what `rpl-cds serve` loads with authentication off (as the load benchmark runs
# it), in an order that puts the floor's stack first.
GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "FastAPI, Starlette, uvicorn (uvloop, httptools), orjson: the floor app's stack",
        ("fastapi", "uvicorn", "uvloop", "uvicorn.protocols.http.httptools_impl", "orjson"),
    ),
    ("pydantic-settings", ("pydantic_settings",)),
    ("httpx (the FHIR client; ssl, certifi)", ("httpx",)),
    (
        # asyncpg (about 3 MB more) loads only where the store is PostgreSQL.
        "SQLAlchemy (core, ORM, asyncio), aiosqlite: the feedback store on SQLite",
        ("sqlalchemy.ext.asyncio", "aiosqlite"),
    ),
    ("prometheus-client, python-json-logger", ("prometheus_client", "pythonjsonlogger.json")),
    ("fhirpathpy, antlr4 (FHIRPath)", ("fhirpathpy",)),
    ("PyYAML", ("yaml",)),
    ("service.app: the service's own modules and the rest of their imports", ("service.app",)),
)

# Imported by the authenticator only when RPL_CDS_AUTH_ISSUERS is set.
AUTHENTICATION = ("jwt", "jwt.algorithms")


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def stages(data_dir: Path, report: Callable[[str, float], None]) -> None:
    report("Python started (site, no service imports)", rss_mb())
    for label, modules in GROUPS:
        for module in modules:
            importlib.import_module(module)
        report(label, rss_mb())
    os.environ["RPL_CDS_DATA_DIR"] = str(data_dir)
    os.environ.setdefault("RPL_CDS_LOG_LEVEL", "WARNING")
    asyncio.run(_serve_in_process(report))


async def _serve_in_process(report: Callable[[str, float], None]) -> None:
    from bench.bodies import bodies_for
    from bench.call_cpu import one_call
    from service.app import create_app
    from service.ops.serving_process import tune_for_serving
    from service.settings import Settings

    app = create_app(Settings())
    async with app.router.lifespan_context(app):
        tune_for_serving()
        report("app built and its lifespan run (knowledge loaded, database opened)", rss_mb())
        catalogue = app.state.runtime.catalogue
        bodies = bodies_for(catalogue.discovery()["services"], date.today())
        report("benchmark bodies built (the benchmark's own data, not the service's)", rss_mb())
        for body in bodies:
            call = one_call(catalogue, body)
            for _ in range(20):
                call()
            report(f"after 20 in-process calls of {body.name}", rss_mb())
    for module in AUTHENTICATION:
        importlib.import_module(module)
    report("PyJWT, cryptography: loaded too where client authentication is on", rss_mb())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data-dir", type=Path, help="the database's directory (default: a new one)"
    )
    parser.add_argument("--first-start-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.first_start_only:
        asyncio.run(_start_and_stop())
        return
    with tempfile.TemporaryDirectory(prefix="rpl-bench-memory-") as scratch:
        data_dir = args.data_dir or Path(scratch)
        _first_start(data_dir)
        previous = [0.0]
        print("| stage | RSS (MB) | added (MB) |")
        print("|---|---|---|")

        def report(label: str, mb: float) -> None:
            added = mb - previous[0] if previous[0] else mb
            previous[0] = mb
            print(f"| {label} | {mb:.1f} | {added:+.1f} |", flush=True)

        stages(data_dir, report)


def _first_start(data_dir: Path) -> None:
    """A worker's first start in its own process (database created, knowledge validated and
    cached), so that the measured start is a restart, as the load benchmark measures. On a first
    start a worker also keeps Alembic and fhir.resources' validation models: about 14 MB more."""
    env = {**os.environ, "RPL_CDS_DATA_DIR": str(data_dir), "RPL_CDS_LOG_LEVEL": "WARNING"}
    command = [sys.executable, "-m", "bench.memory", "--first-start-only"]
    subprocess.run(command, env=env, check=True, capture_output=True)  # noqa: S603 (ours)


async def _start_and_stop() -> None:
    from service.app import create_app
    from service.settings import Settings

    app = create_app(Settings())
    async with app.router.lifespan_context(app):
        pass


if __name__ == "__main__":
    main()
