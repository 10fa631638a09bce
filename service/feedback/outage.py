"""What a database failure means for a caller: `DatabaseUnavailable`, with the reason in a few safe
words (never the driver's message, which can carry the host, port, user or SQL).

The store raises it for anything that says "the database cannot do this now": a refused or lost
connection, a timeout, another writer holding the lock, a full disk. The HTTP layer answers it
with 503 and `Retry-After`, so the client retries, rather than 500 (our bug) or 401 (its fault).
"""

from __future__ import annotations

import sqlite3
from typing import Final

from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

# Long enough for a lock holder to finish or a failover to complete, short enough that an EHR's
# retry queue drains soon after the database is back.
RETRY_AFTER_SECONDS: Final = 5

# SQLSTATEs of a server that cannot serve now (PostgreSQL appendix A), by code, else by class:
# 08 connection exception, 53 insufficient resources, 57 operator intervention.
_SQLSTATE_REASONS: Final = {
    "53100": "disk full",
    "53300": "too many connections",
    "57014": "statement cancelled (timed out)",
    "08": "connection lost",
    "53": "out of resources",
    "57": "shutting down or starting up",
}
# SQLite primary result codes (sqlite_errorname without the extended suffix).
_SQLITE_REASONS: Final = {
    "SQLITE_BUSY": "locked by another writer",
    "SQLITE_LOCKED": "locked by another writer",
    "SQLITE_FULL": "disk full",
    "SQLITE_IOERR": "disk I/O error",
    "SQLITE_CANTOPEN": "cannot open the database file",
    "SQLITE_READONLY": "read-only",
    "SQLITE_NOMEM": "out of memory",
}


class DatabaseUnavailable(Exception):
    """The database cannot serve this request now; `reason` is safe to show a client."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def outage_reason(error: BaseException) -> str | None:
    """Why `error` means the database is unavailable, in safe words; None when it is not an
    outage (a bug in the service, or invalid data), which should surface as such."""
    if isinstance(error, DatabaseUnavailable):
        return error.reason
    if isinstance(error, PoolTimeoutError):
        return "all connections busy"
    if isinstance(error, TimeoutError):
        return "timed out"
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    if isinstance(error, ConnectionError):
        return "connection lost"
    if isinstance(error, OSError):
        return "network error"
    if isinstance(error, DBAPIError):
        if error.connection_invalidated:
            return "connection lost"
        return _driver_reason(error.orig)
    # asyncpg raises its own errors, unwrapped, from SQLAlchemy's connect hooks (a connection
    # closed while its codecs are set up). Recognised by module: importing asyncpg here would load
    # it into every worker, also those serving SQLite.
    if type(error).__module__.partition(".")[0] == "asyncpg":
        return _driver_reason(error)
    return None


def _driver_reason(original: BaseException | None) -> str:
    # Every driver error counts as unavailable (a statement this service sends is tested; what
    # fails in production is the database), with a precise reason where the driver gives one.
    if isinstance(original, sqlite3.Error):
        name = getattr(original, "sqlite_errorname", "") or ""
        for prefix, sqlite_reason in _SQLITE_REASONS.items():
            if name == prefix or name.startswith(prefix + "_"):
                return sqlite_reason
        return "database error"
    sqlstate = getattr(original, "sqlstate", None)
    if isinstance(sqlstate, str):
        server_reason = _SQLSTATE_REASONS.get(sqlstate) or _SQLSTATE_REASONS.get(sqlstate[:2])
        if server_reason is not None:
            return server_reason
    if isinstance(original, ConnectionError | TimeoutError) or "connection" in str(original):
        # asyncpg's InterfaceError "connection is closed", ConnectionDoesNotExistError "connection
        # was closed in the middle of operation", and the like.
        return "connection lost"
    return "database error"
