"""The stand-in's KubeVirt boots a VirtualMachineInstance's guest under QEMU.

Objects go in through kubernetes-asyncio (the client Ferry uses), so the API server
admits them against KubeVirt's and CDI's real schemas; the instance's status is
checked against KubeVirt's schema too. The guest here is a small blank disk: QEMU
really starts, its firmware finds nothing to boot, and the instance fails with that
reason; a bootable guest reaching its login prompt is the flow 3 cluster e2e's.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ferry.platform.kubernetes.client import DATA_VOLUME, PVC, VIRTUAL_MACHINE, KubeClient
from ferry.testing.cluster import api, launcher, resources
from ferry.testing.cluster.cluster import Cluster
from ferry.testing.stack import processes_named

pytestmark = pytest.mark.timeout(300)

NS = "boot"


def virtual_machine(name: str, volume: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachine",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "runStrategy": "Always",
            "template": {
                "spec": {
                    "domain": {
                        "machine": {"type": "q35"},
                        "cpu": {"sockets": 1, "cores": 1, "threads": 1},
                        "memory": {"guest": "128Mi"},
                        "devices": {"disks": [{"name": "root", "disk": {"bus": "sata"}}]},
                    },
                    "terminationGracePeriodSeconds": 0,
                    "volumes": [{"name": "root", **volume}],
                }
            },
        },
    }


def blank_volume(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "cdi.kubevirt.io/v1beta1",
        "kind": "DataVolume",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "source": {"blank": {}},
            "storage": {
                "storageClassName": "immediate",
                "resources": {"requests": {"storage": "16Mi"}},
            },
        },
    }


async def vmi_phase(
    cluster: Cluster, name: str, wanted: Callable[[str | None], bool], seconds: float = 120
) -> dict[str, Any]:
    """The instance once its phase is one ``wanted`` accepts."""
    return await cluster.wait_for(
        resources.VMI, NS, name, lambda o: wanted((o.get("status") or {}).get("phase")), seconds
    )


async def booting(cluster: Cluster, client: KubeClient, name: str, code: bytes) -> None:
    """A DataVolume whose boot sector is ``code``, and a running VirtualMachine on it."""
    await client.create(DATA_VOLUME, blank_volume(name))
    await cluster.wait_for(
        resources.DATA_VOLUME,
        NS,
        name,
        lambda o: (o.get("status") or {}).get("phase") == "Succeeded",
    )
    write_boot_sector(cluster, name, code)
    await client.create(VIRTUAL_MACHINE, virtual_machine(name, {"dataVolume": {"name": name}}))


def qemus_under(root: Path) -> list[tuple[int, str]]:
    return [p for p in processes_named("qemu-system-x86_64") if str(root) in p[1]]


@pytest.mark.parametrize(
    "firmware", [{}, {"bootloader": {"efi": {"secureBoot": False}}}], ids=["bios", "efi"]
)
async def test_an_instance_whose_disk_holds_no_os_fails_with_a_reason_and_leaves_no_qemu(
    cluster: Cluster, client: KubeClient, firmware: dict[str, Any]
) -> None:
    # Given a blank DataVolume, bound at once
    await client.create(DATA_VOLUME, blank_volume("blank"))
    changes = cluster.store.subscribe()
    # When a running VirtualMachine boots from it
    manifest = virtual_machine("blank", {"dataVolume": {"name": "blank"}})
    manifest["spec"]["template"]["spec"]["domain"]["firmware"] = firmware  # SeaBIOS or OVMF
    await client.create(VIRTUAL_MACHINE, manifest)
    vmi = await vmi_phase(cluster, "blank", lambda p: p in ("Failed", "Succeeded"), seconds=180)

    # Then the instance went through upstream's phases and failed with the reason
    phases: list[str] = []
    while not changes.empty():
        _, kind, obj = changes.get_nowait()
        phase = (obj.get("status") or {}).get("phase")
        if kind == resources.VMI and phase and phase not in phases[-1:]:
            phases.append(phase)
    assert phases == ["Pending", "Scheduling", "Scheduled", "Running", "Failed"], phases
    assert vmi["status"].get("reason") == "NoBootableDevice", vmi["status"]
    [ready] = vmi["status"]["conditions"]
    assert (ready["type"], ready["status"]) == ("Ready", "False")
    assert "bootable" in ready["message"]
    api.admit(resources.VMI, vmi)  # the status as KubeVirt's schema has it
    # And QEMU really ran: its console holds the firmware's words, and it is gone
    assert "Boot" in cluster.launcher.console(NS, "blank").read_text(errors="replace")
    assert qemus_under(cluster.root) == []
    # And the VirtualMachine says so, once its controller has seen the instance fail
    await printed(cluster, "blank", "CrashLoopBackOff")

    # And deleting the VirtualMachine removes its instance
    await client.delete(VIRTUAL_MACHINE, NS, "blank")
    await gone(cluster, "blank")


async def printed(cluster: Cluster, name: str, wanted: str) -> None:
    """Wait until the VirtualMachine's ``printableStatus`` is ``wanted``: its controller
    reconciles it a moment after the instance's phase changed."""

    def printable() -> str:
        vm = cluster.get(resources.VIRTUAL_MACHINE, NS, name) or {}
        return str((vm.get("status") or {}).get("printableStatus", ""))

    deadline = asyncio.get_running_loop().time() + 30
    while printable() != wanted:
        assert asyncio.get_running_loop().time() < deadline, printable()
        await asyncio.sleep(0.05)


