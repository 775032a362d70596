"""Which stream of an export lease is which disk: never one disk's bytes for another."""

from __future__ import annotations

import pytest

from ferry.proto.inventory import Disk, ProviderType, Vm
from ferry.providers.base import ProviderError
from ferry.providers.vsphere.nfc import Device, match_disks

GIB = 1 << 30


def _vm(*sizes: int) -> Vm:
    disks = [
        Disk(id=str(2000 + i), name=f"Hard disk {i + 1}", capacity=s) for i, s in enumerate(sizes)
    ]
    return Vm(id="vm-42", name="db", provider_type=ProviderType.VSPHERE, disks=disks)


PATHS = {"2000": "VirtualLsiLogicController0:0", "2001": "VirtualLsiLogicController0:1"}


def test_disks_are_matched_by_controller_and_unit_whatever_the_order() -> None:
    # Given two disks of the same size, listed by the lease in the other order
    vm = _vm(GIB, GIB)
    devices = [
        Device("/vm-42/VirtualLsiLogicController0:1", "https://*/nfc/l/disk-1.vmdk", GIB),
        Device("/vm-42/VirtualLsiLogicController0:0", "https://*/nfc/l/disk-0.vmdk", GIB),
    ]

    # Then each disk gets the stream its key names
    found = match_disks(vm, devices, PATHS)
    assert found["2000"][0].endswith("disk-0.vmdk")
    assert found["2001"][0].endswith("disk-1.vmdk")


def test_keys_of_another_form_fall_back_to_device_order_checked_by_size() -> None:
    vm = _vm(GIB, 2 * GIB)
    devices = [Device("/vm-42/disk:0", "u0", GIB), Device("/vm-42/disk:1", "u1", 2 * GIB)]
    assert match_disks(vm, devices, PATHS) == {"2000": ("u0", GIB), "2001": ("u1", 2 * GIB)}
    # A size that contradicts the position is refused, not copied into the wrong disk
    swapped = [devices[1], devices[0]]
    with pytest.raises(ProviderError, match="offers 2147483648 bytes as disk 2000"):
        match_disks(vm, swapped, PATHS)


@pytest.mark.parametrize(
    ("keys", "why"),
    [
        (["/vm-42/VirtualLsiLogicController0:0"], "lists 1 disks, the VM has 2"),
        (
            ["/vm-42/VirtualLsiLogicController0:0", "/vm-42/VirtualLsiLogicController0:0"],
            "cannot all be told apart",
        ),
        (["/vm-42/VirtualLsiLogicController0:0", "/vm-42/other"], "cannot all be told apart"),
    ],
)
def test_a_lease_whose_disks_cannot_be_told_apart_is_refused(keys: list[str], why: str) -> None:
    devices = [Device(key, f"u{i}", 0) for i, key in enumerate(keys)]
    with pytest.raises(ProviderError, match=why):
        match_disks(_vm(GIB, GIB), devices, PATHS)
