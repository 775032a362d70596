"""`ferry up`'s nats-server: no anonymous client, and each identity held to its subjects.

The server is started by the stack machinery exactly as `ferry up` starts it; each
test connects as one identity (its credentials read from the file `ferry up`
wrote) and tries what it may and what it may not.
"""

from __future__ import annotations

import asyncio
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from ferry.bus import Bus, NotConnected, PublishFailed, TopologySettings, declare
from ferry.bus.rate import SharedRate, account, measured_accounts
from ferry.migration_controller.leadership import Leadership
from ferry.proto import migration
from ferry.proto.subjects import Bucket, Service
from ferry.runtime import secretfiles
from ferry.runtime.stack import identities, nats, processes
from ferry.testing.bus import allocate, allocated

TOPOLOGY = TopologySettings(ack_wait_seconds=5.0, duplicate_window_seconds=30)


@pytest.fixture
def stack_nats(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    server, bound = nats.start(tmp_path, 0, 20.0)
    try:
        yield bound.url, nats.identities_dir(tmp_path)
    finally:
        processes.stop([server], 10)


async def connect(url: str, folder: Path, identity: str) -> Bus:
    creds = secretfiles.credentials(identities.credentials_file(folder, identity))
    return await Bus.connect(
        url, name=identity, settings=TOPOLOGY, credentials=creds, publish_timeout=3.0
    )


async def declared(url: str, folder: Path) -> None:
    """Every service declares its own part, as each does at start-up."""
    for service in Service:
        async with await connect(url, folder, service.value) as bus:
            await declare(bus, TOPOLOGY, [service])


def completed() -> migration.VmCompleted:
    return migration.VmCompleted(plan="p", migration="m", vm="v")


async def test_an_anonymous_connection_is_refused(stack_nats: tuple[str, Path]) -> None:
    url, _ = stack_nats
    # When a client connects without credentials, Then the server refuses it, at once
    with pytest.raises(NotConnected, match="authorization violation"):
        await Bus.connect(url, name="anonymous", connect_timeout=10.0)


async def test_credentials_files_and_config_are_private(
    stack_nats: tuple[str, Path], tmp_path: Path
) -> None:
    _, folder = stack_nats
    # Then every identity has a 0600 file in a 0700 folder, and nats.conf is 0600
    assert {p.stem for p in folder.iterdir()} == set(identities.IDENTITIES)
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in folder.iterdir())
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "nats" / "nats.conf").stat().st_mode) == 0o600


async def test_each_service_declares_and_uses_its_own_part(
    stack_nats: tuple[str, Path],
) -> None:
    url, folder = stack_nats
    for service in Service:
        # Given a service connected as itself
        async with await connect(url, folder, service.value) as bus:
            # When it declares its part of the topology and reads the buckets, Then it may
            await declare(bus, TOPOLOGY, [service])
            await bus.kv(Bucket.OBJECTS, dict).keys()
            await bus.kv(Bucket.CANCEL, dict).get("m.v")
    async with await connect(url, folder, "volume") as bus:
        # And the volume-service publishes its own events
        cmd = allocate("vm-1")
        await bus.publish(allocated(cmd))
        # and its copies take grants from a bandwidth budget's shared rate
        await SharedRate(bus, account("per-host", "esx1"), 1 << 20).take(1024)
    async with await connect(url, folder, "cli") as bus:
        # And the CLI reads what moves under the budget (ferry describe plan); the figure
        # itself depends on how long ago the grant was (a loaded machine: over a second)
        assert set(await measured_accounts(bus, "per-host")) == {"esx1"}
    async with await connect(url, folder, "controller") as bus:
        # And the controller publishes commands to the services and writes VM state
        await bus.publish(allocate("vm-2"))
        await bus.kv(Bucket.VMS, dict).put("m.v", {"x": 1})
        # and takes and renews its replicas' active/standby lease
        lead = Leadership(bus, lease_seconds=3.0, owner="replica-1")
        assert await lead.acquire(asyncio.Event())
        await lead.release()
        assert await lead.acquire(asyncio.Event())


async def test_a_subject_outside_an_identitys_permissions_is_refused(
    stack_nats: tuple[str, Path],
) -> None:
    url, folder = stack_nats
    await declared(url, folder)
    # Given the volume-service's identity
    async with await connect(url, folder, "volume") as bus:
        # When it forges a controller event, or a command to another service
        with pytest.raises(PublishFailed):
            await bus.publish(completed())
        with pytest.raises(PublishFailed):
            await bus.publish(allocate("vm-3"))
        # Or writes the controller's VM state
        with pytest.raises(Exception):  # noqa: B017 - refused: a timeout, or an error
            await bus.kv(Bucket.VMS, dict).put("m.v", {"forged": True})
    # Then nothing of it reached the stream
    async with await connect(url, folder, "controller") as bus:
        assert await bus.kv(Bucket.VMS, dict).get("m.v") is None


async def test_only_the_controller_removes_vm_state_for_good(
    stack_nats: tuple[str, Path],
) -> None:
    url, folder = stack_nats
    await declared(url, folder)
    async with await connect(url, folder, "controller") as bus:
        await bus.kv(Bucket.VMS, dict).put("m.v", {"phase": "done"})
    # Given the volume-service: it may not remove the controller's state
    async with await connect(url, folder, "volume") as bus:
        with pytest.raises(Exception):  # noqa: B017 - refused: a timeout, or an error
            await bus.kv(Bucket.VMS, dict).remove("m.v")
    # When the controller's retention removes it, Then it is gone
    async with await connect(url, folder, "controller") as bus:
        assert await bus.kv(Bucket.VMS, dict).get("m.v") is not None
        await bus.kv(Bucket.VMS, dict).remove("m.v")
        assert await bus.kv(Bucket.VMS, dict).get("m.v") is None


async def test_the_audit_identity_reads_events_and_nothing_else(
    stack_nats: tuple[str, Path],
) -> None:
    url, folder = stack_nats
    await declared(url, folder)
    async with await connect(url, folder, "controller") as bus:
        await bus.publish(completed())
    async with await connect(url, folder, identities.AUDIT) as bus:
        # When the auditor reads the event stream, Then it sees the events
        seen = [message async for _, message in bus.events(follow=False)]
        assert seen == [completed()]
        # But it may not publish, nor read the state buckets
        with pytest.raises(PublishFailed):
            await bus.publish(completed())
        with pytest.raises(Exception):  # noqa: B017 - refused: a timeout, or an error
            await bus.kv(Bucket.OBJECTS, dict).keys()


def test_a_group_readable_credentials_file_is_refused(tmp_path: Path) -> None:
    # Given credentials that others may read
    path = tmp_path / "creds.json"
    path.write_text('{"user": "volume", "password": "x"}')
    path.chmod(0o644)
    # When they are read, Then they are refused, naming the file and the fix
    with pytest.raises(secretfiles.InsecureSecretFile, match="chmod 0600"):
        secretfiles.credentials(path)
    path.chmod(0o640)
    assert secretfiles.credentials(path, allow_group_read=True).user == "volume"
    path.chmod(0o600)
    assert secretfiles.credentials(path).password == "x"
