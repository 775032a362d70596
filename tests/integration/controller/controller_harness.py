"""What the controller's integration tests run against, besides a real nats-server.

* :class:`FileProvider` — a source whose inventory and power states live in files
  (power states and their log replaced atomically, so a kill -9 never tears them),
  so the controller (in this process or a child) really powers VMs off and on,
  and the test reads what happened. (The real OVA provider's power operations
  are no-ops; a source that has power is needed to see it restored.)
* :class:`Services` — the volume, conversion and vm services replaced by real
  Routers on the real bus, whose handlers complete, fail or hold each step as
  the test's script says, and record every run.
* :func:`apply` — writes objects into the objects bucket as ``ferry apply`` does.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import msgspec

from ferry.bus import Bus, Context, PermanentError, Router, TopologySettings
from ferry.proto import conversion, objects, subjects, vm, volume
from ferry.proto.base import Command
from ferry.proto.inventory import (
    Checksum,
    Disk,
    DiskCopy,
    Inspection,
    Nic,
    PowerState,
    ProviderType,
    Vm,
    Volume,
)
from ferry.proto.subjects import Bucket, Service
from ferry.proto.volume import SourceRef

TOPOLOGY = TopologySettings(ack_wait_seconds=2.0, max_deliver=2, duplicate_window_seconds=120)
API = objects.API_VERSION


# -- the source -------------------------------------------------------------------------


def make_vm(
    vm_id: str, ptype: ProviderType, power: PowerState = PowerState.ON, host: str = "h1"
) -> Vm:
    return Vm(
        id=vm_id,
        name=vm_id.replace("id-", ""),
        provider_type=ptype,
        power_state=power,
        host=host,
        disks=[
            Disk(id=f"{vm_id}-d1", name="d1", capacity=4 << 20, storage="ds1"),
            Disk(id=f"{vm_id}-d2", name="d2", capacity=8 << 20, storage="ds1"),
        ],
        nics=[Nic(id=f"{vm_id}-n1", name="eth0", mac="52:54:00:00:00:01", network="net1")],
    )


class FileProvider:
    """A source provider backed by files in ``root`` (inventory.json, power.json)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @classmethod
    def create(cls, root: Path, vms: Iterable[Vm]) -> FileProvider:
        root.mkdir(parents=True, exist_ok=True)
        vms = list(vms)
        (root / "inventory.json").write_bytes(msgspec.json.encode(vms))
        provider = cls(root)
        provider._store({v.id: v.power_state.value for v in vms}, [])
        return provider

    def _load(self) -> dict[str, Any]:
        return dict(json.loads((self.root / "power.json").read_text()))

    def _store(self, power: dict[str, str], log: list[str]) -> None:
        """Replace the power states and their log in one atomic rename.

        The controller writing this file is killed -9 at random points: an
        in-place rewrite could be cut between truncate and write (an empty file,
        every later power call fails), and a second file for the log could miss
        a change that the first one recorded. A real hypervisor does not lose
        its state when the controller dies; neither may this one.
        """
        tmp = self.root / f"power.json.{os.getpid()}.tmp"
        tmp.write_text(json.dumps({"power": power, "log": log}))
        os.replace(tmp, self.root / "power.json")

    def power(self) -> dict[str, str]:
        return dict(self._load()["power"])

    def log(self) -> list[str]:
        return list(self._load()["log"])

    def _set(self, vm_id: str, state: str) -> None:
        current = self._load()
        power, log = dict(current["power"]), list(current["log"])
        power[vm_id] = state
        self._store(power, [*log, f"{state}:{vm_id}"])

    async def check(self) -> None:
        if (self.root / "down").exists():
            raise ConnectionRefusedError("connection refused")

    async def inventory(self) -> list[Vm]:
        return msgspec.json.decode((self.root / "inventory.json").read_bytes(), type=list[Vm])

    async def vm(self, id_or_name: str) -> Vm:
        for v in await self.inventory():
            if id_or_name in (v.id, v.name):
                return v
        raise LookupError(id_or_name)

    async def power_state(self, vm: Vm) -> PowerState:
        await self._hold("power-state", vm.id)
        return PowerState(self.power()[vm.id])

    async def _hold(self, what: str, vm_id: str) -> None:
        """Wait while the test holds this operation (a file), to cancel or kill meanwhile."""
        hold = self.root / f"hold-{what}-{vm_id}"
        if hold.exists():
            (self.root / f"holding-{what}-{vm_id}").touch()
        while hold.exists():
            await asyncio.sleep(0.02)

    async def shutdown(self, vm: Vm, timeout: float) -> bool:
        await self._hold("shutdown", vm.id)
        self._set(vm.id, PowerState.OFF.value)
        return False

    async def power_on(self, vm: Vm) -> None:
        await self._hold("power-on", vm.id)  # a cancel's RestorePower: the VM not ended yet
        self._set(vm.id, PowerState.ON.value)

    # Change tracking (a WarmSource): checkpoints a test seeds, which clean-up must remove.

    def seed_checkpoints(self, vm_id: str, names: list[str]) -> None:
        (self.root / f"checkpoints-{vm_id}.json").write_text(json.dumps(names))

    def checkpoint_names(self, vm_id: str) -> list[str]:
        path = self.root / f"checkpoints-{vm_id}.json"
        return list(json.loads(path.read_text())) if path.exists() else []

    async def checkpoints(self, vm: Vm) -> list[str]:
        return self.checkpoint_names(vm.id)

    async def remove_checkpoint(self, vm: Vm, checkpoint: str) -> None:
        left = [c for c in await self.checkpoints(vm) if c != checkpoint]
        self.seed_checkpoints(vm.id, left)

    def changes(self, vm: Vm, since: str | None, round_id: str = "") -> Any:
        raise NotImplementedError("the stand-in volume-service reads no source")


