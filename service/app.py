"""The FastAPI application: `create_app(settings)` builds one; `rpl-cds serve` serves it, tuned
with `serving`, in its own process or through `create_worker_app` in each worker process."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import Response
from sqlalchemy.exc import DBAPIError

from service.cdshooks.catalogue import Catalogue, load_catalogue
from service.cdshooks.contract import served_contract
from service.cdshooks.routes import admin as admin_router
from service.cdshooks.routes import router as cds_router
from service.cdshooks.suppression import Suppression, suppressing_reasons
from service.engine import KnowledgeCache
from service.errors import UnexpectedErrors, install_error_handlers, outcome_response
from service.feedback.issued_writer import IssuedCardWriter
from service.feedback.outage import RETRY_AFTER_SECONDS, DatabaseUnavailable, outage_reason
from service.feedback.store import FeedbackStore
from service.fhir.cookies import cookieless_jar
from service.fhir.egress import CheckedBackend, EgressPolicy, checked_transport
from service.fhir.fetch import FhirFetcher
from service.fhirops.routes import router as fhirops_router
from service.ops.concurrency_limit import ConcurrencyLimit
from service.ops.metrics import Metrics
from service.ops.middleware import CallObserver
from service.ops.routes import OPERATIONS_PATHS
from service.ops.routes import router as ops_router
from service.ops.serving_process import tune_for_serving
from service.ops.timing import TotalTiming
from service.runtime import Runtime
from service.settings import Settings, data_root

log = logging.getLogger("rpl_cds")

# Per outbound client (the operator's endpoints; the FHIR servers calls name).
_HTTP_LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=20)


def create_app(
    settings: Settings | None = None,
    catalogue: Catalogue | None = None,
    *,
    clock: Callable[[], datetime] | None = None,
) -> FastAPI:
    """`catalogue`: knowledge already loaded from `settings`' directories with their parameter
    values, served as it is. `clock`: the time repeat suppression counts its days by (tests move
    it)."""
    settings = settings or Settings()
    if catalogue is not None:
        _check_compiled_for(catalogue, settings)
    metrics = Metrics()
    # httpx logs every request URL at INFO, and a FHIR query URL carries the patient id.
    for chatty in ("httpx", "httpcore"):
        logging.getLogger(chatty).setLevel(logging.WARNING)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        served = catalogue if catalogue is not None else _load_catalogue(settings)
        store = await FeedbackStore.open(
            settings.resolved_database_url,
            migrate=settings.auto_migrate,
            connect_timeout=settings.database_connect_timeout_seconds,
            statement_timeout=settings.database_statement_timeout_seconds,
        )
        # For the operator's own endpoints (issuers' JWKS): not limited to the FHIR hosts.
        http = httpx.AsyncClient(
            timeout=httpx.Timeout(settings.fhir_time_budget_seconds),
            limits=_HTTP_LIMITS,
            follow_redirects=False,
            cookies=cookieless_jar(),
        )
        policy = EgressPolicy.from_entries(settings.fhir_allowed_hosts, settings.fhir_allow_http)
        # For the servers that calls name: only the hosts and addresses the policy allows.
        fhir_http = httpx.AsyncClient(
            transport=checked_transport(CheckedBackend(policy), _HTTP_LIMITS),
            timeout=httpx.Timeout(settings.fhir_time_budget_seconds),
            follow_redirects=False,
            trust_env=False,
            cookies=cookieless_jar(),
        )
        authenticator = None
        if settings.auth_enabled:
            # Imported here: PyJWT and cryptography cost about 9 MB a worker when auth is off.
            from service.auth.authenticator import Authenticator

            authenticator = Authenticator(settings, http, store)
        else:
            log.warning(
                "client authentication is OFF: any caller can use this service. "
                "Set RPL_CDS_AUTH_ISSUERS to require signed JWTs from trusted EHRs."
            )
        fetcher = FhirFetcher(fhir_http, settings, metrics, policy)
        issued = IssuedCardWriter(store, metrics.issued_dropped, metrics.issued_pending)
        suppression = _suppression(settings, store, served, clock)
        app.state.runtime = Runtime(
            settings, served, store, issued, http, metrics, authenticator, fetcher, suppression
        )
        log.info(
            "ready",
            extra={"services": sorted(served.services), "parameters": served.parameters()},
        )
        try:
            yield
        finally:
            await issued.close()
            await fhir_http.aclose()
            await http.aclose()
            await store.close()

    app = FastAPI(
        title="RPL CDS Hooks service",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json",
    )

    def openapi() -> dict[str, Any]:
        # Built on first use (most workers are never asked for it), after the lifespan loaded
        # the knowledge whose services it lists.
        if app.openapi_schema is None:
            runtime: Runtime = app.state.runtime
            services = runtime.catalogue.discovery()["services"]
            app.openapi_schema = served_contract(_contract(), services)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    install_error_handlers(app)
    # The store raises DatabaseUnavailable; the driver's own errors are caught too, for any
    # database work outside the store's methods (asyncpg reports a refused connection as a plain
    # ConnectionError, not wrapped by SQLAlchemy).
    for outage in (DatabaseUnavailable, DBAPIError, ConnectionError):
        app.add_exception_handler(outage, _database_unavailable)
    app.include_router(cds_router)
    app.include_router(admin_router)
    app.include_router(fhirops_router)
    app.include_router(ops_router)
    # Added innermost first. Both answer inside CORS, so that a browser can read a 500 or a 503;
    # the observer outside everything counts and logs every answer, refusals included.
    app.add_middleware(UnexpectedErrors)
    # Health checks and scrapes are never refused.
    app.add_middleware(
        ConcurrencyLimit,
        limit=settings.max_concurrent_calls,
        exempt_paths=OPERATIONS_PATHS,
        rejected=metrics.rejected,
    )
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type"],
            max_age=600,
        )
    app.add_middleware(CallObserver, metrics=metrics)
    if settings.server_timing:
        # Outermost, so that its `total` holds everything the service does for a request.
        app.add_middleware(TotalTiming)
    return app


def _suppression(
    settings: Settings,
    store: FeedbackStore,
    catalogue: Catalogue,
    clock: Callable[[], datetime] | None,
) -> Suppression:
    reasons = suppressing_reasons(catalogue.knowledge)
    suppression = Suppression(settings, store, reasons, **({"clock": clock} if clock else {}))
    services = sorted(s.id for s in catalogue.services.values() if s.suppresses_repeats)
    if suppression.active:
        log.info(
            "repeat suppression on",
            extra={"days": settings.suppression_days, "suppressing": services},
        )
    elif not settings.suppression_enabled:
        log.info("repeat suppression off (RPL_CDS_SUPPRESSION_ENABLED=false)")
    elif settings.patient_key_secret is None:
        log.warning(
            "repeat suppression is OFF: RPL_CDS_PATIENT_KEY_SECRET is not set, so the service "
            "cannot recognise a patient again; dealt-with cards show at every chart opening"
        )
    else:
        log.warning("repeat suppression is OFF: no loaded override reason suppresses repeats")
    return suppression


def create_worker_app() -> FastAPI:
    """uvicorn's factory in each worker process of `rpl-cds serve --workers N`."""
    settings = Settings()
    return serving(create_app(settings, _load_catalogue(settings)), settings)


