"""structlog set-up, once per process: JSON lines, dotted event names, context (role,
request id) bound through contextvars. Servers log to stdout; one-shot CLI commands log to
stderr so their stdout stays clean for data."""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR}


def configure(level: str = "info", *, role: str = "tandem", to_stderr: bool = False) -> None:
    def factory(*_: Any) -> structlog.WriteLogger:
        # Looked up at every log call: whatever sys.stdout/stderr is *now* (tests swap them).
        # WriteLogger, not PrintLogger: print() writes the line and its newline separately,
        # so with an unbuffered stdout (PYTHONUNBUFFERED) the pre-forked workers sharing one
        # pipe interleave them and merge two records into one unparseable line.
        return structlog.WriteLogger(sys.stderr if to_stderr else sys.stdout)

    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=factory,
        cache_logger_on_first_use=False,
    )
    structlog.contextvars.bind_contextvars(role=role)
