"""The provider a command names is resolved from the objects bucket, with its secret.

The command only says ``provider: ova-store``; the Provider object people applied
gives the import directory (``settings.path``) and a Secret reference. The
secret is read from the mounted secrets directory and must never show up in an
event or a log line.
"""

from __future__ import annotations

import logging
from pathlib import Path

import msgspec
import pytest
from volume_harness import Ova, ServiceFactory, create, events, wait_for

from ferry.bus import Bus
from ferry.proto import objects, subjects, volume
from ferry.proto.inventory import ProviderType
from ferry.proto.subjects import Bucket
from ferry.proto.volume import SourceRef, VolumeSource

SECRET_VALUE = "s3cr3t-do-not-print-4711"


async def store_provider(bus: Bus, folder: Path) -> None:
    provider = objects.Provider(
        metadata=objects.ObjectMeta(name="ova-store", namespace="ferry-test"),
        spec=objects.ProviderSpec(
            type=ProviderType.OVA,
            settings={"path": str(folder)},
            secret=objects.ObjectRef(name="ova-creds"),
        ),
    )
    await bus.kv(Bucket.OBJECTS, dict).put(
        subjects.object_key("Provider", "ova-store"), objects.to_document(provider)
    )


async def test_provider_object_and_secret_are_resolved_and_the_secret_never_leaks(
    bus: Bus,
    volume_service: ServiceFactory,
    ova: Ova,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    # Given a Provider object (no URL, a path setting) whose secret is not mounted yet
    await store_provider(bus, ova.folder)
    by_name = SourceRef(provider="ova-store", type=ProviderType.OVA)
    cmd = msgspec.structs.replace(create(ova, VolumeSource.IMPORTER), provider=by_name)
    copy_cmd = volume.CopyDisks(
        plan=cmd.plan,
        migration=cmd.migration,
        vm=cmd.vm,
        step="CopyDisks",
        namespace=cmd.namespace,
        provider=by_name,
        inventory=ova.vm,
    )
    async with volume_service() as settings:
        await bus.publish(cmd)
        await wait_for(bus, volume.VolumesCreated)
        # When the copy runs without the secret
        await bus.publish(copy_cmd)
        (failed,) = await wait_for(bus, volume.VolumeFailed)
        # And again (the next attempt) once the secret is mounted
        secret = settings.secrets_dir() / "ferry-test" / "ova-creds"
        secret.mkdir(parents=True)
        (secret / "password").write_text(SECRET_VALUE + "\n")
        (secret / "password").chmod(0o600)  # a secret others may read is refused
        await bus.publish(msgspec.structs.replace(copy_cmd, attempt=2))
        (copied,) = await wait_for(bus, volume.DisksCopied, failures_seen=1)
        published = await events(bus)

    # Then the first attempt failed naming the missing secret (by reference only)
    assert isinstance(failed, volume.VolumeFailed)
    assert "secret ferry-test/ova-creds is not mounted" in failed.reason
    # And the second copied from the directory the Provider object names
    assert isinstance(copied, volume.DisksCopied)
    assert copied.disks[0].source == copied.disks[0].target
    # And the secret's value is in no event and no log record
    for message in published:
        assert SECRET_VALUE not in msgspec.json.encode(message).decode()
    assert SECRET_VALUE not in caplog.text
    assert caplog.records  # the service did log (so the check above means something)


async def test_command_for_a_provider_of_another_type_is_refused(
    bus: Bus, volume_service: ServiceFactory, ova: Ova
) -> None:
    # Given a stored OVA Provider, and a command that calls it a vSphere provider
    await store_provider(bus, ova.folder)
    wrong = SourceRef(provider="ova-store", type=ProviderType.VSPHERE)
    async with volume_service():
        await bus.publish(create(ova, VolumeSource.IMPORTER))
        await wait_for(bus, volume.VolumesCreated)
        await bus.publish(
            volume.CopyDisks(
                plan="plan-1",
                migration="mig-1",
                vm="vm-1",
                namespace="ferry-test",
                provider=wrong,
                inventory=ova.vm,
            )
        )
        (failed,) = await wait_for(bus, volume.VolumeFailed)

    # Then it fails for good, saying which type is which
    assert isinstance(failed, volume.VolumeFailed)
    assert "of type ova" in failed.reason and "vsphere" in failed.reason
