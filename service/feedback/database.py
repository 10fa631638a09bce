"""The async engine for the feedback database: SQLite (WAL) by default, PostgreSQL via asyncpg."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

# How long an SQLite writer waits for another writer (another task or worker process) before it
# gives up with "database is locked", unless a statement timeout says otherwise; feedback batches
# are small, so waits are short.
SQLITE_BUSY_TIMEOUT_MS = 5000
# asyncpg waits 60 s for an unreachable server by default; the command line should not.
POSTGRES_CONNECT_TIMEOUT_SECONDS = 10.0

SUPPORTED_DRIVERS = ("sqlite+aiosqlite", "postgresql+asyncpg")


def normalise_url(database_url: str) -> URL:
    """The URL with its async driver filled in: operators write `postgresql://…` or `sqlite:///…`
    and should not have to know which driver the service uses."""
    url = make_url(database_url)
    if url.drivername in ("postgresql", "postgres"):
        url = url.set(drivername="postgresql+asyncpg")
    elif url.drivername == "sqlite":
        url = url.set(drivername="sqlite+aiosqlite")
    if url.drivername not in SUPPORTED_DRIVERS:
        raise ValueError(
            f"unsupported database URL scheme {url.drivername!r}: "
            f"use one of {', '.join(SUPPORTED_DRIVERS)}"
        )
    return url


def create_engine(
    database_url: str,
    *,
    connect_timeout: float = POSTGRES_CONNECT_TIMEOUT_SECONDS,
    statement_timeout: float | None = None,
) -> AsyncEngine:
    """`connect_timeout`: how long to wait for PostgreSQL to accept a connection.
    `statement_timeout`: how long one statement may wait for an answer (PostgreSQL), for a free
    pooled connection, and for another SQLite writer to finish; None waits as the drivers do
    (unbounded for a silent PostgreSQL server: right for migrations, wrong for requests)."""
    url = normalise_url(database_url)
    pool: dict[str, Any] = {} if statement_timeout is None else {"pool_timeout": statement_timeout}
    if url.get_backend_name() == "sqlite":
        _create_parent_dir(url)
        engine = create_async_engine(url, **pool)
        busy_ms = SQLITE_BUSY_TIMEOUT_MS if statement_timeout is None else statement_timeout * 1000
        event.listen(engine.sync_engine, "connect", _sqlite_configurer(round(busy_ms)))
        return engine
    connect_args: dict[str, Any] = {"timeout": connect_timeout}
    if statement_timeout is not None:
        # Client-side: a server-side statement_timeout cannot end a wait on a dead network.
        connect_args["command_timeout"] = statement_timeout
    return create_async_engine(
        url,
        # A PostgreSQL restart or failover leaves dead connections in the pool; check on checkout.
        pool_pre_ping=True,
        connect_args=connect_args,
        **pool,
    )


def _create_parent_dir(url: URL) -> None:
    database = url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)


def _sqlite_configurer(busy_timeout_ms: int) -> Callable[[Any, Any], None]:
    # WAL lets readers (analytics) run while a worker writes; the busy timeout makes concurrent
    # writers from several tasks or processes wait for each other instead of failing at once.
    # busy_timeout is per connection, hence a connect hook rather than a one-off setting.
    def configure(dbapi_connection: Any, _connection_record: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA busy_timeout={busy_timeout_ms:d}")
        finally:
            cursor.close()

    return configure


def run_with_engine(database_url: str, work: Callable[[AsyncEngine], Awaitable[None]]) -> None:
    """`work` on an engine of its own, in an event loop of its own (for the command line)."""

    async def run() -> None:
        engine = create_engine(database_url)
        try:
            await work(engine)
        finally:
            await engine.dispose()

    asyncio.run(run())
