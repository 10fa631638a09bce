"""Real databases for tests: an SQLite file, or a throwaway PostgreSQL database per test session.

PostgreSQL is found through RPL_CDS_TEST_POSTGRES_URL (default: the local server). When it is not
reachable the PostgreSQL tests are skipped, unless RPL_CDS_REQUIRE_POSTGRES=1 (CI), where a
missing server must fail the run instead of silently shrinking it.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, NoReturn

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from service.feedback.database import normalise_url
from service.feedback.tables import metadata

POSTGRES_URL_ENV = "RPL_CDS_TEST_POSTGRES_URL"
REQUIRE_POSTGRES_ENV = "RPL_CDS_REQUIRE_POSTGRES"
DEFAULT_POSTGRES_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
TEST_DATABASE_PREFIX = "rpl_cds_test_"
_CONNECT_TIMEOUT_SECONDS = 5.0

# For `@pytest.mark.parametrize(..., BACKENDS)` or `@pytest.fixture(params=BACKENDS)`.
BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
]


def sqlite_url(directory: Path, name: str = "rpl-cds.db") -> str:
    return f"sqlite+aiosqlite:///{directory / name}"


def postgres_server_url() -> str:
    return os.environ.get(POSTGRES_URL_ENV) or DEFAULT_POSTGRES_URL


def postgres_unavailable(server_url: str, error: BaseException) -> NoReturn:
    shown = make_url(server_url).render_as_string(hide_password=True)
    message = (
        f"PostgreSQL not reachable at {shown} ({type(error).__name__}: {error}): "
        f"start it or set {POSTGRES_URL_ENV}"
    )
    if os.environ.get(REQUIRE_POSTGRES_ENV) == "1":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@asynccontextmanager
async def postgres_database(server_url: str | None = None) -> AsyncIterator[str]:
    """A new, empty, uniquely named database on the server; dropped afterwards. Yields its URL."""
    server = server_url or postgres_server_url()
    name = TEST_DATABASE_PREFIX + secrets.token_hex(6)
    admin = _admin_engine(server)
    try:
        try:
            async with asyncio.timeout(_CONNECT_TIMEOUT_SECONDS * 2):
                async with admin.connect() as connection:
                    await connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
        except Exception as error:
            postgres_unavailable(server, error)
        try:
            url = normalise_url(server).set(database=name)
            yield url.render_as_string(hide_password=False)
        finally:
            async with admin.connect() as connection:
                # Engines a test forgot to dispose still hold connections, which would block DROP.
                await connection.execute(
                    sa.text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = :name AND pid <> pg_backend_pid()"
                    ),
                    {"name": name},
                )
                await connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}"')
    finally:
        await admin.dispose()


@asynccontextmanager
async def database_url(backend: str, directory: Path) -> AsyncIterator[str]:
    """An empty database of the given backend ("sqlite" or "postgres"); see BACKENDS."""
    if backend == "sqlite":
        yield sqlite_url(directory)
    elif backend == "postgres":
        async with postgres_database() as url:
            yield url
    else:
        raise ValueError(f"unknown database backend {backend!r}")


async def clear_tables(engine: AsyncEngine) -> None:
    """Delete every row from the service's tables (not the migration version), so that tests
    sharing one database per session start from nothing."""
    async with engine.begin() as connection:
        for table in reversed(metadata.sorted_tables):
            await connection.execute(table.delete())


def _admin_engine(server_url: str) -> AsyncEngine:
    connect_args: dict[str, Any] = {"timeout": _CONNECT_TIMEOUT_SECONDS}
    # CREATE/DROP DATABASE cannot run inside a transaction; NullPool so nothing lingers.
    return create_async_engine(
        normalise_url(server_url),
        isolation_level="AUTOCOMMIT",
        poolclass=NullPool,
        connect_args=connect_args,
    )
