"""Alembic environment for the feedback database.

`service.feedback.migrate` hands over an open connection (config.attributes["connection"]), so the
migration runs on the service's own async engine. Without one, the `sqlalchemy.url` option is used:
online with a fresh engine, or offline (`--sql`) to print the DDL for review.
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import Connection, text

from service.feedback.database import create_engine
from service.feedback.tables import metadata

# Arbitrary, fixed key for the PostgreSQL advisory lock that serialises concurrent upgrades.
_ADVISORY_LOCK_KEY = 7_214_635_381_212_011


def _serialise(connection: Connection) -> None:
    """Make concurrent upgrades (several workers starting with auto-migrate) wait for each other,
    so the second one reads the version table after the first has committed and does nothing."""
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _ADVISORY_LOCK_KEY})
    elif connection.dialect.name == "sqlite":
        # The driver would begin lazily and DEFERRED: the version check would read without the
        # write lock and two processes could both try to create the tables. Take the lock first.
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        # SQLite cannot ALTER most things; autogenerate must emit copy-and-move batch operations.
        render_as_batch=connection.dialect.name == "sqlite",
    )


def run_on(connection: Connection) -> None:
    _configure(connection)
    with context.begin_transaction():
        _serialise(connection)
        context.run_migrations()


async def _run_with_new_engine(url: str) -> None:
    engine = create_engine(url)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(run_on)
    finally:
        await engine.dispose()


def _run_offline(url: str) -> None:
    context.configure(url=url, target_metadata=metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


_connection = context.config.attributes.get("connection")
if _connection is not None:
    run_on(_connection)
else:
    _url = context.config.get_main_option("sqlalchemy.url")
    if not _url:
        raise RuntimeError("set the sqlalchemy.url option or pass a connection in attributes")
    if context.is_offline_mode():
        _run_offline(_url)
    else:
        asyncio.run(_run_with_new_engine(_url))
