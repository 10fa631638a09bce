"""`rpl-cds`: serve the CDS Hooks service, validate knowledge directories, or render them for
clinical review."""

from __future__ import annotations

import argparse
import asyncio
import difflib
import os
import shutil
import sys
from collections.abc import Sequence
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import ValidationError

from service.cdshooks.catalogue import Catalogue, load_catalogue
from service.engine import KnowledgeCache, KnowledgeError, ParameterValueProblem
from service.settings import Settings, bundled_knowledge_dirs, data_root

if TYPE_CHECKING:
    from fastapi import FastAPI

    from service.authoring.synthetic import ScenarioSpec


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rpl-cds", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="start the service (uvicorn)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--workers", type=int, default=int(os.environ.get("RPL_CDS_WORKERS", "1")))
    commands.add_parser(
        "migrate",
        help="bring the database schema to the newest revision and exit (run once per release, "
        "e.g. as a Kubernetes Job, with RPL_CDS_AUTO_MIGRATE=false on the replicas)",
    )
    validate = commands.add_parser("validate", help="check knowledge artifacts and report problems")
    validate.add_argument("dirs", nargs="*", type=Path, help="default: the configured directories")
    load = commands.add_parser(
        "load-scenarios", help="load the synthetic scenario patients into a FHIR R4 server"
    )
    load.add_argument("--fhir-server", required=True, help="the server's base URL")
    load.add_argument(
        "--token",
        help="bearer token for the server (if it needs one); write --token=T if T starts with '-'",
    )
    load.add_argument("--scenarios", type=Path, help="a description file or directory")
    load.add_argument(
        "--today",
        type=date.fromisoformat,
        help="the date relative dates (today-30d) count from, YYYY-MM-DD (default: today)",
    )
    load.add_argument(
        "--dialect",
        help="write each patient as a record of this dialect of the scenarios' dialects.json "
        "(e.g. us, intl; default: as described)",
    )
    render = commands.add_parser(
        "render-clinical-logic",
        help="write the clinical logic as Markdown for review (docs/clinical-logic.md)",
    )
    render.add_argument("--output", type=Path, help="default: docs/clinical-logic.md")
    render.add_argument(
        "--check", action="store_true", help="exit 1 if the file differs from a fresh render"
    )
    render.add_argument("dirs", nargs="*", type=Path, help="default: the bundled knowledge")
    args = parser.parse_args(argv)
    if args.command == "render-clinical-logic":
        return _render_clinical_logic(args.dirs, args.output, check=args.check)
    if args.command == "load-scenarios":
        scenarios = args.scenarios or data_root() / "scenarios"
        today = args.today or date.today()
        specs = _scenario_specs(scenarios, args.dialect)
        if specs is None:
            return 1
        return asyncio.run(
            _load_scenarios(args.fhir_server, args.token, specs, today, args.dialect)
        )
    try:
        settings = Settings()
    except ValidationError as error:
        print("rpl-cds: invalid settings:", *_setting_problems(error), sep="\n  ", file=sys.stderr)
        return 2
    if args.command == "validate":
        return _validate(args.dirs or settings.all_knowledge_dirs, settings)
    if args.command == "migrate":
        return _migrate(settings)
    return _serve(settings, args.host, args.port, args.workers)


def _setting_problems(error: ValidationError) -> list[str]:
    """Each problem as `RPL_CDS_<NAME>: what is wrong`, without the value given: pydantic's own
    text repeats the input, and settings hold the database URL's password and issuer keys."""
    problems = []
    for detail in error.errors(include_input=False, include_url=False):
        name = "_".join(str(part) for part in detail["loc"]).upper()
        where = f"RPL_CDS_{name}: " if name else ""
        problems.append(f"{where}{detail['msg']}")
    return problems


def _scenario_specs(path: Path, dialect: str | None) -> list[ScenarioSpec] | None:
    """The scenarios of `path`, written in `dialect` when one is named; None (the problem
    printed) when they or the dialect table are not usable."""
    from service.authoring.synthetic import ScenarioError, load_dialects, load_scenarios

    try:
        specs = load_scenarios(path)
        if dialect is None:
            return specs
        dialects = load_dialects(path if path.is_dir() else path.parent)
    except (ScenarioError, OSError) as error:
        print(f"rpl-cds: invalid scenarios: {error}", file=sys.stderr)
        return None
    if dialect not in dialects:
        print(f"rpl-cds: unknown dialect {dialect!r}; known: {sorted(dialects)}", file=sys.stderr)
        return None
    return [spec.in_dialect(dialects[dialect]) for spec in specs]


async def _load_scenarios(
    fhir_server: str,
    token: str | None,
    specs: Sequence[ScenarioSpec],
    today: date,
    dialect: str | None,
) -> int:
    """One transaction of PUTs, so loading twice leaves one copy of each patient. Relative dates
    are resolved against `today` now: the records are as of the day they are loaded. With a
    dialect, each patient is that dialect's record, under the same ids (it replaces the other)."""
    import httpx

    from service.fhir.load import FhirLoadError, load_bundle, to_transaction

    bundle = to_transaction([r for spec in specs for r in spec.resources(today)])
    async with httpx.AsyncClient(timeout=60) as http:
        try:
            await load_bundle(fhir_server, bundle, token, http)
        except FhirLoadError as error:
            print(f"rpl-cds: loading failed: {error}", file=sys.stderr)
            return 1
    for spec in specs:
        print(f"{spec.id}: {spec.description}")
    written = f" as {dialect} records" if dialect else ""
    print(f"{len(specs)} scenario patients loaded into {fhir_server}{written}")
    return 0


