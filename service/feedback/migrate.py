"""Alembic, configured in code so that migrations run from an installed wheel (no alembic.ini).

`upgrade` is for tests and tools; the service goes through `service.feedback.revision`, which
imports this module only when the database is behind.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from service.feedback.database import run_with_engine

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


def alembic_config(connection: Connection | None = None) -> Config:
    """Alembic's configuration; with `connection`, env.py migrates on it instead of connecting."""
    config = Config()
    # Option values go through configparser interpolation, where "%" is special.
    config.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    config.set_main_option("path_separator", "os")
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


async def upgrade_engine(engine: AsyncEngine, revision: str = "head") -> None:
    # Alembic is synchronous: it runs inside the async connection's greenlet bridge, and the whole
    # upgrade commits (or rolls back) as one transaction.
    async with engine.begin() as connection:
        await connection.run_sync(_upgrade_on, revision)


def upgrade(database_url: str) -> None:
    """Bring the database at `database_url` to the newest schema, always through Alembic.
    Synchronous (it runs its own event loop)."""
    run_with_engine(database_url, upgrade_engine)


def _upgrade_on(connection: Connection, revision: str) -> None:
    command.upgrade(alembic_config(connection), revision)


__all__ = [
    "MIGRATIONS_DIR",
    "alembic_config",
    "head_revision",
    "upgrade",
    "upgrade_engine",
]
