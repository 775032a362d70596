"""VirtualMachines on the local platform: a manifest on disk plus a QEMU process.

Layout under the data directory::

    vms/<namespace>/<name>.yaml     the VirtualMachine, ready for ``kubectl apply``
    vms/<namespace>/<name>.json     the record: labels, volumes, phase, QEMU pid
    vms/<namespace>/<name>/         console.log, qemu.pid, qemu.log, OVMF_VARS.fd
    vms/.locks/<namespace>.<name>   one lock per VM, shared by every replica

The record is the source of truth for "is this VM running": it stores the QEMU
pid with its kernel start time. On first use a :class:`LocalVms` reconciles:
records whose QEMU died are marked failed, and any QEMU under this data
directory without a live record is killed, so no QEMU outlives its record.
Every state change happens under the VM's file lock, which is what keeps a
second power-on (from a redelivery or another replica) from starting a second
QEMU.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import shutil
import signal
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import yaml

from ferry.platform import kubevirt
from ferry.platform.local import console, qemu
from ferry.platform.vms import (
    BootFailed,
    InvalidVmName,
    VmConflict,
    VmInfo,
    VmNotFound,
    VmPhase,
    VmPlatform,
)
from ferry.proto.inventory import Volume
from ferry.proto.names import is_dns1123_label

log = logging.getLogger(__name__)

_LOCK_POLL_SECONDS = 0.05


class QemuProcess(msgspec.Struct, frozen=True, kw_only=True):
    pid: int
    start_ticks: int
    accel: str
    qmp: str
    started_at: float  # wall-clock seconds since the epoch

    def ref(self) -> qemu.ProcessRef:
        return qemu.ProcessRef(self.pid, self.start_ticks)


class VmRecord(msgspec.Struct, frozen=True, kw_only=True):
    """The JSON sidecar of a VM's manifest."""

    name: str
    namespace: str
    labels: dict[str, str]
    volumes: list[Volume]
    created_at: float
    phase: VmPhase = VmPhase.STOPPED
    process: QemuProcess | None = None
    boot_seconds: float | None = None
    reason: str = ""
    console_tail: list[str] = msgspec.field(default_factory=list)


def _write_atomic(path: Path, data: bytes) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)


