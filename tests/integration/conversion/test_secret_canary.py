"""A provider's password reaches virt-v2v through a private file, and nowhere else.

The conversion-service runs as its own process under an exec tracer (strace -f:
every exec of its whole tree, with argv and environment, however short-lived). A
Provider object of a libvirt source names a Secret whose password is a canary; a
ConvertGuest of a domain of the local libvirtd makes the service open that
provider, which hands the password to virt-v2v with ``-ip FILE``. The trace shows
virt-v2v read the canary from that file (the child received it); then the canary
must be in no exec's argv or environment, no event or dead letter, no log, and no
file the run left behind.

The domain has a blank disk, so virt-v2v fails at inspection: the failure (with
virt-v2v's own lines in the event) is as good a place for a leak as a success, and
the test takes about a minute instead of a full conversion.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest
from conversion_harness import platform_volumes

from ferry.bus import Bus, TopologySettings, declare
from ferry.proto import objects, subjects
from ferry.proto.conversion import ConversionFailed, ConversionMode, ConvertGuest, GuestConverted
from ferry.proto.inventory import ProviderType
from ferry.proto.subjects import Bucket, Service
from ferry.proto.volume import SourceRef
from ferry.providers.libvirt.provider import LibvirtProvider
from ferry.providers.libvirt.v2v import PASSWORD_FILE
from ferry.runtime.stack import ports, services
from ferry.testing import exectrace, libvirtd
from ferry.testing.bus import eventually

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(600),
    pytest.mark.skipif(not exectrace.available(), reason="strace is not installed"),
]

CANARY = "canary-Pw-3b8e61f0a2"
TOPOLOGY = TopologySettings(ack_wait_seconds=30.0, max_deliver=1, duplicate_window_seconds=60)


@pytest.fixture
def domain() -> Iterator[tuple[str, libvirtd.Guest]]:
    uri = libvirtd.uri_or_skip()
    conn = libvirt.open(uri)
    made = libvirtd.define_guest(conn, [16 << 20], start=False)
    try:
        yield uri, made
    finally:
        made.remove()
        conn.close()


def _plant(data: Path) -> None:
    """The Secret as the chart mounts it: <secrets>/<namespace>/<name>/<key>, 0600."""
    folder = data / "secrets" / "default" / "libvirt-creds"
    folder.mkdir(parents=True)
    for key, value in {"username": "ops", "password": CANARY}.items():
        (folder / key).write_text(value)
        (folder / key).chmod(0o600)


def _provider(uri: str, workdir: Path) -> dict[str, object]:
    return {
        "apiVersion": objects.API_VERSION,
        "kind": "Provider",
        "metadata": {"name": "lab", "namespace": "default"},
        "spec": {
            "type": "libvirt",
            "url": uri,
            "secret": {"name": "libvirt-creds"},
            "settings": {"workdir": str(workdir)},
        },
    }


async def _stored(bus: Bus, stream: str) -> list[bytes]:
    """Every message of a stream as stored: headers and data, raw."""
    info = await bus.js.stream_info(stream)
    found = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        with contextlib.suppress(Exception):
            msg = await bus.js.get_msg(stream, seq)
            found.append(repr(msg.headers).encode() + (msg.data or b""))
    return found


def _tree(pid: int) -> list[int]:
    found = [pid]
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            for child in (task / "children").read_text().split():
                found += _tree(int(child))
    return found


async def test_the_providers_password_reaches_virt_v2v_by_file_and_nowhere_else(
    nats_url: str, tmp_path: Path, domain: tuple[str, libvirtd.Guest]
) -> None:
    uri, guest = domain
    data, work, trace = tmp_path / "data", libvirtd.scratch_dir("ferry-work-"), tmp_path / "trace"
    # Given a Provider whose Secret holds a canary password, and bound volumes for its VM
    _plant(data)
    source = LibvirtProvider(uri, {"username": "ops", "password": CANARY})
    vm = await source.vm(guest.name)
    await source.close()
    volumes = await platform_volumes(data, vm, migration="m", vm_key="v")
    async with await Bus.connect(nats_url, name="test", settings=TOPOLOGY) as bus:
        await declare(bus, TOPOLOGY, list(Service))
        await bus.kv(Bucket.OBJECTS, dict).put(
            subjects.object_key("Provider", "lab"), _provider(uri, work)
        )
        # And the conversion-service running under the exec tracer
        env = services.environment(data, nats_url, ports.free_port())
        env.update(FERRY_BUS__MAX_DELIVER="1", FERRY_BUS__ACK_WAIT_SECONDS="30")
        log = (tmp_path / "service.log").open("wb")
        argv = exectrace.wrap([sys.executable, "-m", services.of(Service.CONVERSION).module], trace)
        tracer = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            # When a ConvertGuest of that VM arrives
            await bus.publish(
                ConvertGuest(
                    plan="p", migration="m", vm="v", step="ConvertGuest", namespace="default",
                    mode=ConversionMode.FULL, inventory=vm, volumes=volumes, timeout_seconds=400,
                    provider=SourceRef(provider="lab", type=ProviderType.LIBVIRT, url=uri),
                )
            )  # fmt: skip

            async def ended() -> bool:
                events = [m async for _, m in bus.events(follow=False)]
                return any(isinstance(m, ConversionFailed | GuestConverted) for m in events)

            await eventually(ended, within=400, what="the conversion ended")
            stored = await _stored(bus, subjects.EVENTS_STREAM)
            stored += await _stored(bus, subjects.DEAD_LETTER_STREAM)
        finally:
            for pid in _tree(tracer.pid)[1:2]:  # the service: strace's own child
                os.kill(pid, signal.SIGTERM)
            await asyncio.to_thread(tracer.wait, 60)
            log.close()

    execs, reads = exectrace.parse(trace, watched=PASSWORD_FILE)
    v2v = {e.pid for e in execs if e.program.endswith("virt-v2v")}
    # Then no exec of the whole tree carried the canary in argv or environment
    assert v2v, "virt-v2v never ran"
    assert len(execs) > 5  # the tracer saw the tree (virt-v2v's own helpers too)
    assert exectrace.leaks(execs, CANARY) == []
    # And virt-v2v was named the password file, and read the canary from it
    assert any(b"-ip" in e.call and PASSWORD_FILE.encode() in e.call for e in execs)
    assert [r.pid for r in reads if CANARY.encode() in r.data and r.pid in v2v]
    # And no event, dead letter, log or leftover file holds it
    assert [m for m in stored if CANARY.encode() in m] == []
    assert stored
    secrets = data / "secrets"
    holding = [
        str(p)
        for p in [tmp_path / "service.log", *data.rglob("*"), *work.rglob("*")]
        if p.is_file() and secrets not in p.parents and CANARY.encode() in p.read_bytes()
    ]
    assert holding == []
