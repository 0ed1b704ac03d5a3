"""Structured JSON log lines on stderr (the journal keeps them). Callers log UIDs and counts, never names,
patient IDs or birth dates; `scrub` removes such keys should one slip into an event."""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

PHI_KEYS = frozenset(
    {
        "patient_name",
        "patient_id",
        "patient_birth_date",
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "name",
        "birth_date",
    }
)


def scrub(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key in PHI_KEYS & event_dict.keys():
        event_dict[key] = "<removed>"
    return event_dict


def setup(level: str = "INFO") -> None:
    logging.basicConfig(stream=sys.stderr, level=getattr(logging, level), format="%(message)s")
    # pynetdicom is chatty and may print dataset contents at debug level: keep it at warnings.
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            scrub,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )


def get(name: str = "dicomnode") -> Any:
    return structlog.get_logger(name)


def where(exc: BaseException) -> str:
    """'file.py:123 in function' of the innermost frame: where an error happened, without its message (messages can
    quote dataset values such as names)."""
    import traceback

    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return "unknown"
    f = frames[-1]
    return f"{f.filename.rsplit('site-packages/', 1)[-1].rsplit('/work/', 1)[-1]}:{f.lineno} in {f.name}"


def failure(log: Any, event: str, exc: BaseException, **ids: Any) -> None:
    """An unexpected error: its type and place at error level, the stack only at debug level."""
    import traceback

    log.error(event, error=type(exc).__name__, where=where(exc), **ids)
    log.debug(event, stack="".join(traceback.format_tb(exc.__traceback__, limit=8)), **ids)
