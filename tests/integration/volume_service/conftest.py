"""Fixtures for the volume-service tests: a bus on the test's own nats-server, an OVA,
and the service's router running in the test's event loop.

Acks are short (3 s) so that redeliveries happen within a test's lifetime.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from ferry.bus import Bus, TopologySettings, declare
from ferry.platform.settings import LocalSettings, PlatformSettings
from ferry.proto.subjects import Service
from ferry.testing.bus import Running
from ferry.volume_service import app
from ferry.volume_service.settings import Settings, VolumeSettings

sys.path.insert(0, str(Path(__file__).parent))

import volume_harness

TOPOLOGY = TopologySettings(ack_wait_seconds=3.0, max_deliver=3, duplicate_window_seconds=60)


@pytest.fixture
async def bus(nats_url: str) -> AsyncIterator[Bus]:
    async with await Bus.connect(nats_url, name="volume-test", settings=TOPOLOGY) as connected:
        await declare(connected, TOPOLOGY, list(Service))
        yield connected


@pytest.fixture
async def ova(tmp_path: Path) -> volume_harness.Ova:
    return await volume_harness.make_ova(tmp_path / "import")


def service_settings(tmp_path: Path, **changes: Any) -> Settings:
    """The service's settings; each change goes to its group (``volumes`` or the platform's)."""
    defaults: dict[str, Any] = {"progress_interval_seconds": 0.2, "checkpoint_seconds": 0.2}
    defaults.update(changes)
    own = {k: v for k, v in defaults.items() if k in VolumeSettings.model_fields}
    local = {k: v for k, v in defaults.items() if k not in own}
    return Settings(
        data_dir=tmp_path / "data",
        volumes=VolumeSettings(**own),
        platform=PlatformSettings(local=LocalSettings(**local)),
    )


@pytest.fixture
def volume_service(bus: Bus, tmp_path: Path) -> volume_harness.ServiceFactory:
    """``async with volume_service(**volume_settings) as settings``: the router runs inside."""

    @asynccontextmanager
    async def running(**volumes: Any) -> AsyncIterator[Settings]:
        settings = service_settings(tmp_path, **volumes)
        router = app.build_router(bus, settings)
        async with Running(router, bus, concurrency=2, grace_seconds=5):
            yield settings

    return running


@pytest.fixture
def tiny_storage(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs for one storage class: a real ENOSPC. Mounting needs root."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
