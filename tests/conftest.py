"""Fixtures shared by every test tier.

``nats_server`` is a private nats-server per test (its own port and store
directory, JetStream with fsync on every write), so tests never touch the
machine's shared server on 4222 and may kill theirs.

Tiers: ``slow`` (virt-v2v, guest boots, long kill schedules) and ``e2e`` are marked
in their modules; ``heavy`` is given here to the integration modules whose every test
brings up a heavy real component (the cluster stand-in's kubelet and QEMU, vcsim,
libvirtd guests, QEMU, NATS clusters, Chromium, whole service processes, whole copies
through importer children). ``make test`` runs every tier;
``make test-fast`` leaves out all three, to stay a loop of under two minutes.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ferry.testing.nats import NatsServer

TESTS = Path(__file__).parent
HEAVY = [
    TESTS / "integration" / "cluster",  # the stand-in: API server, kubelet, QEMU
    TESTS / "integration" / "vsphere",  # vcsim
    TESTS / "integration" / "providers" / "test_libvirt.py",  # libvirtd and guests
    TESTS / "integration" / "providers" / "test_libvirt_tls.py",
    TESTS / "integration" / "providers" / "test_ovirt_warm.py",  # imageio + libvirt
    TESTS / "integration" / "volume_service" / "test_libvirt_source.py",
    TESTS / "integration" / "testing" / "test_ovirt_engine_backups.py",
    TESTS / "integration" / "runtime" / "test_platform_processes.py",  # the 4 services
    TESTS / "integration" / "runtime" / "test_identities.py",  # a stack's identities
    TESTS / "integration" / "console" / "test_console_browser.py",  # Chromium
    TESTS / "integration" / "console" / "test_console_process.py",
    TESTS / "integration" / "conversion" / "test_handler.py",  # conversions over the bus
    TESTS / "integration" / "platform" / "test_qemu_bus.py",  # QEMU guests
    TESTS / "integration" / "platform" / "test_qemu_vms.py",
    TESTS / "integration" / "bus" / "test_cluster_reads.py",  # 3-node NATS clusters
    TESTS / "integration" / "runtime" / "test_systemd_cluster.py",
    # whole copies through importer children (qemu-nbd, nbdkit), killed and resumed
    TESTS / "integration" / "volume_service" / "test_commands.py",
    TESTS / "integration" / "platform" / "test_volumes_local_failures.py",
]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if any(item.path == h or h in item.path.parents for h in HEAVY):
            item.add_marker(pytest.mark.heavy)


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