def _validate(dirs: Sequence[Path], settings: Settings) -> int:
    catalogue = _load_reporting(dirs, settings, None)
    if isinstance(catalogue, int):
        return catalogue
    for service in catalogue.services.values():
        print(f"ok: service {service.id} ({service.hook}) from {service.plan.file}")
    print(f"{len(catalogue.services)} service(s), no problems")
    return 0


def _load_reporting(
    dirs: Sequence[Path], settings: Settings, cache: KnowledgeCache | None
) -> Catalogue | int:
    """The catalogue, or the exit code after printing every problem found: 2 when the only
    problems are values the settings gave the knowledge's parameters (named by the setting to
    fix, as other invalid settings are), else 1."""
    try:
        return load_catalogue(dirs, settings.knowledge_parameters, cache)
    except KnowledgeError as error:
        problems = error.problems
    if all(isinstance(problem, ParameterValueProblem) for problem in problems):
        lines = {
            f"{settings.parameter_setting(problem.parameter)}: {problem.reason}"
            for problem in problems
            if isinstance(problem, ParameterValueProblem)
        }
        print("rpl-cds: invalid settings:", *sorted(lines), sep="\n  ", file=sys.stderr)
        return 2
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    print(f"{len(problems)} problem(s) found", file=sys.stderr)
    return 1


def _render_clinical_logic(dirs: Sequence[Path], output: Path | None, *, check: bool) -> int:
    """Render from the given directories (default: the bundled knowledge, so the committed file
    does not depend on a deployment's settings); write, or with `check` compare."""
    from service.authoring.clinical_doc import COMMAND, default_output, render

    root = data_root()
    target = output or default_output()
    shown = _shown(target, root)
    try:
        text = render(list(dirs) or bundled_knowledge_dirs(), root=root)
    except KnowledgeError as error:
        for problem in error.problems:
            print(f"error: {problem}", file=sys.stderr)
        print(f"rpl-cds: the knowledge does not load; {shown} was not rendered", file=sys.stderr)
        return 1
    if not check:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8", newline="\n")
        print(f"wrote {shown}")
        return 0
    current = target.read_text(encoding="utf-8") if target.is_file() else None
    if current == text:
        print(f"ok: {shown} is up to date")
        return 0
    command = " ".join(
        [COMMAND]
        + ([f"--output {shown}"] if output else [])
        + [_shown(directory, root) for directory in dirs]
    )
    state = "does not exist" if current is None else "is out of date with the knowledge"
    print(f"rpl-cds: {shown} {state}; run `{command}` to regenerate it", file=sys.stderr)
    if current is not None:
        diff = list(
            difflib.unified_diff(
                current.splitlines(), text.splitlines(), "committed", "rendered", lineterm=""
            )
        )
        print("\n".join(diff[:40] + (["..."] if len(diff) > 40 else [])), file=sys.stderr)
    return 1


def _shown(path: Path, root: Path) -> str:
    resolved = path.resolve()
    return resolved.relative_to(root).as_posix() if resolved.is_relative_to(root) else str(path)


def _migrate(settings: Settings) -> int:
    from service.feedback.revision import migrate_database
    from service.ops.logging import configure_logging

    configure_logging(settings.log_level)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    migrate_database(settings.resolved_database_url)
    return 0


def _serve(settings: Settings, host: str, port: int, workers: int) -> int:
    import uvicorn
    from uvicorn.config import STARTUP_FAILURE

    from service.feedback.revision import migrate_database
    from service.ops.graceful_shutdown import DrainingHttpToolsProtocol, serve
    from service.ops.logging import configure_logging, logging_config

    configure_logging(settings.log_level)
    # Fail here, with the full report, rather than once per worker; the workers then find the
    # knowledge cached.
    cache = KnowledgeCache.open(settings.cache_dir)
    catalogue = _load_reporting(settings.all_knowledge_dirs, settings, cache)
    if isinstance(catalogue, int):
        return catalogue
    cache.save()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    if workers > 1:
        _share_metrics(settings.data_dir / "metrics")
    if settings.auto_migrate:
        migrate_database(settings.resolved_database_url)
        # Migrated once here, so that workers starting together do not race to migrate.
        os.environ["RPL_CDS_AUTO_MIGRATE"] = "false"
        settings = settings.model_copy(update={"auto_migrate": False})
    # One worker runs in this process: it serves the catalogue just loaded. Several are spawned
    # processes that build their own app (from the cache); this process then needs no app.
    app: FastAPI | str = "service.app:create_worker_app"
    if workers == 1:
        from service.app import create_app, serving

        app = serving(create_app(settings, catalogue), settings)
    config = uvicorn.Config(
        app,
        factory=workers > 1,
        host=host,
        port=port,
        workers=workers,
        http=DrainingHttpToolsProtocol,
        timeout_graceful_shutdown=settings.shutdown_grace_seconds,
        log_config=logging_config(settings.log_level),
        access_log=False,
        proxy_headers=True,
    )
    return 0 if serve(config) else STARTUP_FAILURE


def _share_metrics(directory: Path) -> None:
    """Several workers: one metrics directory, emptied so that counts start from this start."""
    from service.ops.metrics import MULTIPROCESS_DIR_ENV

    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    os.environ[MULTIPROCESS_DIR_ENV] = str(directory.resolve())


if __name__ == "__main__":
    sys.exit(main())
