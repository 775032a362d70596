"""A real guest boots under the local platform's QEMU and reaches its login prompt.

The guest is the project's unconverted test guest (tests/guest): a Debian disk
as it comes off VMware, without virtio drivers, so it must boot from SATA.
That is exactly what the builder chooses for a VMware VM without inspection
data, so this test also proves that the fallback bus boots.
"""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from ferry.platform import kubevirt, schemas
from ferry.platform.local import qemu
from ferry.platform.local.vms import LocalVms
from ferry.platform.vms import VmPhase
from ferry.proto.inventory import Disk, NetworkTarget, Nic, ProviderType, Vm, Volume
from ferry.testing import guestfiles

GUEST_BUILDER = Path(__file__).resolve().parents[2] / "guest" / "build_guest.py"
BOOT_LIMIT_SECONDS = 600


def guest_builder() -> ModuleType:
    """Load tests/guest/build_guest.py by path (tests/ is not a package)."""
    return guestfiles.load("ferry_test_guest", GUEST_BUILDER)


@pytest.mark.slow
@pytest.mark.timeout(3600)  # the first run may build the guest; the boot itself is TCG
async def test_unconverted_guest_boots_from_sata_to_its_login_prompt(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Given the test guest's disk behind a copy-on-write overlay (the cache stays pristine)
    guest: Any = guest_builder().ensure_guest()
    overlay = tmp_path / "guest.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-f", "qcow2", "-b", str(guest.raw), "-F", "raw", str(overlay)],
        check=True,
        capture_output=True,
    )
    source = Vm(
        id="vm-guest",
        name=guest.vm_name,
        provider_type=ProviderType.OVA,
        memory_mib=512,
        disks=[Disk(id="disk-1", name="Hard disk 1", capacity=guest.disk_virtual_size, bus="scsi")],
        nics=[Nic(id="nic-1", name="Network adapter 1", mac=guest.mac_address or "")],
    )
    volumes = [
        Volume(
            disk_id="disk-1",
            name="ferry-test-guest-disk-1",
            size=guest.disk_virtual_size,
            path=str(overlay),
            format="qcow2",
        )
    ]
    manifest = kubevirt.build(
        source,
        inspection=None,
        volumes=volumes,
        networks=[NetworkTarget(nic_id="nic-1", type="pod")],
        target=kubevirt.Target(namespace="migrated", run=True),
        owner=kubevirt.Owner(plan="boot", migration="boot-1", vm_id=source.id),
    )
    schemas.validate(manifest)
    # The test guest answers the ACPI power button (systemd-logind), so the stop is a
    # clean power-off, well within the grace period.
    settings = qemu.QemuSettings(boot_marker=guest.login_marker, powerdown_seconds=90)
    vms = LocalVms(tmp_path / "data", settings)
    await vms.create_vm(manifest, volumes)

    try:
        # When it is powered on and watched
        await vms.start_vm("migrated", "ferry-test-guest")
        running = await vms.wait_running("migrated", "ferry-test-guest", BOOT_LIMIT_SECONDS)

        # Then the guest reached its login prompt on the serial console
        assert running.phase == VmPhase.RUNNING
        assert running.boot_seconds is not None and running.boot_seconds > 0
        console = Path(running.console).read_text(errors="replace")
        assert guest.login_marker in console
        print(f"\nboot to '{guest.login_marker}' took {running.boot_seconds:.1f} s")
        spec = yaml.safe_load(Path(running.manifest).read_text())
        assert spec["spec"]["template"]["spec"]["domain"]["devices"]["disks"][0]["disk"] == {
            "bus": "sata"
        }
        # And it powers itself off when the power button is pressed (no forced quit)
        with caplog.at_level(logging.INFO, logger="ferry.platform.local.vms"):
            stopped = await vms.stop_vm("migrated", "ferry-test-guest")
        assert stopped.phase == VmPhase.STOPPED
        assert "stopped migrated/ferry-test-guest (ACPI)" in caplog.text
    finally:
        await vms.delete_vm("migrated", "ferry-test-guest")
