"""Bus fixtures: a connected Bus on the test's private server, topology declared.

Acks are shortened (2 s) so that redeliveries happen within a test's lifetime.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from ferry.bus import Bus, TopologySettings, declare
from ferry.proto.subjects import Service

SETTINGS = TopologySettings(ack_wait_seconds=2.0, max_deliver=3, duplicate_window_seconds=60)


@pytest.fixture
def settings() -> TopologySettings:
    return SETTINGS


@pytest.fixture
async def bus(nats_url: str, settings: TopologySettings) -> AsyncIterator[Bus]:
    async with await Bus.connect(nats_url, name="test", settings=settings) as connected:
        await declare(connected, settings, list(Service))
        yield connected


@pytest.fixture
async def patient_bus(nats_url: str) -> AsyncIterator[Bus]:
    """A bus whose ack_wait (60 s) is longer than any test waits: a redelivery
    seen within a test must have been an explicit nak."""
    patient = TopologySettings(ack_wait_seconds=60.0, max_deliver=3)
    async with await Bus.connect(nats_url, name="patient", settings=patient) as connected:
        await declare(connected, patient, list(Service))
        yield connected
