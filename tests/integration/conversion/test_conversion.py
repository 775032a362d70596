"""Real virt-v2v runs on the test guest: in-place, failures, time limit, cancel.

Each conversion takes minutes under TCG; they are marked slow. The in-place one is the
converted-guest cache's (tests/guest/converted_guest.py), which other tests boot: it
runs again whenever anything it depends on changed. The full mode, through the bus, is
in test_handler.py.
"""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path
from typing import Any

import pytest
from conversion_harness import (
    blank_volumes,
    helpers_running,
    initramfs_modules,
    load_converted_guest,
)

from ferry.conversion_service import v2v
from ferry.conversion_service.progress import Progress
from ferry.conversion_service.settings import ConversionSettings
from ferry.platform.local.processes import LocalWorkloads
from ferry.proto.conversion import ConversionMode
from ferry.proto.inventory import Vm, Volume
from ferry.providers.ova.provider import OvaProvider
from ferry.testing.digests import file_sha256 as sha256

pytestmark = [pytest.mark.slow]
CONVERTED = load_converted_guest()


def job(vm: Vm, volumes: list[Volume], mode: ConversionMode, **kwargs: Any) -> v2v.Job:
    return v2v.Job(
        migration="mig-1",
        vm_key="vm-1",
        mode=mode,
        inventory=vm,
        volumes=volumes,
        timeout_seconds=kwargs.pop("timeout_seconds", 1800),
        **kwargs,
    )


@pytest.mark.timeout(1800)
async def test_in_place_conversion_of_copied_disk(guest: Any, source_vm: Vm) -> None:
    # Given the guest's disk as an importer copies it (no virtio in its initramfs)
    env = await v2v.Converter(ConversionSettings(), Path("."), LocalWorkloads()).environment()
    assert initramfs_modules(str(guest.raw), env) == []

    # When virt-v2v-in-place converts it through the Converter: the conversion the
    # converted-guest cache keeps, made again whenever the conversion-service's code, the
    # local workload runner, virt-v2v or the guest changed (its key), else taken from there
    done = await CONVERTED.ensure_converted(guest, source_vm)

    # Then virt-inspector finds the OS, virt-v2v installed virtio drivers
    inspection = done.inspection
    assert (inspection.os_type, inspection.os_distro) == ("linux", "debian")
    assert inspection.os_version.startswith("12.")
    assert inspection.virtio_drivers is True
    assert (inspection.disk_bus, inspection.nic_model) == ("virtio", "virtio")
    assert inspection.firmware is not None and inspection.firmware.value == "bios"
    # And the converted initramfs now carries the virtio block driver
    modules = initramfs_modules(str(done.disk), env)
    assert "virtio_blk.ko" in modules, modules
    # And progress named virt-v2v's stages; the full log was kept
    assert "Inspecting the source" in done.stages
    assert any(stage.startswith("Converting") for stage in done.stages)
    log = (done.directory / CONVERTED.LOG_NAME).read_bytes()
    assert b"This guest has virtio drivers installed" in log
    assert not helpers_running()
    built = "converted now" if done.built_now else "from the cache"
    print(f"in-place conversion took {done.seconds:.1f}s ({built})")


@pytest.mark.timeout(900)
async def test_disk_without_an_os_fails_with_a_clear_reason(
    tmp_path: Path, source_vm: Vm, settings: ConversionSettings
) -> None:
    # Given a "copied" disk that holds a filesystem but no operating system
    disk = tmp_path / "blank.img"
    subprocess.run(
        ["guestfish", "-N", f"{disk}=fs:ext4:64M", "exit"],
        check=True,
        capture_output=True,
        env=await v2v.Converter(settings, tmp_path, LocalWorkloads()).environment(),
    )
    volumes = [
        Volume(
            disk_id=source_vm.disks[0].id, name="blank", size=disk.stat().st_size, path=str(disk)
        )
    ]
    before = sha256(disk)
    converter = v2v.Converter(settings, tmp_path / "data", LocalWorkloads())

    # When it is converted in place
    with pytest.raises(v2v.ConversionError) as raised:
        await converter.convert(job(source_vm, volumes, ConversionMode.IN_PLACE))

    # Then the reason is in the user's words, virt-v2v's own line leads the detail,
    # and the log is kept for the rest
    error = raised.value
    assert error.reason.startswith("no operating system was found on the source disks")
    assert "inspection could not detect the source guest" in error.detail[0]
    assert len(error.detail) <= settings.error_lines
    assert not any(line.startswith("libguestfs:") for line in error.detail)
    assert error.log is not None and error.log.stat().st_size > 10_000
    # And the disk was not modified
    assert sha256(disk) == before
    assert not helpers_running()


