"""The local platform's VirtualMachines against a real QEMU.

These use blank disks, which boot nothing, so they are fast: they prove the
manifest and record on disk, idempotent create and power-on, failure reporting
with the console tail, power off, delete, and that no QEMU outlives its record
(reconciliation after a vm-service restart). Booting a real guest is in
``test_qemu_boot.py``.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from ferry.platform import kubevirt, schemas
from ferry.platform.local import qemu
from ferry.platform.local.vms import LocalVms
from ferry.platform.vms import BootFailed, VmConflict, VmNotFound, VmPhase
from ferry.proto.inventory import (
    Disk,
    Firmware,
    Inspection,
    NetworkTarget,
    Nic,
    ProviderType,
    Vm,
    Volume,
)

MiB = 1 << 20
FAST = qemu.QemuSettings(powerdown_seconds=2.0, quit_seconds=2.0, poll_seconds=0.1)


def blank_disk(path: Path, fmt: str = "raw", size: int = 64 * MiB) -> Path:
    subprocess.run(
        ["qemu-img", "create", "-f", fmt, str(path), str(size)], check=True, capture_output=True
    )
    return path


def blank_vm(
    tmp: Path,
    name: str = "blank",
    *,
    firmware: Firmware = Firmware.BIOS,
    secure_boot: bool = False,
    owner: kubevirt.Owner | None = None,
    disks: int = 1,
) -> tuple[dict[str, Any], list[Volume]]:
    source = Vm(
        id=f"id-{name}",
        name=name,
        provider_type=ProviderType.OVA,
        memory_mib=128,
        firmware=firmware,
        secure_boot=secure_boot,
        disks=[Disk(id=f"d{i}", name=f"disk {i}", capacity=64 * MiB) for i in range(disks)],
        nics=[Nic(id="n1", name="nic", mac="52:54:00:AB:CD:01")],
    )
    volumes = [
        Volume(
            disk_id=d.id,
            name=f"{name}-{d.id}",
            size=d.capacity,
            path=str(blank_disk(tmp / f"{name}-{d.id}.raw")),
        )
        for d in source.disks
    ]
    manifest = kubevirt.build(
        source,
        inspection=None,
        volumes=volumes,
        networks=[NetworkTarget(nic_id="n1", type="pod")],
        target=kubevirt.Target(namespace="ns"),
        owner=owner or kubevirt.Owner(plan="p", migration="m", vm_id=source.id),
    )
    schemas.validate(manifest)
    return manifest, volumes


def qemu_alive(pid: int) -> bool:
    fields = Path(f"/proc/{pid}/stat").read_text().split() if Path(f"/proc/{pid}").exists() else []
    return bool(fields) and fields[2] not in ("Z", "X")


def record(data: Path, name: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads((data / "vms" / "ns" / f"{name}.json").read_text())
    return result


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
async def vms(data: Path) -> Any:
    platform = LocalVms(data, FAST)
    yield platform
    # No test may leave a QEMU behind.
    for info in [r for r in (data / "vms").glob("*/*.json")]:
        await platform.delete_vm(info.parent.name, info.stem)


async def test_create_writes_an_appliable_manifest_and_is_idempotent(
    tmp_path: Path, data: Path, vms: LocalVms
) -> None:
    # Given a built VirtualMachine
    manifest, volumes = blank_vm(tmp_path)

    # When it is created twice
    first = await vms.create_vm(manifest, volumes)
    second = await vms.create_vm(manifest, volumes)

    # Then the manifest is on disk as YAML, valid, with a JSON record beside it
    written = yaml.safe_load(Path(first.manifest).read_text())
    assert Path(first.manifest) == data / "vms" / "ns" / "blank.yaml"
    assert written == manifest
    schemas.validate(written)
    assert record(data, "blank")["labels"] == kubevirt.owner_labels(manifest)
    assert first.phase == VmPhase.STOPPED and not first.existed
    # And the second create returned the same VM
    assert second.existed and second.name == first.name


async def test_create_with_other_owner_conflicts(tmp_path: Path, vms: LocalVms) -> None:
    # Given a VM created for one migration
    manifest, volumes = blank_vm(tmp_path)
    await vms.create_vm(manifest, volumes)
    # When another migration builds a VM of the same name
    other, _ = blank_vm(tmp_path, owner=kubevirt.Owner(plan="p", migration="m2", vm_id="id-x"))
    # Then it is refused rather than taking over the first one
    with pytest.raises(VmConflict, match="ns/blank"):
        await vms.create_vm(other, volumes)


async def test_blank_disk_fails_with_console_tail_and_leaves_no_qemu(
    tmp_path: Path, data: Path, vms: LocalVms
) -> None:
    # Given a VM whose only disk is blank
    manifest, volumes = blank_vm(tmp_path)
    await vms.create_vm(manifest, volumes)

    # When it is powered on and watched with a short time limit
    started = await vms.start_vm("ns", "blank")
    pid = record(data, "blank")["process"]["pid"]
    with pytest.raises(BootFailed) as caught:
        await vms.wait_running("ns", "blank", time_limit=4)

    # Then it fails with the reason and the console tail, which shows the BIOS giving up
    assert started.phase == VmPhase.STARTING
    assert "did not boot within 4 s" in caught.value.reason
    assert any("Boot failed" in line for line in caught.value.console_tail), caught.value
    # And the failure is recorded, the manifest says Halted, and QEMU is gone
    info = await vms.get_vm("ns", "blank")
    assert info is not None and info.phase == VmPhase.FAILED
    assert record(data, "blank")["console_tail"] == caught.value.console_tail
    assert yaml.safe_load(Path(info.manifest).read_text())["spec"]["runStrategy"] == "Halted"
    assert not qemu_alive(pid)


async def test_second_power_on_does_not_start_a_second_qemu(
    tmp_path: Path, data: Path, vms: LocalVms
) -> None:
    # Given a created VM
    manifest, volumes = blank_vm(tmp_path)
    await vms.create_vm(manifest, volumes)

    # When it is powered on twice, concurrently, by two platform instances (two replicas)
    replica = LocalVms(data, FAST)
    await asyncio.gather(vms.start_vm("ns", "blank"), replica.start_vm("ns", "blank"))
    await vms.start_vm("ns", "blank")

    # Then exactly one QEMU runs for it
    ours = qemu.processes_under(vms.root)
    assert len(ours) == 1
    assert ours[0][0].pid == record(data, "blank")["process"]["pid"]
    # And the manifest now asks for a running VM
    info = await vms.get_vm("ns", "blank")
    assert info is not None
    assert yaml.safe_load(Path(info.manifest).read_text())["spec"]["runStrategy"] == "Always"


async def test_qemu_runs_the_spec(tmp_path: Path, data: Path, vms: LocalVms) -> None:
    # Given a two-disk VM from a VMware source (no inspection: SATA disks, e1000 NIC)
    manifest, volumes = blank_vm(tmp_path, disks=2)
    await vms.create_vm(manifest, volumes)

    # When it is powered on
    await vms.start_vm("ns", "blank")

    # Then the running QEMU has the disks on SATA, the NIC with its MAC, no display
    pid = record(data, "blank")["process"]["pid"]
    argv = qemu.cmdline(pid)
    joined = " ".join(argv)
    for volume in volumes:
        assert f"file={volume.path},format=raw" in joined
    assert "ide-hd,drive=drive0,bus=ide.0,bootindex=1" in argv
    assert "ide-hd,drive=drive1,bus=ide.1" in argv
    assert "e1000,netdev=net0,mac=52:54:00:ab:cd:01" in argv
    assert argv[argv.index("-display") + 1] == "none"
    assert argv[argv.index("-m") + 1] == "128M"
    assert "-accel" not in argv and ("accel=tcg" in joined or "accel=kvm" in joined)


async def test_power_off_and_delete(tmp_path: Path, data: Path, vms: LocalVms) -> None:
    # Given a started VM
    manifest, volumes = blank_vm(tmp_path)
    await vms.create_vm(manifest, volumes)
    await vms.start_vm("ns", "blank")
    pid = record(data, "blank")["process"]["pid"]

    # When it is powered off (the blank guest ignores ACPI, so quit follows)
    stopped = await vms.stop_vm("ns", "blank")

    # Then QEMU is gone and the VM is stopped; stopping again is harmless
    assert stopped.phase == VmPhase.STOPPED
    assert not qemu_alive(pid)
    assert (await vms.stop_vm("ns", "blank")).phase == VmPhase.STOPPED

    # When it is started again and deleted
    await vms.start_vm("ns", "blank")
    pid = record(data, "blank")["process"]["pid"]
    assert await vms.delete_vm("ns", "blank")

    # Then QEMU, manifest, record and runtime files are gone, and the volumes remain
    assert not qemu_alive(pid)
    assert not list((data / "vms" / "ns").iterdir())
    assert all(Path(v.path).exists() for v in volumes)
    assert await vms.get_vm("ns", "blank") is None
    assert not await vms.delete_vm("ns", "blank")
    with pytest.raises(VmNotFound):
        await vms.start_vm("ns", "blank")


async def test_restarted_service_reattaches_marks_dead_and_kills_orphans(
    tmp_path: Path, data: Path, vms: LocalVms
) -> None:
    # Given three running VMs
    for name in ("keep", "dies", "orphan"):
        manifest, volumes = blank_vm(tmp_path, name)
        await vms.create_vm(manifest, volumes)
        await vms.start_vm("ns", name)
    pids = {name: record(data, name)["process"]["pid"] for name in ("keep", "dies", "orphan")}
    # And, while the service is down, one QEMU dies and one VM's record is lost
    os.kill(pids["dies"], signal.SIGKILL)
    (data / "vms" / "ns" / "orphan.json").unlink()
    await asyncio.sleep(0.5)

    # When the service starts again and reconciles
    restarted = LocalVms(data, FAST)
    changes = await restarted.reconcile()

    # Then the live VM is re-attached, the dead one failed, the orphan QEMU killed
    keep = await restarted.get_vm("ns", "keep")
    dies = await restarted.get_vm("ns", "dies")
    assert keep is not None and keep.phase == VmPhase.STARTING
    assert qemu_alive(pids["keep"])
    assert dies is not None and dies.phase == VmPhase.FAILED
    assert dies.reason == "QEMU exited unexpectedly"
    await asyncio.sleep(0.5)
    assert not qemu_alive(pids["orphan"])
    assert any(str(pids["orphan"]) in change for change in changes)
    # And a power-on of the re-attached VM keeps the same QEMU
    await restarted.start_vm("ns", "keep")
    assert record(data, "keep")["process"]["pid"] == pids["keep"]


@pytest.mark.parametrize("secure_boot", [False, True])
async def test_uefi_vm_boots_ovmf_with_its_own_variable_store(
    tmp_path: Path, data: Path, vms: LocalVms, secure_boot: bool
) -> None:
    # Given a UEFI VM (with or without secure boot) on a blank disk
    manifest, volumes = blank_vm(tmp_path, firmware=Firmware.UEFI, secure_boot=secure_boot)
    await vms.create_vm(manifest, volumes)

    # When it is powered on
    await vms.start_vm("ns", "blank")

    # Then QEMU runs OVMF (the secure-boot build with SMM when asked) with a per-VM copy
    # of the variable store
    argv = qemu.cmdline(record(data, "blank")["process"]["pid"])
    joined = " ".join(argv)
    code = "OVMF_CODE_4M.secboot.fd" if secure_boot else "OVMF_CODE_4M.fd"
    assert f"if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/{code}" in joined
    store = data / "vms" / "ns" / "blank" / "OVMF_VARS.fd"
    assert f"unit=1,file={store}" in joined
    assert store.stat().st_size == (Path("/usr/share/OVMF/OVMF_VARS_4M.fd")).stat().st_size
    assert ("smm=on" in joined) is secure_boot
    assert ("property=secure,value=on" in joined) is secure_boot
    assert "sercon-port" not in joined  # SeaBIOS only


@pytest.mark.parametrize(
    ("disk_bus", "nic_model", "devices"),
    [
        ("virtio", "virtio", ["virtio-blk-pci,drive=drive0,bootindex=1", "virtio-net-pci"]),
        ("scsi", "e1000e", ["virtio-scsi-pci,id=scsi0", "scsi-hd,drive=drive0,bus=scsi0.0"]),
    ],
)
async def test_converted_guest_buses_are_accepted_by_qemu(
    tmp_path: Path, data: Path, vms: LocalVms, disk_bus: str, nic_model: str, devices: list[str]
) -> None:
    # Given a VM built from an inspection that found virtio drivers
    source = Vm(
        id="id-conv",
        name="conv",
        provider_type=ProviderType.VSPHERE,
        memory_mib=128,
        disks=[Disk(id="d0", name="os", capacity=64 * MiB)],
        nics=[Nic(id="n1", name="nic", mac="52:54:00:ab:cd:02")],
    )
    volume = Volume(
        disk_id="d0",
        name="conv-d0",
        size=64 * MiB,
        path=str(blank_disk(tmp_path / "conv.qcow2", "qcow2")),
        format="qcow2",
    )
    inspection = Inspection(virtio_drivers=True, disk_bus=disk_bus, nic_model=nic_model)
    manifest = kubevirt.build(
        source,
        inspection=inspection,
        volumes=[volume],
        networks=[NetworkTarget(nic_id="n1", type="multus", name="vlan10")],
        target=kubevirt.Target(namespace="ns"),
        owner=kubevirt.Owner(plan="p", migration="m", vm_id=source.id),
    )
    schemas.validate(manifest)
    await vms.create_vm(manifest, [volume])

    # When it is powered on
    await vms.start_vm("ns", "conv")

    # Then QEMU accepted the virtio/scsi devices and the qcow2 volume, and is running
    pid = record(data, "conv")["process"]["pid"]
    assert qemu_alive(pid)
    argv = qemu.cmdline(pid)
    joined = " ".join(argv)
    for device in devices:
        assert device in joined
    assert f"file={volume.path},format=qcow2" in joined
    assert f"{'e1000e' if nic_model == 'e1000e' else 'virtio-net-pci'},netdev=net0" in joined


def test_memory_quantities() -> None:
    # Given the quantity forms Kubernetes allows, When converted, Then MiB come out
    assert qemu.memory_mib("1024Mi") == 1024
    assert qemu.memory_mib("2Gi") == 2048
    assert qemu.memory_mib(str(512 * MiB)) == 512
    assert qemu.memory_mib("1G") == 954  # decimal gigabyte, rounded up
    with pytest.raises(qemu.SpecError):
        qemu.memory_mib("lots")
