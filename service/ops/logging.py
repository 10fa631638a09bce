"""Structured JSON logs: one line per call, and nothing that identifies a patient or a credential.

Only fields placed on `request.state.log` by the handlers are written, and handlers put there only
hookInstance, service id, card count and outcome. Bodies, headers and query strings are never
logged.
"""

from __future__ import annotations

import logging.config
from typing import Any

CALL_LOGGER = "rpl_cds.calls"


def logging_config(level: str) -> dict[str, Any]:
    """A dictConfig that uvicorn applies in every worker process (workers are spawned, so the
    parent's logging setup does not reach them)."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "json": {
                "()": "pythonjsonlogger.json.JsonFormatter",
                "fmt": "%(asctime)s %(levelname)s %(name)s %(message)s",
                "rename_fields": {"asctime": "time", "levelname": "level", "name": "logger"},
            }
        },
        "handlers": {
            "stdout": {
                "class": "logging.StreamHandler",
                "formatter": "json",
                "stream": "ext://sys.stdout",
            }
        },
        "root": {"handlers": ["stdout"], "level": level},
        "loggers": {
            "uvicorn": {"handlers": ["stdout"], "level": level, "propagate": False},
            "uvicorn.error": {"handlers": ["stdout"], "level": level, "propagate": False},
            # Our call line replaces uvicorn's access line, which lacks the hook fields.
            "uvicorn.access": {"handlers": [], "level": "CRITICAL", "propagate": False},
            # Their INFO lines hold request URLs, and a FHIR query URL holds the patient id.
            "httpx": {"level": "WARNING"},
            "httpcore": {"level": "WARNING"},
        },
    }


def configure_logging(level: str) -> None:
    logging.config.dictConfig(logging_config(level))
