"""The kubernetes platform against kmock, an in-process API stand-in: VirtualMachines
(create, conflicts, start, wait, stop, delete).

What the stand-in is, what it proves and what it does not: ``kubekit``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import kmock
import msgspec
import pytest
from kubekit import (
    NS,
    OWNER,
    VM_PATH,
    VMI_PATH,
    Controller,
    created,
    make_platform,
    manifest,
    request,
    sent,
)

from ferry.platform.kubernetes.platform import KubernetesPlatform
from ferry.platform.schemas import SchemaValidationError
from ferry.platform.vms import BootFailed, VmConflict, VmPhase
from ferry.proto.inventory import (
    VolumeTarget,
)


async def test_create_vm_sends_a_valid_virtualmachine_once(
    platform: KubernetesPlatform, cluster: kmock.KubernetesEmulator
) -> None:
    # Given a built VirtualMachine
    # When it is created twice (a redelivered command)
    first = await platform.create_vm(manifest(), [])
    again = await platform.create_vm(manifest(), [])

    # Then one valid object was sent, and the second call found it by its labels
    [vm] = created(cluster)
    assert vm["kind"] == "VirtualMachine"
    assert vm["spec"]["runStrategy"] == "Halted"
    assert (first.existed, again.existed) == (False, True)
    assert first.phase == VmPhase.STOPPED
    found = await platform.find_vm(NS, OWNER.labels())
    assert found is not None and found.name == "web01"


async def test_create_vm_refuses_a_name_taken_by_another_owner(
    platform: KubernetesPlatform, controller: Controller
) -> None:
    # Given a VM called web01 that belongs to someone else
    await controller.post(VM_PATH, {"metadata": {"name": "web01", "labels": {"app": "x"}}})

    # When Ferry creates its web01
    # Then it gets a conflict, not someone else's VM
    with pytest.raises(VmConflict, match="web01"):
        await platform.create_vm(manifest(), [])


async def test_a_409_on_vm_create_returns_the_vm_that_won_the_race(
    platform: KubernetesPlatform,
    cluster: kmock.KubernetesEmulator,
    controller: Controller,
) -> None:
    # Given our own VM exists (an earlier attempt) but the list Ferry reads is stale
    await controller.post(VM_PATH, manifest())
    stale: dict[str, list[Any]] = {"items": []}
    cluster[kmock.action.LIST, kmock.resource("kubevirt.io/v1/virtualmachines")] << stale

    # When Ferry creates it
    info = await platform.create_vm(manifest(), [])

    # Then the create got 409, and the VM there (same owner labels) is returned as existing
    assert len(sent(cluster, "post")) == 1
    assert info.existed is True
    assert info.labels == OWNER.labels() | info.labels


async def test_an_invalid_volume_is_never_sent(
    platform: KubernetesPlatform, cluster: kmock.KubernetesEmulator
) -> None:
    # Given a storage map with an access mode the API does not know
    bad = msgspec.structs.replace(
        request(),
        target=VolumeTarget(disk_id="d1", storage_class="fast", access_modes=["RWO"]),
    )

    # When the volume is ensured
    # Then validation refuses it and the API server saw no create
    with pytest.raises(SchemaValidationError, match="RWO"):
        await platform.ensure_volume(bad)
    assert sent(cluster, "post") == []


async def test_an_invalid_manifest_is_never_sent(
    platform: KubernetesPlatform, cluster: kmock.KubernetesEmulator
) -> None:
    # Given a VirtualMachine with a typo in runStrategy's name
    broken = manifest()
    broken["spec"]["runstrategy"] = broken["spec"].pop("runStrategy")

    # When it is created
    # Then validation refuses it and the API server saw no create
    with pytest.raises(SchemaValidationError, match="runstrategy"):
        await platform.create_vm(broken, [])
    assert sent(cluster, "post") == []


async def test_start_wait_stop_delete(
    platform: KubernetesPlatform,
    cluster: kmock.KubernetesEmulator,
    controller: Controller,
) -> None:
    # Given a created, halted VM
    await platform.create_vm(manifest(), [])

    async def kubevirt_controller() -> None:
        # KubeVirt sees runStrategy Always, makes the instance, which boots and gets Ready.
        while (await controller.get(f"{VM_PATH}/web01") or {})["spec"]["runStrategy"] != "Always":
            await asyncio.sleep(0.01)
        await controller.post(
            VMI_PATH, {"metadata": {"name": "web01"}, "status": {"phase": "Scheduled"}}
        )
        await asyncio.sleep(0.1)
        ready = {"type": "Ready", "status": "True"}
        await controller.patch(
            f"{VMI_PATH}/web01", {"status": {"phase": "Running", "conditions": [ready]}}
        )

    playing = asyncio.create_task(kubevirt_controller())

    # When it is started and waited for
    started = await platform.start_vm(NS, "web01")
    running = await platform.wait_running(NS, "web01", time_limit=5)
    await playing

    # Then the start was a merge patch of runStrategy, and the instance is running
    [patch] = sent(cluster, "patch")
    assert patch.headers["Content-Type"] == "application/merge-patch+json"
    assert patch.data == {"spec": {"runStrategy": "Always"}}
    assert started.phase == VmPhase.STARTING
    assert running.phase == VmPhase.RUNNING
    # And starting again changes nothing
    await platform.start_vm(NS, "web01")
    assert len(sent(cluster, "patch")) == 1

    async def shutdown() -> None:
        while (await controller.get(f"{VM_PATH}/web01") or {})["spec"]["runStrategy"] != "Halted":
            await asyncio.sleep(0.01)
        await controller.delete(f"{VMI_PATH}/web01")

    playing = asyncio.create_task(shutdown())

    # When it is stopped
    stopped = await platform.stop_vm(NS, "web01")
    await playing

    # Then it is Halted and its instance is gone
    assert stopped.phase == VmPhase.STOPPED
    assert sent(cluster, "patch")[-1].data == {"spec": {"runStrategy": "Halted"}}

    # When it is deleted, twice
    # Then the first deletes and the second finds nothing
    assert await platform.delete_vm(NS, "web01") is True
    assert await platform.delete_vm(NS, "web01") is False
    assert await platform.get_vm(NS, "web01") is None


async def test_a_failed_instance_fails_the_wait(
    platform: KubernetesPlatform, controller: Controller
) -> None:
    # Given a started VM whose instance fails
    await platform.create_vm(manifest(run=True), [])
    await controller.post(
        VMI_PATH, {"metadata": {"name": "web01"}, "status": {"phase": "Failed", "reason": "boom"}}
    )

    # When it is waited for
    # Then the wait fails with KubeVirt's reason
    with pytest.raises(BootFailed, match="boom"):
        await platform.wait_running(NS, "web01", time_limit=5)


async def test_an_instance_that_never_runs_times_out(
    platform: KubernetesPlatform, controller: Controller
) -> None:
    # Given a started VM whose instance stays Scheduling
    await platform.create_vm(manifest(run=True), [])
    await controller.post(
        VMI_PATH, {"metadata": {"name": "web01"}, "status": {"phase": "Scheduling"}}
    )

    # When it is waited for with a short limit
    # Then it fails, naming the limit and the last phase seen
    with pytest.raises(BootFailed, match=r"within 0.5 s \(instance: Scheduling\)"):
        await platform.wait_running(NS, "web01", time_limit=0.5)


async def test_stop_forces_an_instance_that_does_not_shut_down(
    platform: KubernetesPlatform,
    cluster: kmock.KubernetesEmulator,
    controller: Controller,
) -> None:
    # Given a running VM whose guest ignores ACPI shutdown
    await platform.create_vm(manifest(run=True), [])
    await controller.post(VMI_PATH, {"metadata": {"name": "web01"}, "status": {"phase": "Running"}})

    # When it is stopped with a short stop_timeout
    impatient = make_platform(cluster, stop_timeout=0.3)
    try:
        await impatient.stop_vm(NS, "web01")
    finally:
        await impatient.aclose()

    # Then after the limit its instance was deleted with no grace period
    [forced] = [r for r in sent(cluster, "delete") if "/virtualmachineinstances/" in r.url.path]
    assert forced.data["gracePeriodSeconds"] == 0
