"""A ledger of every message a process published, for counting effects after the fact.

The audit stream cannot count effects: it drops a publish whose deterministic id
it saw within its dedupe window, so a handler that ran twice in that window is
invisible there. The ledger sees every publish the stream acknowledged, with
JetStream's verdict (``duplicate``), in an append-only file per process that a
kill -9 cannot leave half-written (one ``write`` per line, no buffering).

Counting rule for whoever reads it (the fault tests, ``bench/chaos``): the same
message id twice is a re-report of one result (a redelivered command answered
from the record, a re-issued command); two ids of one result type for one VM
and step are the effect done twice, since a re-run's result differs (durations,
digests of new work).

Off unless ``FERRY_BUS__LEDGER_DIR`` names a directory.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from ferry.proto.base import Message


class Ledger:
    """Appends one JSON line per acknowledged publish to ``<dir>/<name>-<pid>.jsonl``."""

    def __init__(self, directory: Path, name: str) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / f"{name}-{os.getpid()}.jsonl"
        self.name = name
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def record(self, type_name: str, message: Message, msg_id: str, duplicate: bool) -> None:
        line = {
            "time": time.time(),
            "by": self.name,
            "pid": os.getpid(),
            "type": type_name,
            "migration": message.migration,
            "vm": message.vm,
            "step": getattr(message, "step", ""),
            "attempt": getattr(message, "attempt", 0),
            "id": msg_id,
            "duplicate": duplicate,
        }
        os.write(self._fd, (json.dumps(line) + "\n").encode())

    def close(self) -> None:
        os.close(self._fd)


def read(directory: Path) -> Iterator[dict[str, Any]]:
    """Every line of every process's ledger in ``directory`` (a torn last line skipped)."""
    for path in sorted(directory.glob("*.jsonl")):
        for raw in path.read_text().splitlines():
            try:
                yield json.loads(raw)
            except json.JSONDecodeError:
                continue


def effects(lines: Iterable[dict[str, Any]]) -> dict[tuple[str, str, str], set[str]]:
    """Distinct result ids per (type, migration/vm, step): more than one is a double effect."""
    found: dict[tuple[str, str, str], set[str]] = {}
    for line in lines:
        key = (line["type"], f"{line['migration']}/{line['vm']}", line["step"])
        found.setdefault(key, set()).add(line["id"])
    return found
