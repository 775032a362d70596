"""The target side of a VMware migration after conversion, minus the bus: build, boot.

The test guest had no virtio drivers; once virt-v2v-in-place has converted it
(through the conversion-service's Converter, as a copied volume), the builder
puts its disk on virtio-blk and its NIC on virtio-net from the inspection, and
the guest must reach its login prompt that way.

The conversion itself is proven in tests/integration/conversion. Here its
result comes from tests/guest/converted_guest.py: converted once with the real
virt-v2v and cached, keyed by the test guest, the virt-v2v version and the
conversion's inputs, so a change to any of them converts again. The cached disk
is shared, so the VM boots a qcow2 overlay of it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from ferry.platform import kubevirt, schemas
from ferry.platform.local import qemu
from ferry.platform.local.vms import LocalVms
from ferry.platform.vms import VmPhase
from ferry.proto.inventory import NetworkTarget, Volume
from ferry.providers.ova.provider import OvaProvider
from ferry.testing import guestfiles

GUEST_DIR = Path(__file__).resolve().parents[2] / "guest"


@pytest.mark.slow
@pytest.mark.timeout(3600)  # first run: guest build and virt-v2v; then the boot, all under TCG
async def test_converted_guest_boots_on_virtio_to_its_login_prompt(tmp_path: Path) -> None:
    # Given the test guest's OVA and its inventory
    guest = guestfiles.load("ferry_test_guest", GUEST_DIR / "build_guest.py").ensure_guest()
    ova_dir = tmp_path / "ova"
    ova_dir.mkdir()
    # A copy: the provider refuses hard links, whose bytes may belong to a file elsewhere.
    shutil.copyfile(guest.ova, ova_dir / Path(guest.ova).name)
    (source,) = await OvaProvider(ova_dir).inventory()
    (disk,) = source.disks
    # And its disk converted in place by virt-v2v (cached), behind an overlay of our own
    converted = await guestfiles.load(
        "ferry_converted_guest", GUEST_DIR / "converted_guest.py"
    ).ensure_converted(guest, source)
    assert converted.inspection.virtio_drivers is True
    volume = Volume(
        disk_id=disk.id,
        name="ferry-test-guest-disk-0",
        size=disk.capacity,
        path=str(converted.overlay(tmp_path / "disk-0.qcow2")),
        format="qcow2",
        phase="Succeeded",
    )

    # When the VirtualMachine is built from the inventory and the inspection
    manifest = kubevirt.build(
        source,
        inspection=converted.inspection,
        volumes=[volume],
        networks=[NetworkTarget(nic_id=n.id, type="pod") for n in source.nics],
        target=kubevirt.Target(namespace="migrated", run=True),
        owner=kubevirt.Owner(plan="conv", migration="mig-conv", vm_id=source.id),
    )
    schemas.validate(manifest)
    domain = manifest["spec"]["template"]["spec"]["domain"]
    assert [d["disk"]["bus"] for d in domain["devices"]["disks"]] == ["virtio"]
    assert [i["model"] for i in domain["devices"]["interfaces"]] == ["virtio"] * len(source.nics)

    # And it is booted by the local platform
    settings = qemu.QemuSettings(boot_marker=guest.login_marker, powerdown_seconds=5)
    vms = LocalVms(tmp_path / "data", settings)
    name = manifest["metadata"]["name"]
    await vms.create_vm(manifest, [volume])
    try:
        await vms.start_vm("migrated", name)
        running = await vms.wait_running("migrated", name, 900)

        # Then the converted guest reached its login prompt from a virtio disk
        assert running.phase == VmPhase.RUNNING
        assert running.boot_seconds is not None and running.boot_seconds > 0
        console = Path(running.console).read_text(errors="replace")
        assert guest.login_marker in console
        written = yaml.safe_load(Path(running.manifest).read_text())
        assert written["spec"]["runStrategy"] == "Always"
        print(
            f"\nconversion {converted.seconds:.1f} s "
            f"({'now' if converted.built_now else 'cached'}, {converted.directory}); "
            f"converted guest booted on virtio in {running.boot_seconds:.1f} s"
        )
    finally:
        await vms.delete_vm("migrated", name)
    # And the cached disk the overlay reads from was left as the conversion wrote it
    assert converted.unchanged()
