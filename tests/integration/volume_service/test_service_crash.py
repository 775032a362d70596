"""The volume-service as a real process, killed with SIGKILL in the middle of a copy.

Nothing is simulated: ``python -m ferry.volume_service`` runs with ``FERRY_``
settings against the test's nats-server, its importer workload is its child,
and ``kill -9`` ends both. The CopyDisks command was never acked, so JetStream
delivers it again to the restarted service, whose importer continues from the
last checkpoint (its first progress report is above zero) and finishes with a
checksum that matches the source.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from volume_harness import (
    NS,
    MiB,
    Ova,
    create,
    events,
    make_ova,
    sha256_prefix,
    tree_digest,
    wait_for,
)

from ferry.bus import Bus, TopologySettings, declare
from ferry.proto import volume
from ferry.proto.subjects import Service
from ferry.proto.volume import VolumeSource
from ferry.testing.bus import eventually
from ferry.testing.nats import NatsServer

TOPOLOGY = TopologySettings(ack_wait_seconds=3.0, max_deliver=5, duplicate_window_seconds=60)
DISK = 64 * MiB  # 32 MiB of data, copied at 8 MiB/s: about 4 s of copying


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start(nats_url: str, data_dir: Path, log: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    env.update(
        FERRY_NATS__URL=nats_url,
        FERRY_DATA_DIR=str(data_dir),
        FERRY_HTTP__HOST="127.0.0.1",
        FERRY_HTTP__PORT=str(_free_port()),
        FERRY_LOG__FORMAT="json",
        FERRY_WORKERS__GRACE_SECONDS="2",
        FERRY_BUS__ACK_WAIT_SECONDS=str(TOPOLOGY.ack_wait_seconds),
        FERRY_BUS__MAX_DELIVER=str(TOPOLOGY.max_deliver),
        FERRY_BUS__DUPLICATE_WINDOW_SECONDS=str(TOPOLOGY.duplicate_window_seconds),
        FERRY_PLATFORM__LOCAL__MAX_RATE=str(8 * MiB),
        FERRY_PLATFORM__LOCAL__CHECKPOINT_SECONDS="0.2",
        FERRY_VOLUMES__PROGRESS_INTERVAL_SECONDS="0.2",
    )
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "ferry.volume_service"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def _copy(ova: Ova) -> volume.CopyDisks:
    return volume.CopyDisks(
        plan="plan-1",
        migration="mig-1",
        vm="vm-1",
        step="CopyDisks",
        namespace=NS,
        provider=create(ova, VolumeSource.IMPORTER).provider,
        inventory=ova.vm,
    )


@pytest.mark.slow  # 20-60 s of kill-and-restart: kept out of make test-fast, run by make test
@pytest.mark.timeout(240)
async def test_kill_9_mid_copy_then_restart_resumes_and_checksums_match(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    ova = await make_ova(tmp_path / "import", size=DISK)
    data_dir, log = tmp_path / "data", tmp_path / "volume-service.log"
    async with await Bus.connect(nats_server.url, name="crash-test", settings=TOPOLOGY) as bus:
        await declare(bus, TOPOLOGY, list(Service))
        service = _start(nats_server.url, data_dir, log)
        try:
            # Given the service process copying an OVA's streamOptimized disk
            await bus.publish(create(ova, VolumeSource.IMPORTER))
            await wait_for(bus, volume.VolumesCreated, within=60)
            await bus.publish(_copy(ova))

            async def a_third_done() -> bool:
                found = [m for m in await events(bus) if isinstance(m, volume.DiskProgress)]
                return any(p.done >= p.total // 3 for p in found)

            await eventually(a_third_done, within=60, what="a third of the disk copied")
            workloads = psutil.Process(service.pid).children(recursive=True)
            assert any("ferry.platform.local.importer" in _cmdline(p) for p in workloads)

            # When the service is killed with SIGKILL mid-copy
            service.send_signal(signal.SIGKILL)
            service.wait(timeout=10)
            # Then its importer dies with it (no orphan keeps writing)
            psutil.wait_procs(workloads, timeout=10)
            assert not [p for p in workloads if p.is_running() and p.status() != "zombie"]
            before = await events(bus)
            assert not any(isinstance(m, volume.DisksCopied) for m in before)

            # When the service starts again
            service = _start(nats_server.url, data_dir, log)
            (copied,) = await wait_for(bus, volume.DisksCopied, within=120)
            after = (await events(bus))[len(before) :]
        finally:
            if service.poll() is None:
                service.send_signal(signal.SIGTERM)
                code = service.wait(timeout=30)
                assert code == 0, log.read_text()[-3000:]

    # Then the redelivered command resumed the copy from its checkpoint, not from zero
    resumed = [m for m in after if isinstance(m, volume.DiskProgress)]
    assert resumed and 0 < resumed[0].done < resumed[0].total, resumed[:3]
    assert resumed[-1].done == resumed[-1].total
    # And the result is verified: source and target checksums match the raw source disk
    assert isinstance(copied, volume.DisksCopied)
    (result,) = copied.disks
    assert result.source == result.target
    assert result.source.digest == tree_digest(ova.raw)
    claim_file = data_dir / "storage" / "volumes" / "claims" / NS / f"{result.volume}.json"
    claim = json.loads(claim_file.read_text())
    assert claim["phase"] == "Succeeded"
    assert sha256_prefix(Path(claim["path"]), DISK) == sha256_prefix(ova.raw, DISK)
    assert not [m for m in after if isinstance(m, volume.VolumeFailed)]
    print(
        f"killed at {max(p.done for p in before if isinstance(p, volume.DiskProgress))} bytes, "
        f"resumed at {resumed[0].done} of {resumed[0].total}"
    )


def _cmdline(process: psutil.Process) -> str:
    try:  # a process may end (or be a zombie) between the listing and the read
        return " ".join(process.cmdline())
    except psutil.Error:
        return ""