def serving(app: FastAPI, settings: Settings) -> FastAPI:
    """`app`, with this process tuned to serve it until it exits."""
    tune_for_serving(settings.gc_young_threshold)
    return app


def _check_compiled_for(catalogue: Catalogue, settings: Settings) -> None:
    """Parameters (the guideline profile among them) are compiled into the plans: a catalogue
    loaded with other values would serve another profile than the settings say, silently."""
    compiled = catalogue.parameters()
    differing = sorted(
        name
        for name, value in settings.knowledge_parameters.items()
        if name in compiled and compiled[name] != value
    )
    if differing:
        raise ValueError(
            f"the catalogue was loaded with other values of {differing} than the settings give; "
            "load it with settings.knowledge_parameters"
        )


def _load_catalogue(settings: Settings) -> Catalogue:
    cache = KnowledgeCache.open(settings.cache_dir)
    catalogue = load_catalogue(settings.all_knowledge_dirs, settings.knowledge_parameters, cache)
    cache.save()
    return catalogue


async def _database_unavailable(request: Request, exc: Exception) -> Response:
    # An outage of the database (feedback store, replay cache) is the service's problem, not the
    # client's: 503 with Retry-After tells the EHR to try again, where a 401 or 500 would mislead.
    # Nothing was stored, so a retry loses and duplicates nothing (feedback is idempotent).
    reason = outage_reason(exc) or "database error"
    log.error(
        "database unavailable",
        extra={"path": request.url.path, "reason": reason, "error": type(exc).__name__},
    )
    return outcome_response(
        503,
        f"the service's database is unavailable ({reason}); try again in {RETRY_AFTER_SECONDS} s",
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


def _contract() -> dict[str, Any]:
    """The served OpenAPI document is the hand-written contract, so clients see one truth."""
    import yaml

    text = (data_root() / "openapi.yaml").read_text(encoding="utf-8")
    # libyaml's loader where PyYAML was built with it: ten times faster on this 100 kB file.
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    document: dict[str, Any] = yaml.load(text, Loader=loader)  # noqa: S506 (a safe loader)
    return document
