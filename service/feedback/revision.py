"""The schema revision, read without Alembic: every serving process checks it on start, and
Alembic (about 10 MB and 0.1 s of imports a process) is loaded only when there is something to
migrate."""

from __future__ import annotations

from typing import Final

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from service.feedback.database import run_with_engine

# The newest migration in migrations/versions; the feedback store tests hold it equal to Alembic's
# head, so a new migration that forgets to move it fails there.
HEAD_REVISION: Final = "0002"


async def current_revision(engine: AsyncEngine) -> str | None:
    """The revision the database is at; None before the first migration."""
    async with engine.connect() as connection:
        return await connection.run_sync(_current_revision_on)


async def migrate_if_behind(engine: AsyncEngine) -> None:
    """Bring the schema to the newest revision, unless it is there already."""
    if await current_revision(engine) == HEAD_REVISION:
        return
    from service.feedback.migrate import upgrade_engine

    await upgrade_engine(engine)


def migrate_database(database_url: str) -> None:
    """`migrate_if_behind` for the command line (synchronous, with an engine of its own)."""
    run_with_engine(database_url, migrate_if_behind)


def _current_revision_on(connection: sa.Connection) -> str | None:
    if not sa.inspect(connection).has_table("alembic_version"):
        return None
    # One row: the migrations are one line of revisions, without branches.
    query = sa.text("SELECT version_num FROM alembic_version")
    revision: str | None = connection.execute(query).scalar_one_or_none()
    return revision
