"""JSON logs: one object per line, carrying the migration and VM a line is about.

Log collectors index fields, not prose, so every line names its service and, when
the code that logged passed them in ``extra=``, the migration, VM and message
type. That is what makes "everything that happened to VM web01" one query.
Plain stdlib logging: libraries (nats-py, aiohttp) log through it too.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

from ferry.runtime.settings import LogFormat

CONTEXT_FIELDS = ("migration", "vm", "type", "plan", "step")
"""Attributes copied from a record (set through ``extra=``) into the JSON object."""


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object on one line."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "service": self.service,
        }
        for name in CONTEXT_FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                entry[name] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """Human-readable lines that still show the ids when present."""

    def __init__(self, service: str) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        ids = [f"{n}={record.__dict__[n]}" for n in CONTEXT_FIELDS if record.__dict__.get(n)]
        return f"{line} [{' '.join(ids)}]" if ids else line


def configure(
    service: str,
    level: str = "INFO",
    fmt: LogFormat = LogFormat.JSON,
    stream: TextIO | None = None,
) -> logging.Handler:
    """Route every logger to one handler on ``stream`` (stderr by default).

    Replaces handlers installed before, so calling it twice does not double lines.
    """
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    formatter: logging.Formatter = (
        JsonFormatter(service) if fmt is LogFormat.JSON else TextFormatter(service)
    )
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # aiohttp's access log would log every probe and scrape.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    return handler
