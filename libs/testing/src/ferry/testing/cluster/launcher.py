"""virt-launcher for the stand-in's KubeVirt: a VirtualMachineInstance's guest really boots.

The guest is started with the local platform's QEMU runner
(:mod:`ferry.platform.local.qemu`), from the instance's domain spec as KubeVirt
reads it: disk bus and boot order, firmware (SeaBIOS, or OVMF with secure boot),
CPU topology and memory; the disks are the bytes of the bound claims (a
``Filesystem`` PV's ``disk.img``, a ``Block`` PV's file, as the provisioner in
:mod:`.binder` lays them out). The serial console is written to
:meth:`Launcher.console`.

The instance ends as upstream's would: ``Failed`` with a CamelCase ``reason``
(and the detail in its ``Ready`` condition) when QEMU cannot start or dies,
``Succeeded`` when the guest powers itself off (QEMU's ``SHUTDOWN`` event with
reason ``guest-shutdown``, read on the QMP socket as libvirt reads it). One rule is
the stand-in's own: when the firmware reports that no disk is bootable, the
instance fails (``NoBootableDevice``) and QEMU is stopped, where upstream would
leave a firmware retrying forever in a ``Running`` instance; a test learns that a
disk does not boot instead of waiting for a login prompt that never comes.

Deleting the instance (or its VirtualMachine) powers the guest off over ACPI
within the instance's ``terminationGracePeriodSeconds``, then kills QEMU; the
instance is gone only when QEMU is (:attr:`Store.graceful`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ferry.platform.local import console, qemu
from ferry.proto.inventory import Volume
from ferry.testing.cluster.binder import volume_nodes
from ferry.testing.cluster.resources import PV, PVC, VMI
from ferry.testing.cluster.store import Obj, Store, meta, now

NODE = "node-1"
# SeaBIOS (its screen mirrored on the serial port by the runner) giving up, and OVMF's
# boot manager giving up or falling back to its built-in shell (no disk had a loader).
_NO_BOOT = (
    r"No bootable device|not a bootable disk|No bootable option or device was found"
    r'|BdsDxe: starting Boot[0-9A-F]+ "EFI Internal Shell"'
)
_MACHINES = re.compile(r"^(q35|pc-q35-.*)$")  # KubeVirt's default emulated machines on x86
_DEFAULT_GRACE = 30  # the VMI's terminationGracePeriodSeconds when unset


class _Refused(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass
class _Guest:
    uid: str
    files: qemu.RuntimeFiles
    task: asyncio.Task[None] | None = None
    stopping: bool = False
    grace: float = _DEFAULT_GRACE


def disk_path(pv: Obj) -> Path:
    """Where a bound claim's bytes are: the PV's file (Block) or its ``disk.img``."""
    path = Path(pv["spec"]["hostPath"]["path"])
    return path if pv["spec"].get("volumeMode") == "Block" else path / "disk.img"


class Launcher:
    def __init__(self, store: Store, root: Path, settings: qemu.QemuSettings | None = None):
        self.store = store
        self.root = root / "virt"
        self.settings = settings or qemu.QemuSettings(poll_seconds=0.1, quit_seconds=2)
        self._guests: dict[tuple[str, str], _Guest] = {}
        self.store.graceful[VMI.key] = lambda vmi: self._key(vmi) in self._guests

    @staticmethod
    def _key(vmi: Obj) -> tuple[str, str]:
        return meta(vmi)["namespace"], meta(vmi)["name"]

    def files(self, namespace: str, name: str) -> qemu.RuntimeFiles:
        return qemu.RuntimeFiles(self.root / namespace / name)

    def console(self, namespace: str, name: str) -> Path:
        """The guest's serial console, as written by QEMU."""
        return self.files(namespace, name).console

    def launched(self, vmi: Obj) -> bool:
        guest = self._guests.get(self._key(vmi))
        return guest is not None and guest.uid == meta(vmi)["uid"]

    def guests(self) -> list[tuple[str, str]]:
        return sorted(self._guests)

    def start(self, vmi: Obj) -> None:
        key = self._key(vmi)
        grace = vmi["spec"].get("terminationGracePeriodSeconds", _DEFAULT_GRACE)
        guest = _Guest(meta(vmi)["uid"], self.files(*key), grace=float(grace))
        self._guests[key] = guest
        guest.task = asyncio.get_running_loop().create_task(self._run(key, guest, vmi))

    def stop(self, key: tuple[str, str], grace: float | None = None) -> None:
        guest = self._guests.get(key)
        if guest is not None and not guest.stopping:
            guest.stopping = True
            if grace is not None:
                guest.grace = grace

    async def close(self) -> None:
        """Kill every guest now (the node goes away) and wait until QEMU is gone."""
        for key in list(self._guests):
            self.stop(key, 0)
        for guest in list(self._guests.values()):
            if guest.task is not None:
                with contextlib.suppress(Exception):
                    await guest.task

    # -- one guest -----------------------------------------------------------------

    def _volumes(self, vmi: Obj) -> list[Volume]:
        namespace = meta(vmi)["namespace"]
        found = []
        nodes: dict[str, str] = {}  # claim → the node its local volume is on
        for volume in vmi["spec"].get("volumes") or []:
            source = volume.get("dataVolume") or volume.get("persistentVolumeClaim")
            if source is None:
                continue
            name = source.get("name") or source.get("claimName")
            claim = self.store.get(PVC, namespace, name) or {}
            pv = self.store.get(PV, "", (claim.get("spec") or {}).get("volumeName", ""))
            if pv is None:
                raise _Refused("FailedPvcNotFound", f"claim {name!r} is not bound")
            for node in volume_nodes(pv)[:1]:  # a local volume is on one node
                nodes[node] = name
            found.append(Volume(disk_id=volume["name"], name=name, size=0, path=str(disk_path(pv))))
        if len(nodes) > 1:  # the virt-launcher pod fits no node: it would stay Pending
            where = ", ".join(f"{claim} on {node}" for node, claim in sorted(nodes.items()))
            raise _Refused(
                "Unschedulable",
                "0 nodes are available: node(s) had volume node affinity conflict "
                f"(the claims' volumes are on different nodes: {where})",
            )
        return found

    def _spec(self, vmi: Obj) -> qemu.MachineSpec:
        machine = ((vmi["spec"].get("domain") or {}).get("machine") or {}).get("type", "q35")
        if not _MACHINES.match(machine):
            raise _Refused("UnsupportedMachineType", f"machine type {machine!r} is not q35")
        manifest = {"metadata": meta(vmi), "spec": {"template": {"spec": vmi["spec"]}}}
        try:
            spec = qemu.machine_spec(manifest, self._volumes(vmi))
        except qemu.SpecError as error:
            raise _Refused("SyncFailed", str(error)) from None
        missing = qemu.missing_files(spec)
        if missing:
            raise _Refused("SyncFailed", f"disk image(s) missing: {', '.join(missing)}")
        return spec

    async def _run(self, key: tuple[str, str], guest: _Guest, vmi: Obj) -> None:
        ref: qemu.ProcessRef | None = None
        try:
            try:
                spec = self._spec(vmi)
                ref, _ = await qemu.launch(spec, guest.files, self.settings)
            except _Refused as refused:
                self._status(key, guest, "Failed", refused.reason, refused.message)
                return
            except (qemu.LaunchError, qemu.SpecError, OSError) as error:
                self._status(key, guest, "Failed", "LaunchFailed", str(error))
                return
            if not guest.stopping:
                self._status(key, guest, "Running", "", "")
            outcome = await self._watch(guest, ref)
            # After every end, so that no QEMU outlives its instance: a guest being
            # deleted gets its ACPI power-off first, one that did not boot does not.
            await qemu.terminate(
                ref, guest.files, self._grace(guest), graceful=guest.stopping and guest.grace > 0
            )
            if outcome is not None and not guest.stopping:
                self._status(key, guest, *outcome)
        except Exception as error:  # a bug here must show, not leave a Running instance
            if ref is not None:
                await qemu.terminate(ref, guest.files, self.settings, graceful=False)
            self._status(key, guest, "Failed", "LauncherError", repr(error))
            raise
        finally:
            self._guests.pop(key, None)
            self._finish_deletion(key, guest)

    def _grace(self, guest: _Guest) -> qemu.QemuSettings:
        return self.settings.model_copy(update={"powerdown_seconds": max(guest.grace, 0.1)})

    async def _watch(self, guest: _Guest, ref: qemu.ProcessRef) -> tuple[str, str, str] | None:
        """Until QEMU ends or must be stopped: (phase, reason, message); None when deleted."""
        watch = console.ConsoleWatch(guest.files.console, _NO_BOOT)
        powered_off = False
        reader: asyncio.StreamReader | None = None
        writer: asyncio.StreamWriter | None = None
        with contextlib.suppress(OSError):
            reader, writer = await asyncio.open_unix_connection(str(guest.files.qmp))
            writer.write(json.dumps({"execute": "qmp_capabilities"}).encode() + b"\n")
        try:
            while True:
                # Returning lets the QMP socket go first: terminate() speaks on it.
                if guest.stopping:
                    return None
                if watch.seen():
                    tail = console.console_tail(guest.files.console, 5)
                    found = "the firmware found no bootable disk: "
                    return "Failed", "NoBootableDevice", found + " | ".join(tail)
                line = b""
                if reader is not None:
                    try:
                        line = await asyncio.wait_for(reader.readline(), self.settings.poll_seconds)
                    except TimeoutError:
                        pass
                    except OSError:  # reset: QEMU died with the connection half made
                        reader = None
                    if reader is not None and not line and reader.at_eof():
                        reader = None
                else:
                    await asyncio.sleep(self.settings.poll_seconds)
                powered_off = powered_off or _guest_shutdown(line)
                if not qemu.alive(ref) and reader is None:
                    break
        finally:
            if writer is not None:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
        if powered_off:
            return "Succeeded", "", "the guest powered off"
        tail = console.console_tail(guest.files.console, 10)
        return "Failed", "QemuExited", "QEMU exited: " + " | ".join(tail)

    # -- the instance's status -------------------------------------------------------

    def _current(self, key: tuple[str, str], guest: _Guest) -> Obj | None:
        vmi = self.store.get(VMI, *key)
        return vmi if vmi is not None and meta(vmi)["uid"] == guest.uid else None

    def _status(
        self, key: tuple[str, str], guest: _Guest, phase: str, reason: str, message: str
    ) -> None:
        vmi = self._current(key, guest)
        if vmi is None or meta(vmi).get("deletionTimestamp"):
            return
        ready: dict[str, Any] = {
            "type": "Ready",
            "status": "True" if phase == "Running" else "False",
            "lastTransitionTime": now(),
        }
        if reason:
            ready.update(reason=reason, message=message)
        status = vmi.setdefault("status", {})
        status.update(phase=phase, nodeName=NODE, conditions=[ready])
        if reason:
            status["reason"] = reason
        status["phaseTransitionTimestamps"] = [
            *status.get("phaseTransitionTimestamps", []),
            {"phase": phase, "phaseTransitionTimestamp": now()},
        ]
        self.store.replace(VMI, vmi)

    def _finish_deletion(self, key: tuple[str, str], guest: _Guest) -> None:
        vmi = self._current(key, guest)
        if vmi is not None and meta(vmi).get("deletionTimestamp"):
            self.store.delete(VMI, *key, grace=0)


def _guest_shutdown(line: bytes) -> bool:
    if not line:
        return False
    with contextlib.suppress(ValueError):
        message: Mapping[str, Any] = json.loads(line)
        data = message.get("data") or {}
        return message.get("event") == "SHUTDOWN" and data.get("reason") == "guest-shutdown"
    return False
