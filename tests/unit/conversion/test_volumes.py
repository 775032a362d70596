"""A ConvertGuest names volumes; their paths come from the platform, never the message."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from ferry.conversion_service import volumes
from ferry.conversion_service.v2v import ConversionError
from ferry.platform.volumes import Phase, VolumeState, labels_for
from ferry.proto.conversion import ConversionMode, ConvertGuest
from ferry.proto.inventory import Disk, ProviderType, Vm, Volume, VolumeMode
from ferry.proto.volume import SourceRef, VolumeSource

VM = Vm(
    id="vm-1",
    name="small",
    provider_type=ProviderType.OVA,
    disks=[Disk(id="d1", name="d", capacity=1 << 20)],
)


def state(name: str, path: str, *, migration: str = "mig-1", vm: str = "vm-1") -> VolumeState:
    return VolumeState(
        namespace="default",
        name=name,
        source=VolumeSource.BLANK,
        labels=labels_for(migration, vm, "d1"),
        disk_id="d1",
        storage_class="local",
        volume_mode=VolumeMode.FILESYSTEM,
        access_modes=["ReadWriteOnce"],
        capacity=1 << 20,
        size=1 << 21,
        format="raw",
        phase=Phase.BOUND,
        path=path,
    )


class Records:
    def __init__(self, *states: VolumeState) -> None:
        self.states = states

    async def list_volumes(self, namespace: str, labels: Mapping[str, str]) -> list[VolumeState]:
        return [
            s
            for s in self.states
            if s.namespace == namespace and all(s.labels.get(k) == v for k, v in labels.items())
        ]


def command(*named: Volume, namespace: str = "default") -> ConvertGuest:
    return ConvertGuest(
        plan="p",
        migration="mig-1",
        vm="vm-1",
        step="convert",
        namespace=namespace,
        mode=ConversionMode.FULL,
        provider=SourceRef(provider="ova", type=ProviderType.OVA, url="/x"),
        inventory=VM,
        volumes=list(named),
    )


async def test_a_volume_named_by_id_gets_the_platforms_path() -> None:
    # Given a volume the platform holds for this VM, named without a path
    records = Records(state("small-d1", "/data/volumes/pv-1/disk.img"))
    # When it is resolved
    (volume,) = await volumes.resolve(
        records, command(Volume(disk_id="d1", name="small-d1", size=1))
    )
    # Then its path is the platform's
    assert volume.path == "/data/volumes/pv-1/disk.img" and volume.capacity == 1 << 20


async def test_a_path_outside_the_services_volumes_is_refused() -> None:
    # Given a command that names a real volume but aims its path at another file
    records = Records(state("small-d1", "/data/volumes/pv-1/disk.img"))
    bad = Volume(disk_id="d1", name="small-d1", size=1, path="/etc/passwd")
    # When it is resolved, Then it is refused
    with pytest.raises(ConversionError, match="path that is not the volume's"):
        await volumes.resolve(records, command(bad))


async def test_a_volume_of_another_vm_is_not_found() -> None:
    # Given a volume that exists, but for another migration's VM
    records = Records(state("other-d1", "/data/volumes/pv-9/disk.img", migration="mig-9"))
    # When a command names it, Then it does not exist for this VM
    with pytest.raises(ConversionError, match="does not exist"):
        await volumes.resolve(records, command(Volume(disk_id="d1", name="other-d1", size=1)))


@pytest.mark.parametrize("namespace", ["../..", "/etc", "Default", ""])
async def test_a_namespace_that_is_not_a_dns_label_is_refused(namespace: str) -> None:
    with pytest.raises(ConversionError, match="DNS-1123"):
        await volumes.resolve(Records(), command(namespace=namespace))
