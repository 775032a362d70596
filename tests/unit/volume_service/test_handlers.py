"""Input checks of the handlers and the outcomes they choose, without a bus or files."""

from __future__ import annotations

from typing import cast

import pytest

from ferry.bus import PermanentError, TemporaryError
from ferry.platform import errors as copy_errors
from ferry.platform.local.workload import WorkloadCrashed
from ferry.platform.volumes import InsufficientStorage, VolumePlatform
from ferry.proto import volume
from ferry.proto.inventory import (
    Checksum,
    Disk,
    DiskCopy,
    ProviderType,
    Vm,
    VolumeMode,
    VolumeTarget,
)
from ferry.proto.volume import SourceRef, VolumeSource
from ferry.providers.base import Provider, ProviderError, VmNotFound
from ferry.volume_service import handlers
from ferry.volume_service.failures import classify
from ferry.volume_service.settings import VolumeSettings

GiB = 1 << 30
VM = Vm(
    id="web01/web01",
    name="web01",
    provider_type=ProviderType.OVA,
    disks=[
        Disk(id="d1", name="disk 1", capacity=8 * GiB),
        Disk(id="d2", name="disk 2", capacity=GiB),
    ],
)


async def _no_provider(ref: SourceRef) -> Provider:
    raise AssertionError("not used")


def subject() -> handlers.VolumeHandlers:
    return handlers.VolumeHandlers(
        cast(VolumePlatform, None),
        _no_provider,
        VolumeSettings(),
    )


def command(targets: list[VolumeTarget], vm: Vm = VM) -> volume.CreateVolumes:
    return volume.CreateVolumes(
        plan="p",
        migration="m",
        vm="v",
        namespace="ns",
        source=VolumeSource.IMPORTER,
        provider=SourceRef(provider="ova", type=ProviderType.OVA, url="/import"),
        inventory=vm,
        targets=targets,
    )


def target(disk: str, **kwargs: object) -> VolumeTarget:
    return VolumeTarget(disk_id=disk, storage_class="standard", **kwargs)  # type: ignore[arg-type]


def test_requests_follow_disk_order_with_capacity_and_target() -> None:
    # Given targets listed in another order than the disks
    cmd = command([target("d2", volume_mode=VolumeMode.BLOCK), target("d1", format="qcow2")])
    # When turned into volume requests
    requests = subject().requests(cmd)
    # Then there is one per disk, in disk order, with the disk's capacity and its target
    assert [(r.disk_id, r.capacity) for r in requests] == [("d1", 8 * GiB), ("d2", GiB)]
    assert requests[0].target.format == "qcow2"
    assert requests[1].target.volume_mode == VolumeMode.BLOCK
    assert {(r.migration, r.vm, r.vm_name, r.namespace) for r in requests} == {
        ("m", "v", "web01", "ns")
    }


@pytest.mark.parametrize(
    ("targets", "message"),
    [
        ([target("d1"), target("d2"), target("d9")], "disk 'd9', which VM 'web01' does not have"),
        ([target("d1"), target("d1"), target("d2")], "more than one target"),
        ([target("d1")], "d2 have no target"),
        ([target("d1", format="vmdk"), target("d2")], "'vmdk' is not raw or qcow2"),
        (
            [target("d1", volume_mode=VolumeMode.BLOCK, format="qcow2"), target("d2")],
            "Block volume holds raw data",
        ),
    ],
)
def test_bad_targets_are_refused_before_any_volume_is_made(
    targets: list[VolumeTarget], message: str
) -> None:
    with pytest.raises(PermanentError, match=message):
        subject().requests(command(targets))


def test_a_disk_without_capacity_is_refused() -> None:
    empty = Disk(id="d1", name="a", capacity=0)
    vm = Vm(id="x", name="x", provider_type=ProviderType.OVA, disks=[empty])
    with pytest.raises(PermanentError, match="capacity must be positive"):
        subject().requests(command([target("d1")], vm))


def test_a_checksum_mismatch_names_both_digests() -> None:
    copy = DiskCopy(
        disk_id="d1",
        volume="vol",
        bytes_copied=10,
        source=Checksum(algorithm="ferry-sha256-tree-v1", digest="aa" * 32, bytes=10),
        target=Checksum(algorithm="ferry-sha256-tree-v1", digest="bb" * 32, bytes=10),
    )
    with pytest.raises(PermanentError) as failed:
        handlers._check_checksums(copy)
    assert "aa" * 32 in failed.value.reason and "bb" * 32 in failed.value.reason
    assert "disk d1" in failed.value.reason


@pytest.mark.parametrize(
    ("error", "outcome", "words"),
    [
        (copy_errors.NoSpaceError("no space left (ENOSPC)"), PermanentError, "ENOSPC"),
        (copy_errors.SourceIOError("I/O error (EIO)"), PermanentError, "EIO"),
        (copy_errors.SourceGoneError("the source disk shrank"), PermanentError, "shrank"),
        (WorkloadCrashed("the importer was killed by SIGKILL"), TemporaryError, "resum"),
        (InsufficientStorage("has 1 bytes free"), PermanentError, "bytes free"),
        (VmNotFound("web01/web01"), PermanentError, "not found"),
        (ProviderError("manifest digest mismatch"), PermanentError, "manifest"),
    ],
)
def test_errors_map_to_outcomes_that_keep_the_reason(
    error: Exception, outcome: type[Exception], words: str
) -> None:
    mapped = classify(error, "disk d1")
    assert isinstance(mapped, outcome)
    assert words in str(mapped) and "disk d1" in str(mapped)


def test_unknown_errors_are_left_to_the_router_retry() -> None:
    assert classify(KeyError("x"), "disk d1") is None
