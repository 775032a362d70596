"""The whole target side of a VMware migration, minus the bus: copy, convert, build, boot.

The test guest's disk is copied into a volume (as an importer would), the
conversion-service's converter runs virt-v2v-in-place on it, and its inspection
goes into the VirtualMachine builder. The guest had no virtio drivers before;
after conversion the builder puts its disk on virtio-blk and its NIC on
virtio-net, and the guest must reach its login prompt that way.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from ferry.conversion_service import v2v
from ferry.conversion_service.settings import ConversionSettings
from ferry.platform import kubevirt, schemas
from ferry.platform.local import qemu
from ferry.platform.local.vms import LocalVms
from ferry.platform.vms import VmPhase
from ferry.proto.conversion import ConversionMode
from ferry.proto.inventory import NetworkTarget, Volume
from ferry.providers.ova.provider import OvaProvider

GUEST_BUILDER = Path(__file__).resolve().parents[2] / "guest" / "build_guest.py"


def guest_builder() -> Any:
    name = "ferry_test_guest"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, GUEST_BUILDER)
    assert spec is not None and spec.loader is not None, f"cannot load {GUEST_BUILDER}"
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@pytest.mark.timeout(3600)  # guest build (first run), virt-v2v and the boot, all under TCG
async def test_converted_guest_boots_on_virtio_to_its_login_prompt(tmp_path: Path) -> None:
    # Given the test guest's OVA, its inventory, and its disk copied into a volume
    guest = guest_builder().ensure_guest()
    ova_dir = tmp_path / "ova"
    ova_dir.mkdir()
    try:
        os.link(guest.ova, ova_dir / Path(guest.ova).name)
    except OSError:
        shutil.copyfile(guest.ova, ova_dir / Path(guest.ova).name)
    (source,) = await OvaProvider(ova_dir).inventory()
    (disk,) = source.disks
    volume_file = tmp_path / "volumes" / "disk-0.raw"
    volume_file.parent.mkdir()
    subprocess.run(["cp", "--sparse=always", str(guest.raw), str(volume_file)], check=True)
    volume = Volume(
        disk_id=disk.id,
        name="ferry-test-guest-disk-0",
        size=disk.capacity,
        path=str(volume_file),
        phase="Succeeded",
    )

    # When the conversion-service's converter converts it in place
    converter = v2v.Converter(ConversionSettings(), tmp_path / "conversion")
    job = v2v.Job(
        migration="mig-conv",
        vm_key="vm-conv",
        mode=ConversionMode.IN_PLACE,
        inventory=source,
        volumes=[volume],
        timeout_seconds=2400,
    )
    result = await converter.convert(job)
    # And the VirtualMachine is built from the inventory and the inspection
    manifest = kubevirt.build(
        source,
        inspection=result.inspection,
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
            f"\nconversion {result.seconds:.1f} s; converted guest booted on virtio "
            f"in {running.boot_seconds:.1f} s"
        )
    finally:
        await vms.delete_vm("migrated", name)
