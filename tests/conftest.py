"""Fixtures shared by every test tier.

``nats_server`` is a private nats-server per test (its own port and store
directory, JetStream with fsync on every write), so tests never touch the
machine's shared server on 4222 and may kill theirs.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ferry.testing.nats import NatsServer


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path / "nats")
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def nats_url(nats_server: NatsServer) -> str:
    return nats_server.url
