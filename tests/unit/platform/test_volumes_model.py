"""Volume naming, labels and sizing: pure functions of the request."""

from __future__ import annotations

import re

import pytest

from ferry.platform import kubevirt, volumes
from ferry.platform.kubernetes import objects
from ferry.proto import label
from ferry.proto.inventory import VolumeMode

MiB = 1024 * 1024
GiB = 1024 * MiB


def test_filesystem_volume_gets_cdi_overhead_on_a_1mib_aligned_size() -> None:
    # Given a 10 GiB disk on a Filesystem volume with CDI's default 5.5 % overhead
    # When the requested size is computed
    size = volumes.required_size(10 * GiB, VolumeMode.FILESYSTEM)
    # Then it is ceil(10 GiB / 0.945), which leaves 10 GiB after the overhead
    assert size == -(-10 * GiB * 1000 // 945)
    assert size * (1 - 0.055) >= 10 * GiB


def test_unaligned_capacity_is_rounded_up_to_1mib_first() -> None:
    # Given a capacity one byte over 1 MiB
    # When sized for Block and for Filesystem
    block = volumes.required_size(MiB + 1, VolumeMode.BLOCK)
    fs = volumes.required_size(MiB + 1, VolumeMode.FILESYSTEM, overhead=0.0)
    # Then both start from 2 MiB; Block adds nothing
    assert block == 2 * MiB
    assert fs == 2 * MiB


@pytest.mark.parametrize("capacity", [0, -1])
def test_non_positive_capacity_is_rejected(capacity: int) -> None:
    with pytest.raises(volumes.VolumeError, match="positive"):
        volumes.required_size(capacity, VolumeMode.BLOCK)


def test_volume_name_is_deterministic_dns_and_distinct_per_disk() -> None:
    # Given the same migration and VM with two disks
    a = volumes.volume_name("mig-1", "vm-42", "disk-0", "My Web_Server")
    again = volumes.volume_name("mig-1", "vm-42", "disk-0", "My Web_Server")
    b = volumes.volume_name("mig-1", "vm-42", "disk-1", "My Web_Server")
    other_migration = volumes.volume_name("mig-2", "vm-42", "disk-0", "My Web_Server")
    # Then names repeat for the same disk, differ otherwise, and are DNS-1123 labels
    assert a == again
    assert len({a, b, other_migration}) == 3
    for name in (a, b, other_migration):
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name)
        assert len(name) <= 63


def test_labels_carry_migration_vm_and_disk() -> None:
    assert volumes.labels_for("m", "v", "d") == {
        "ferry.io/migration": "m",
        "ferry.io/vm": "v",
        "ferry.io/disk": "d",
    }
    assert label.DISK not in volumes.labels_for("m", "v")


def test_volumes_and_virtual_machines_share_the_ownership_labels() -> None:
    # Given the labels of a VM's volumes (either platform) and of its VirtualMachine
    local = volumes.labels_for("mig-1", "vm-42")
    kube = objects.volume_labels("mig-1", "vm-42")
    machine = kubevirt.Owner(plan="p", migration="mig-1", vm_id="vm-42").labels()

    # Then one selector finds them all: the same keys with the same values
    assert local == kube == {label.MIGRATION: "mig-1", label.VM: "vm-42"}
    assert local.items() <= machine.items()
