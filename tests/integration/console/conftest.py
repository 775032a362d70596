"""A console process per test, on the test's private nats-server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ferry.testing import console


@pytest.fixture
def console_process(nats_url: str, tmp_path: Path) -> Iterator[console.ConsoleProcess]:
    running = console.start(nats_url, tmp_path)
    try:
        yield running
    finally:
        running.stop()