async def gone(cluster: Cluster, name: str) -> None:
    while cluster.get(resources.VMI, NS, name) is not None:
        await asyncio.sleep(0.05)


async def test_deleting_the_vm_of_a_running_guest_stops_its_qemu(
    cluster: Cluster, client: KubeClient
) -> None:
    # Given a disk whose boot sector loops forever: the guest boots and keeps running
    await booting(cluster, client, "looping", b"\xeb\xfe")  # jmp $
    await vmi_phase(cluster, "looping", lambda p: p == "Running")
    assert len(qemus_under(cluster.root)) == 1

    # When the VirtualMachine is deleted
    await client.delete(VIRTUAL_MACHINE, NS, "looping")

    # Then its instance is gone only once QEMU is, and no QEMU is left
    await gone(cluster, "looping")
    assert qemus_under(cluster.root) == []
    assert cluster.launcher.guests() == []


async def test_an_instance_whose_guest_powers_off_succeeds(
    cluster: Cluster, client: KubeClient
) -> None:
    # Given a disk whose boot sector powers the machine off through q35's ACPI
    # (PM1a control at 0x604: SLP_EN with S5, the sleep type QEMU's tables give S5)
    code = b"\xba\x04\x06" + b"\xb8\x00\x20" + b"\xef" + b"\xeb\xfe"  # out 0x604, 0x2000
    # When a running VirtualMachine boots from it
    await booting(cluster, client, "off", code)

    # Then its instance ends Succeeded, the VM is Stopped, and QEMU is gone
    vmi = await vmi_phase(cluster, "off", lambda p: p in ("Failed", "Succeeded"))
    assert vmi["status"]["phase"] == "Succeeded", vmi["status"]
    await printed(cluster, "off", "Stopped")
    assert qemus_under(cluster.root) == []


async def test_an_instance_whose_qemu_cannot_start_fails_with_qemus_words(
    cluster: Cluster, client: KubeClient
) -> None:
    # Given a VirtualMachine asking for more vCPUs than QEMU's q35 machine has
    await client.create(DATA_VOLUME, blank_volume("huge"))
    manifest = virtual_machine("huge", {"dataVolume": {"name": "huge"}})
    manifest["spec"]["template"]["spec"]["domain"]["cpu"]["cores"] = 5000
    # When it is started
    await client.create(VIRTUAL_MACHINE, manifest)

    # Then its instance fails, saying why in QEMU's words, and no QEMU is left
    vmi = await vmi_phase(cluster, "huge", lambda p: p in ("Failed", "Succeeded"))
    assert vmi["status"].get("reason") == "LaunchFailed", vmi["status"]
    [ready] = vmi["status"]["conditions"]
    assert "CPUs" in ready["message"], ready
    assert qemus_under(cluster.root) == []


async def test_an_instance_whose_qemu_dies_fails_qemu_exited(
    cluster: Cluster, client: KubeClient
) -> None:
    # Given a guest that boots and keeps running
    await booting(cluster, client, "dies", b"\xeb\xfe")  # jmp $
    await vmi_phase(cluster, "dies", lambda p: p == "Running")
    # When its QEMU is killed
    [(pid, _)] = qemus_under(cluster.root)
    os.kill(pid, signal.SIGKILL)

    # Then the instance fails, saying QEMU exited
    vmi = await vmi_phase(cluster, "dies", lambda p: p != "Running", seconds=60)
    assert (vmi["status"]["phase"], vmi["status"].get("reason")) == ("Failed", "QemuExited")


def write_boot_sector(cluster: Cluster, name: str, code: bytes) -> None:
    claim = cluster.get(resources.PVC, NS, name) or {}
    pv = cluster.get(resources.PV, "", claim["spec"]["volumeName"]) or {}
    with launcher.disk_path(pv).open("r+b") as disk:
        disk.write(code + bytes(510 - len(code)) + b"\x55\xaa")


async def test_an_instance_whose_claim_is_not_bound_stays_pending_and_starts_nothing(
    cluster: Cluster, client: KubeClient
) -> None:
    # Given a claim on WaitForFirstConsumer storage that no pod consumes
    await client.create(
        PVC,
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": "unbound", "namespace": NS},
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "storageClassName": "wffc",
                "resources": {"requests": {"storage": "16Mi"}},
            },
        },
    )
    # When a running VirtualMachine uses it
    await client.create(
        VIRTUAL_MACHINE,
        virtual_machine("unbound", {"persistentVolumeClaim": {"claimName": "unbound"}}),
    )
    vmi = await cluster.wait_for(resources.VMI, NS, "unbound", lambda o: "status" in o)
    cluster.reconcile()  # every controller has had its say

    # Then the instance is Pending, the VM waits for binding, and no guest was started
    vmi = cluster.get(resources.VMI, NS, "unbound") or {}
    assert vmi["status"]["phase"] == "Pending"
    vm = cluster.get(resources.VIRTUAL_MACHINE, NS, "unbound") or {}
    assert vm["status"]["printableStatus"] == "WaitingForVolumeBinding"
    assert cluster.launcher.guests() == []
    assert not cluster.launcher.console(NS, "unbound").exists()
