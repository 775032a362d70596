"""Fixtures for the controller's integration tests: a real nats-server, the other services
as test Routers on it, and the controller itself (in this process, or as a child process
for the kill -9 tests)."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from controller_harness import TOPOLOGY
from controller_stack import Stack

from ferry.bus import Bus, declare
from ferry.proto.subjects import Service


@pytest.fixture
async def bus(nats_url: str) -> AsyncIterator[Bus]:
    async with await Bus.connect(nats_url, name="test", settings=TOPOLOGY) as connected:
        await declare(connected, TOPOLOGY, list(Service))
        yield connected


@pytest.fixture
async def stack(bus: Bus, nats_url: str, tmp_path: Path) -> AsyncIterator[Stack]:
    s = Stack(bus, nats_url, tmp_path)
    try:
        yield s
    finally:
        await s.close()


Until = Callable[[], Any]