def providers_for(roots: dict[str, Path], ova: dict[str, Path] | None = None) -> Any:
    """A provider factory for the controller: provider name -> FileProvider, or a real
    OvaProvider for the names in ``ova``."""

    async def make(ref: SourceRef) -> Any:
        if ova and ref.provider in ova:
            from ferry.providers.ova.provider import OvaProvider

            return OvaProvider(ova[ref.provider])
        return FileProvider(roots[ref.provider])

    return make


# -- the objects ------------------------------------------------------------------------------


def documents(
    source_type: str,
    vms: list[str],
    *,
    plan: str = "plan1",
    provider: str = "src",
    remote: bool = False,
    warm: bool = False,
    max_in_flight: int = 20,
    per_host: int = 10,
    extra_plan: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    dest = (
        {"type": "kubevirt", "url": "https://remote.example:6443"}
        if remote
        else {"type": "kubevirt"}
    )
    pair = {"source": {"name": provider}, "destination": {"name": "host"}}
    spec: dict[str, Any] = {
        "provider": pair,
        "map": {"network": {"name": "net"}, "storage": {"name": "disks"}},
        "targetNamespace": "migrated",
        "warm": warm,
        "maxInFlight": max_in_flight,
        "maxInFlightPerHost": per_host,
        "vms": [{"id": v} for v in vms],
    }
    spec.update(extra_plan or {})
    nets = [{"source": {"name": "net1"}, "destination": {"type": "pod"}}]
    disks = [{"source": {"name": "ds1"}, "destination": {"storageClass": "local"}}]
    return [
        _doc("Provider", provider, {"type": source_type, "url": "/srv/src"}),
        _doc("Provider", "host", dest),
        _doc("NetworkMap", "net", {"provider": pair, "map": nets}),
        _doc("StorageMap", "disks", {"provider": pair, "map": disks}),
        _doc("Plan", plan, spec),
    ]


def _doc(kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": API, "kind": kind, "metadata": {"name": name}, "spec": spec}


def migration_doc(name: str, plan: str = "plan1", cutover: str | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"plan": {"name": plan}}
    if cutover:
        spec["cutover"] = cutover
    return _doc("Migration", name, spec)


async def apply(bus: Bus, docs: Iterable[dict[str, Any]]) -> None:
    kv = bus.kv(Bucket.OBJECTS, dict)
    for doc in docs:
        obj = objects.parse_object(doc, "test")
        await kv.put(subjects.object_key(obj.KIND, obj.name), objects.to_document(obj))


# -- the services ---------------------------------------------------------------------------------


class Services:
    """Test handlers for every service-owned step, as real Routers on the bus.

    ``script[(vm, step)]`` says what the handler does: ``ok`` (default), ``fail``
    (PermanentError), ``flaky`` (raises on attempt 1, succeeds later), ``hold``
    (waits until released or canceled). ``ran`` records (vm, step, attempt, precopy).
    """

    def __init__(self, script: dict[tuple[str, str], str] | None = None) -> None:
        self.script = script or {}
        self.ran: list[tuple[str, str, int]] = []
        self.cleaned: list[str] = []
        self.since: list[tuple[str, str]] = []  # (CopyDisks step, its since) per round
        self.bandwidth: dict[str, list[volume.Bandwidth]] = {}  # VM → its CopyDisks' budgets
        self.machines: set[str] = set()  # VMs whose VirtualMachine exists (created, not deleted)
        self.holding: set[tuple[str, str]] = set()
        self.released: set[tuple[str, str]] = set()
        self.routers = [self._volume(), self._conversion(), self._vm()]

    def runs(self, vm_id: str) -> list[str]:
        return [step for v, step, _ in self.ran if v == vm_id]

    async def _act(self, cmd: Command, ctx: Context) -> None:
        key = (cmd.vm, cmd.step)
        self.ran.append((cmd.vm, cmd.step, cmd.attempt))
        action = self.script.get(key, "ok")
        if action == "fail":
            raise PermanentError(f"{cmd.step} failed on purpose")
        if action == "flaky" and cmd.attempt == 1:
            raise RuntimeError(f"{cmd.step} is flaky")
        if action == "hold":
            self.holding.add(key)
            try:
                while key not in self.released:
                    await asyncio.sleep(0.02)
            finally:
                self.holding.discard(key)

    def _volume(self) -> Router:
        r = Router(Service.VOLUME)

        @r.handler(volume.CreateVolumes)
        async def create(cmd: volume.CreateVolumes, ctx: Context) -> volume.VolumesCreated:
            await self._act(cmd, ctx)
            vols = [
                Volume(disk_id=t.disk_id, name=f"{cmd.vm}-{t.disk_id}", size=1 << 20)
                for t in cmd.targets
            ]
            return volume.VolumesCreated(**_ids(cmd), step=cmd.step, volumes=vols)

        @r.handler(volume.AllocateDisks)
        async def allocate(cmd: volume.AllocateDisks, ctx: Context) -> volume.DisksAllocated:
            await self._act(cmd, ctx)
            return volume.DisksAllocated(**_ids(cmd), step=cmd.step)

        @r.handler(volume.CopyDisks)
        async def copy(cmd: volume.CopyDisks, ctx: Context) -> volume.DisksCopied:
            for disk in cmd.inventory.disks:
                await ctx.emit(
                    volume.DiskProgress(
                        **_ids(cmd),
                        step=cmd.step,
                        disk_id=disk.id,
                        done=disk.capacity // 2,
                        total=disk.capacity,
                    )
                )
            await self._act(cmd, ctx)
            digest = Checksum(algorithm="sha256", digest="00", bytes=1)
            copies = [
                DiskCopy(
                    disk_id=d.id, volume=d.id, bytes_copied=d.capacity, source=digest, target=digest
                )
                for d in cmd.inventory.disks
            ]
            # A warm round counts from the checkpoint the previous round handed back.
            self.since.append((cmd.step, cmd.since))
            self.bandwidth[cmd.vm] = cmd.bandwidth
            checkpoint = "" if cmd.final or not cmd.warm else f"cp-{cmd.precopy}"
            return volume.DisksCopied(
                **_ids(cmd),
                step=cmd.step,
                disks=copies,
                precopy=cmd.precopy,
                checkpoint=checkpoint,
                changed=7,
            )

        @r.handler(volume.CleanupVolumes, cancelable=False)
        async def cleanup(cmd: volume.CleanupVolumes, ctx: Context) -> volume.VolumesCleaned:
            self.cleaned.append(cmd.vm)
            return volume.VolumesCleaned(**_ids(cmd), step=cmd.step)

        return r

    def _conversion(self) -> Router:
        r = Router(Service.CONVERSION)

        @r.handler(conversion.ConvertGuest)
        async def convert(cmd: conversion.ConvertGuest, ctx: Context) -> conversion.GuestConverted:
            await ctx.emit(
                conversion.ConversionProgress(
                    **_ids(cmd),
                    step=cmd.step,
                    stage="Copying disk 1/2",
                    disk=1,
                    disks=2,
                    percent=50.0,
                )
            )
            await self._act(cmd, ctx)
            return conversion.GuestConverted(
                **_ids(cmd),
                step=cmd.step,
                mode=cmd.mode,
                inspection=Inspection(os_type="linux"),
                volumes=cmd.volumes,
            )

        return r

    def _vm(self) -> Router:
        r = Router(Service.VM)

        @r.handler(vm.CreateVm)
        async def create(cmd: vm.CreateVm, ctx: Context) -> vm.VmCreated:
            await self._act(cmd, ctx)
            self.machines.add(cmd.vm)
            return vm.VmCreated(
                **_ids(cmd), step=cmd.step, name=cmd.target_name, namespace=cmd.namespace
            )

        @r.handler(vm.PowerOn)
        async def power_on(cmd: vm.PowerOn, ctx: Context) -> vm.VmRunning:
            await self._act(cmd, ctx)
            return vm.VmRunning(**_ids(cmd), step=cmd.step, name=cmd.target_name)

        # Registered as the vm-service registers it (not cancelable: clean-up of a
        # canceled VM must still delete it).
        @r.handler(vm.DeleteVm, cancelable=False)
        async def delete(cmd: vm.DeleteVm, ctx: Context) -> vm.VmDeleted:
            self.machines.discard(cmd.vm)
            return vm.VmDeleted(**_ids(cmd), step=cmd.step, name=cmd.target_name)

        return r  # fmt: skip


def _ids(cmd: Command) -> dict[str, str]:
    return {"plan": cmd.plan, "migration": cmd.migration, "vm": cmd.vm}


def env_for_child(url: str) -> dict[str, str]:
    env = dict(os.environ)
    env["FERRY_NATS__URL"] = url
    return env


async def eventually(check: Any, timeout: float = 30.0, what: str = "") -> None:
    """Poll ``check`` (sync or async) until it is true; fail naming ``what`` after ``timeout``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"not true within {timeout}s: {what}")
