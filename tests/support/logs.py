"""What the service attached to a log record with `extra=`: logging sets each as an attribute of
the record, which `logging.LogRecord` cannot declare, so tests read them through here, typed."""

from __future__ import annotations

import logging
from typing import Any


def log_extra(record: logging.LogRecord, name: str) -> Any:
    """The `extra` field `name` of the record (a KeyError when the service did not log it)."""
    return record.__dict__[name]