class LocalVms:
    """:class:`ferry.platform.vms.VmPlatform` on files and QEMU processes."""

    def __init__(self, data_dir: Path, settings: qemu.QemuSettings | None = None) -> None:
        self.root = Path(data_dir).resolve() / "vms"
        self.settings = settings or qemu.QemuSettings()
        self._reconciled = False

    # -- paths and records -----------------------------------------------------

    def _folder(self, namespace: str, name: str | None = None) -> Path:
        """``root/namespace``: every path of the store is built here, from checked names,
        because they come from a Plan and a message and must not climb out of it."""
        for value in (namespace, name):
            if value is not None and not is_dns1123_label(value):
                raise InvalidVmName(f"{value!r} is not a DNS-1123 label (a-z, 0-9, '-', ≤ 63)")
        return self.root / namespace

    def manifest_path(self, namespace: str, name: str) -> Path:
        return self._folder(namespace, name) / f"{name}.yaml"

    def _record_path(self, namespace: str, name: str) -> Path:
        return self._folder(namespace, name) / f"{name}.json"

    def runtime(self, namespace: str, name: str) -> qemu.RuntimeFiles:
        return qemu.RuntimeFiles(self._folder(namespace, name) / name)

    def _read(self, namespace: str, name: str) -> VmRecord | None:
        try:
            raw = self._record_path(namespace, name).read_bytes()
        except FileNotFoundError:
            return None
        return msgspec.json.decode(raw, type=VmRecord)

    def _write(self, record: VmRecord) -> VmRecord:
        path = self._record_path(record.namespace, record.name)
        _write_atomic(path, msgspec.json.format(msgspec.json.encode(record)))
        return record

    def _records(self) -> list[VmRecord]:
        found = []
        for path in sorted(self.root.glob("*/*.json")):
            record = self._read(path.parent.name, path.stem)
            if record is not None:
                found.append(record)
        return found

    def _info(self, record: VmRecord, existed: bool = False) -> VmInfo:
        return VmInfo(
            name=record.name,
            namespace=record.namespace,
            labels=dict(record.labels),
            phase=record.phase,
            manifest=str(self.manifest_path(record.namespace, record.name)),
            console=str(self.runtime(record.namespace, record.name).console),
            boot_seconds=record.boot_seconds,
            reason=record.reason,
            existed=existed,
        )

    def _set_run_strategy(self, namespace: str, name: str, run: bool) -> None:
        """Keep the manifest's desired state in step, so applying it does what we did."""
        path = self.manifest_path(namespace, name)
        manifest = yaml.safe_load(path.read_text())
        manifest["spec"]["runStrategy"] = kubevirt.RUN_ALWAYS if run else kubevirt.RUN_HALTED
        _write_atomic(path, yaml.safe_dump(manifest, sort_keys=False).encode())

    @contextlib.asynccontextmanager
    async def _locked(self, namespace: str, name: str) -> AsyncIterator[None]:
        """An exclusive per-VM lock, across threads, tasks and processes."""
        self._folder(namespace, name)
        locks = self.root / ".locks"
        locks.mkdir(parents=True, exist_ok=True)
        fd = os.open(locks / f"{namespace}.{name}", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    await asyncio.sleep(_LOCK_POLL_SECONDS)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    # -- liveness --------------------------------------------------------------

    def _refresh(self, record: VmRecord) -> VmRecord:
        """Mark a starting/running VM whose QEMU is gone as failed (call under the lock)."""
        if record.process is None or qemu.alive(record.process.ref()):
            return record
        if record.phase in (VmPhase.STARTING, VmPhase.RUNNING):
            runtime = self.runtime(record.namespace, record.name)
            tail = console.console_tail(runtime.console, self.settings.console_tail_lines)
            return self._write(
                msgspec.structs.replace(
                    record,
                    phase=VmPhase.FAILED,
                    process=None,
                    reason="QEMU exited unexpectedly",
                    console_tail=tail,
                )
            )
        return self._write(msgspec.structs.replace(record, process=None))

    async def reconcile(self) -> list[str]:
        """Re-attach to live QEMUs, mark dead ones failed, kill QEMUs without a record.

        Returns what it changed, one line each, for the service's log.
        """
        changes: list[str] = []
        owned: set[int] = set()
        for record in self._records():
            async with self._locked(record.namespace, record.name):
                current = self._read(record.namespace, record.name)
                if current is None:
                    continue
                fresh = self._refresh(current)
                if fresh is not current:
                    changes.append(f"{fresh.namespace}/{fresh.name}: QEMU gone, {fresh.phase}")
                if fresh.process is not None:
                    owned.add(fresh.process.pid)
        for ref, pidfile in qemu.processes_under(self.root):
            if ref.pid in owned:
                continue
            # Another replica may be between launching a QEMU and writing its
            # record: decide under that VM's lock, from the record as it is then.
            namespace, name = pidfile.parent.parent.name, pidfile.parent.name
            async with self._locked(namespace, name):
                current = self._read(namespace, name)
                if current and current.process and current.process.ref() == ref:
                    continue
                if qemu.alive(ref):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(ref.pid, signal.SIGKILL)
                    changes.append(f"killed QEMU pid {ref.pid} of {namespace}/{name}: no record")
        self._reconciled = True
        for change in changes:
            log.warning("reconciled VM state: %s", change)
        return changes

    async def _ready(self) -> None:
        if not self._reconciled:
            await self.reconcile()

    # -- VmPlatform ------------------------------------------------------------

    async def create_vm(self, manifest: Mapping[str, Any], volumes: Sequence[Volume]) -> VmInfo:
        await self._ready()
        meta = manifest["metadata"]
        namespace, name = str(meta["namespace"]), str(meta["name"])
        folder = self._folder(namespace, name)
        labels = kubevirt.owner_labels(manifest)
        qemu.machine_spec(manifest, volumes)  # fail now, not at power-on, if unbootable
        folder.mkdir(parents=True, exist_ok=True)
        async with self._locked(namespace, name):
            existing = self._read(namespace, name)
            if existing is not None:
                if existing.labels != labels:
                    raise VmConflict(
                        f"VM {namespace}/{name} exists and belongs to {existing.labels}"
                    )
                return self._info(existing, existed=True)
            text = yaml.safe_dump(dict(manifest), sort_keys=False)
            _write_atomic(self.manifest_path(namespace, name), text.encode())
            record = VmRecord(
                name=name,
                namespace=namespace,
                labels=labels,
                volumes=list(volumes),
                created_at=time.time(),
            )
            return self._info(self._write(record))

    async def get_vm(self, namespace: str, name: str) -> VmInfo | None:
        await self._ready()
        async with self._locked(namespace, name):
            record = self._read(namespace, name)
            return self._info(self._refresh(record)) if record else None

    async def find_vm(self, namespace: str, labels: Mapping[str, str]) -> VmInfo | None:
        await self._ready()
        for path in sorted(self._folder(namespace).glob("*.json")):
            record = self._read(namespace, path.stem)
            if record is not None and all(record.labels.get(k) == v for k, v in labels.items()):
                return await self.get_vm(namespace, record.name)
        return None

    def _require(self, namespace: str, name: str) -> VmRecord:
        record = self._read(namespace, name)
        if record is None:
            raise VmNotFound(f"no VM {namespace}/{name}")
        return self._refresh(record)

    async def start_vm(self, namespace: str, name: str) -> VmInfo:
        await self._ready()
        async with self._locked(namespace, name):
            record = self._require(namespace, name)
            if record.process is not None:
                return self._info(record)  # already starting or running
            manifest = yaml.safe_load(self.manifest_path(namespace, name).read_text())
            spec = qemu.machine_spec(manifest, record.volumes)
            missing = qemu.missing_files(spec)
            if missing:
                raise BootFailed(f"volume file(s) missing: {', '.join(missing)}")
            runtime = self.runtime(namespace, name)
            try:
                ref, accel = await qemu.launch(spec, runtime, self.settings)
            except qemu.LaunchError as error:
                self._write(
                    msgspec.structs.replace(record, phase=VmPhase.FAILED, reason=str(error))
                )
                raise BootFailed(str(error)) from None
            process = QemuProcess(
                pid=ref.pid,
                start_ticks=ref.start_ticks,
                accel=accel,
                qmp=str(runtime.qmp),
                started_at=time.time(),
            )
            self._set_run_strategy(namespace, name, run=True)
            log.info("started QEMU pid %d (%s) for %s/%s", ref.pid, accel, namespace, name)
            started = msgspec.structs.replace(
                record,
                phase=VmPhase.STARTING,
                process=process,
                boot_seconds=None,
                reason="",
                console_tail=[],
            )
            return self._info(self._write(started))

    async def wait_running(self, namespace: str, name: str, time_limit: float) -> VmInfo:
        """Follow the console until the boot marker, QEMU's death, or the time limit.

        The wait itself holds no lock (it can take minutes); only the final
        transition does, and it re-reads the record first.
        """
        await self._ready()
        async with self._locked(namespace, name):
            record = self._require(namespace, name)
        if record.phase == VmPhase.RUNNING:
            return self._info(record)
        if record.process is None:
            raise BootFailed(record.reason or "the VM is not started", record.console_tail)
        runtime = self.runtime(namespace, name)
        watch = console.ConsoleWatch(runtime.console, self.settings.boot_marker)
        process = record.process
        deadline = process.started_at + time_limit
        while True:
            if watch.seen():
                return await self._mark_running(namespace, name, process)
            if not qemu.alive(process.ref()):
                reason = "QEMU exited before the guest booted"
                break
            if time.time() >= deadline:
                reason = f"the guest did not boot within {time_limit:g} s"
                break
            await asyncio.sleep(self.settings.poll_seconds)
        raise await self._mark_failed(namespace, name, process, reason)

    async def _mark_running(self, namespace: str, name: str, process: QemuProcess) -> VmInfo:
        async with self._locked(namespace, name):
            record = self._require(namespace, name)
            if record.process != process:
                raise BootFailed("the VM was stopped or restarted while booting")
            seconds = round(time.time() - process.started_at, 1)
            running = msgspec.structs.replace(record, phase=VmPhase.RUNNING, boot_seconds=seconds)
            log.info("%s/%s is running after %.1f s", namespace, name, seconds)
            return self._info(self._write(running))

    async def _mark_failed(
        self, namespace: str, name: str, process: QemuProcess, reason: str
    ) -> BootFailed:
        """Stop a VM that did not boot (it would only burn CPU) and keep the evidence."""
        runtime = self.runtime(namespace, name)
        async with self._locked(namespace, name):
            record = self._read(namespace, name)
            if record is not None and record.process == process:
                await qemu.terminate(process.ref(), runtime, self.settings, graceful=False)
                tail = console.console_tail(runtime.console, self.settings.console_tail_lines)
                failed = msgspec.structs.replace(
                    record, phase=VmPhase.FAILED, process=None, reason=reason, console_tail=tail
                )
                self._write(failed)
                self._set_run_strategy(namespace, name, run=False)
                return BootFailed(reason, tail)
        tail = console.console_tail(runtime.console, self.settings.console_tail_lines)
        return BootFailed(reason, tail)

    async def stop_vm(self, namespace: str, name: str) -> VmInfo:
        await self._ready()
        async with self._locked(namespace, name):
            record = self._require(namespace, name)
            if record.process is not None:
                runtime = self.runtime(namespace, name)
                clean = await qemu.terminate(record.process.ref(), runtime, self.settings)
                log.info("stopped %s/%s (%s)", namespace, name, "ACPI" if clean else "forced")
            stopped = msgspec.structs.replace(
                record, phase=VmPhase.STOPPED, process=None, reason=""
            )
            self._set_run_strategy(namespace, name, run=False)
            return self._info(self._write(stopped))

    async def delete_vm(self, namespace: str, name: str) -> bool:
        await self._ready()
        async with self._locked(namespace, name):
            record = self._read(namespace, name)
            if record is None:
                return False
            runtime = self.runtime(namespace, name)
            if record.process is not None:
                await qemu.terminate(record.process.ref(), runtime, self.settings, graceful=False)
            # The record goes last: if anything above fails, the VM is still findable.
            shutil.rmtree(runtime.directory, ignore_errors=True)
            runtime.qmp.unlink(missing_ok=True)
            self.manifest_path(namespace, name).unlink(missing_ok=True)
            self._record_path(namespace, name).unlink()
            return True


if TYPE_CHECKING:  # mypy proves LocalVms is a VmPlatform

    def _conforms(vms: LocalVms) -> VmPlatform:
        return vms