@pytest.mark.timeout(900)
async def test_corrupted_ova_fails_and_leaves_volumes_and_source_alone(
    tmp_path: Path, guest: Any, settings: ConversionSettings
) -> None:
    # Given a copy of the OVA whose disk data was damaged after its manifest was made
    folder = tmp_path / "ova"
    folder.mkdir()
    damaged = folder / Path(guest.ova).name
    data = bytearray(Path(guest.ova).read_bytes())
    middle = len(data) // 2
    data[middle : middle + 4096] = bytes(4096)
    damaged.write_bytes(bytes(data))
    provider = OvaProvider(folder, verify_digests=False)
    (vm,) = await provider.inventory()
    volumes = blank_volumes(tmp_path / "volumes", vm)
    source_digest = sha256(damaged)
    converter = v2v.Converter(settings, tmp_path / "data", LocalWorkloads())

    # When virt-v2v is asked to convert it
    with pytest.raises(v2v.ConversionError) as raised:
        await converter.convert(job(vm, volumes, ConversionMode.FULL, source=provider))

    # Then it fails saying the disk does not match its manifest
    reason = raised.value.reason
    assert "checksum" in reason or "manifest" in reason, (reason, raised.value.detail)
    # And the source is untouched, and nothing was written into the volumes
    assert sha256(damaged) == source_digest
    for volume in volumes:
        with open(volume.path, "rb") as handle:
            assert handle.read(1 << 20) == bytes(1 << 20)
    assert not helpers_running()


@pytest.mark.timeout(600)
async def test_time_limit_kills_virt_v2v_and_its_appliance(
    tmp_path: Path, provider: OvaProvider, source_vm: Vm, settings: ConversionSettings
) -> None:
    # Given a full conversion with a time limit far shorter than it needs
    volumes = blank_volumes(tmp_path / "volumes", source_vm)
    converter = v2v.Converter(settings, tmp_path / "data", LocalWorkloads())
    started = asyncio.get_running_loop().time()

    # When the limit passes
    with pytest.raises(v2v.ConversionTimedOut) as raised:
        await converter.convert(
            job(source_vm, volumes, ConversionMode.FULL, source=provider, timeout_seconds=45)
        )

    # Then it fails with that reason, promptly, and no helper survives
    assert "time limit of 45s" in raised.value.reason
    assert asyncio.get_running_loop().time() - started < 45 + 60
    assert not helpers_running()
    assert b"ferry: failed: conversion exceeded its time limit" in raised.value.log.read_bytes()


@pytest.mark.timeout(600)
async def test_cancel_mid_conversion_leaves_no_process(
    tmp_path: Path, provider: OvaProvider, source_vm: Vm, settings: ConversionSettings
) -> None:
    # Given a full conversion whose appliance is up (virt-v2v is inspecting the guest)
    volumes = blank_volumes(tmp_path / "volumes", source_vm)
    converter = v2v.Converter(settings, tmp_path / "data", LocalWorkloads())
    inspecting = asyncio.Event()

    async def progress(update: Progress) -> None:
        if update.stage == "Inspecting the source":
            inspecting.set()

    task = asyncio.create_task(
        converter.convert(job(source_vm, volumes, ConversionMode.FULL, source=provider), progress)
    )
    await asyncio.wait_for(inspecting.wait(), 300)
    running = helpers_running()
    assert any("qemu-system" in line for line in running), running

    # When the conversion is cancelled
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    # Then virt-v2v, nbdkit and the QEMU appliance are all gone, and so is the run's directory
    assert not helpers_running()
    assert not list(Path(settings.work_dir).glob("ferry-v2v-*/out/guest-sda"))
    log = (tmp_path / "data" / "logs" / "conversion" / "mig-1" / "vm-1.log").read_bytes()
    assert b"ferry: canceled" in log
