""":class:`~ferry.platform.volumes.VolumePlatform` on files and child processes.

Record changes happen under the namespace lock in a worker thread (they are
small file operations); transfers are workload processes followed by
:mod:`ferry.platform.local.workload`. See :mod:`ferry.platform.local.storage`
for the layout and :mod:`ferry.platform.local.transfer` for what the workloads
do and why a crash never leaves a claim half-bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import Mapping

import msgspec

from ferry.platform.images import ImageRef
from ferry.platform.local import transfer, workload
from ferry.platform.local.storage import StorageConfig, Store
from ferry.platform.settings import LocalSettings
from ferry.platform.volumes import (
    Phase,
    ProgressCallback,
    Rate,
    TransferProgress,
    VolumeConflict,
    VolumeError,
    VolumeNotFound,
    VolumeRequest,
    VolumeState,
    labels_for,
    required_size,
    volume_name,
)
from ferry.proto import label
from ferry.proto.inventory import DiskCopy, VolumeMode
from ferry.proto.volume import VolumeSource


def storage_config(settings: LocalSettings) -> StorageConfig:
    """What the store and the workload processes need of the settings (no pydantic there)."""
    if settings.storage_root is None:
        raise ValueError("the local platform needs a storage root (the factory sets one)")
    return StorageConfig(
        data_dir=str(settings.storage_root),
        storage_classes={k: str(v) for k, v in settings.storage_classes.items()},
        filesystem_overhead=settings.filesystem_overhead,
        check_capacity=settings.check_capacity,
        copy_workers=settings.copy_workers,
        checkpoint_seconds=settings.checkpoint_seconds,
        verify_readback=settings.verify_readback,
        max_rate=settings.max_rate,
    )


class LocalVolumes:
    def __init__(self, settings: LocalSettings) -> None:
        self.settings = settings
        self.store = Store(storage_config(settings))

    # -- ensure --------------------------------------------------------------------

    async def ensure_volume(self, request: VolumeRequest) -> VolumeState:
        return await asyncio.to_thread(self._ensure, request)

    def _ensure(self, request: VolumeRequest) -> VolumeState:
        wanted = self._shape(request)
        with self.store.lock(request.namespace):
            found = [
                v
                for v in self.store.find(
                    request.namespace, labels_for(request.migration, request.vm, request.disk_id)
                )
                if not v.temporary
            ]
            if found:
                existing = found[0]
                _check_same(existing, wanted)
                if existing.source == VolumeSource.POPULATOR and existing.phase == Phase.PENDING:
                    self._ensure_prime(existing)
                return existing
            if not self.store.create(wanted):
                raise VolumeConflict(
                    f"volume {request.namespace}/{wanted.name} exists with other labels"
                )
            if wanted.source == VolumeSource.POPULATOR:
                self._ensure_prime(wanted)
            return wanted

    def _shape(self, request: VolumeRequest) -> VolumeState:
        target = request.target
        fmt = target.format or "raw"
        if fmt not in {"raw", "qcow2"}:
            raise VolumeError(f"disk {request.disk_id}: volume format {fmt!r} is not raw or qcow2")
        if target.volume_mode == VolumeMode.BLOCK and fmt != "raw":
            raise VolumeError(f"disk {request.disk_id}: a Block volume holds raw data, not {fmt}")
        return VolumeState(
            namespace=request.namespace,
            name=volume_name(request.migration, request.vm, request.disk_id, request.vm_name),
            source=request.source,
            labels=labels_for(request.migration, request.vm, request.disk_id),
            disk_id=request.disk_id,
            storage_class=target.storage_class,
            volume_mode=target.volume_mode,
            access_modes=list(target.access_modes),
            capacity=request.capacity,
            size=required_size(
                request.capacity, target.volume_mode, self.settings.filesystem_overhead
            ),
            format=fmt,
        )

    def _ensure_prime(self, claim: VolumeState) -> VolumeState:
        """The populator's first move: a temporary prime claim beside the original."""
        prime = self.store.read(claim.namespace, transfer.prime_name(claim.name))
        if prime is not None:
            return prime
        prime = transfer.new_prime(claim)
        self.store.create(prime)
        return prime

    # -- pvcinit ---------------------------------------------------------------------

    async def bind_volumes(self, namespace: str, migration: str, vm: str) -> list[VolumeState]:
        return await asyncio.to_thread(self._bind, namespace, migration, vm)

    def _bind(self, namespace: str, migration: str, vm: str) -> list[VolumeState]:
        with self.store.lock(namespace):
            claims = self.store.find(namespace, labels_for(migration, vm))
            for claim in claims:
                if claim.source == VolumeSource.POPULATOR and not claim.temporary and not claim.pv:
                    self._ensure_prime(claim)
            claims = self.store.find(namespace, labels_for(migration, vm))
            pending = [c for c in claims if not c.pv and _holds_data(c)]
            self.store.check_capacity(pending)  # all or nothing, before anything is made
            for claim in pending:
                self.store.allocate(claim)
            return self.store.find(namespace, labels_for(migration, vm))

    # -- transfers -------------------------------------------------------------------

    async def import_disk(
        self,
        volume: VolumeState,
        source: ImageRef,
        progress: ProgressCallback | None = None,
        *,
        rate: Rate | None = None,
    ) -> DiskCopy:
        if volume.source != VolumeSource.IMPORTER:
            raise VolumeError(f"volume {volume.name} is a {volume.source} volume, not importer")
        done = await self._run("importer", volume, source, progress, rate=rate)
        return done.copy

    async def populate(
        self,
        volume: VolumeState,
        source: ImageRef,
        progress: ProgressCallback | None = None,
        *,
        rate: Rate | None = None,
    ) -> DiskCopy:
        if volume.source != VolumeSource.POPULATOR or volume.temporary:
            raise VolumeError(f"volume {volume.name} is not a populator volume")
        done = await self._run("populator", volume, source, progress, rate=rate)
        return done.copy

    async def apply_changes(
        self,
        volume: VolumeState,
        source: ImageRef,
        progress: ProgressCallback | None = None,
        *,
        last: bool = False,
        rate: Rate | None = None,
    ) -> DiskCopy:
        job = msgspec.structs.replace(self.job(volume, source), delta=True, last=last)
        done = await self._run("importer", volume, source, progress, job, rate=rate)
        return done.copy

    async def _run(
        self,
        kind: str,
        volume: VolumeState,
        source: ImageRef,
        progress: ProgressCallback | None,
        job: transfer.Job | None = None,
        *,
        rate: Rate | None = None,
    ) -> transfer.Done:
        job = job or self.job(volume, source)
        if rate is not None:
            job = msgspec.structs.replace(job, paced=True)

        def report(line: transfer.ProgressLine) -> None:
            if progress is not None:
                progress(
                    TransferProgress(
                        disk_id=volume.disk_id,
                        volume=volume.name,
                        done=line.done,
                        total=line.total,
                        rate=line.rate,
                    )
                )

        return await workload.run(self.settings, kind, job, report, rate=rate)

    def job(self, volume: VolumeState, source: ImageRef) -> transfer.Job:
        """The job a workload for ``volume`` gets on its stdin."""
        return transfer.Job(
            config=self.store.config,
            namespace=volume.namespace,
            name=volume.name,
            source=source,
        )

    # -- lookups ---------------------------------------------------------------------

    async def list_volumes(self, namespace: str, labels: Mapping[str, str]) -> list[VolumeState]:
        return await asyncio.to_thread(self.store.find, namespace, dict(labels))

    async def get_volume(self, namespace: str, name: str) -> VolumeState | None:
        return await asyncio.to_thread(self.store.read, namespace, name)

    async def require_volume(self, namespace: str, name: str) -> VolumeState:
        found = await self.get_volume(namespace, name)
        if found is None:
            raise VolumeNotFound(f"no volume {namespace}/{name}")
        return found

    # -- clean-up --------------------------------------------------------------------

    async def delete_temporary_volumes(self, namespace: str, migration: str, vm: str) -> list[str]:
        return await asyncio.to_thread(self._delete, namespace, migration, vm, False)

    async def delete_volumes(self, namespace: str, migration: str, vm: str) -> list[str]:
        return await asyncio.to_thread(self._delete, namespace, migration, vm, True)

    def _delete(self, namespace: str, migration: str, vm: str, everything: bool) -> list[str]:
        removed: list[str] = []
        with self.store.lock(namespace):
            claims = self.store.find(namespace, labels_for(migration, vm))
            keep = {c.pv for c in claims if not c.temporary and not everything}
            for claim in claims:
                if everything or claim.temporary:
                    self.store.forget(namespace, claim.name)
                    if claim.pv and claim.pv not in keep:
                        self.store.delete_pv(claim.storage_class, claim.pv)
                    removed.append(claim.name)
                elif claim.pv and claim.phase == Phase.SUCCEEDED:
                    shutil.rmtree(self.store.copy_dir(claim), ignore_errors=True)
            referenced = {c.pv for c in self.store.claims(namespace) if c.pv}
            for storage_class in {c.storage_class for c in claims}:
                for pv in self.store.pvs(storage_class):
                    owned = (
                        pv.labels.get(label.MIGRATION) == migration
                        and pv.labels.get(label.VM) == vm
                        and pv.claim.startswith(f"{namespace}/")
                    )
                    if owned and pv.name not in referenced:
                        with contextlib.suppress(FileNotFoundError):
                            self.store.delete_pv(storage_class, pv.name)
                        removed.append(pv.name)
        return removed


def _holds_data(claim: VolumeState) -> bool:
    """Claims that get storage at pvcinit: all but a populator's original (it is re-bound)."""
    return claim.source != VolumeSource.POPULATOR or claim.temporary


def _check_same(existing: VolumeState, wanted: VolumeState) -> None:
    fields = ("source", "capacity", "storage_class", "volume_mode", "format")
    differs = [f for f in fields if getattr(existing, f) != getattr(wanted, f)]
    if differs:
        detail = ", ".join(f"{f}: {getattr(existing, f)} ≠ {getattr(wanted, f)}" for f in differs)
        raise VolumeConflict(f"volume {existing.name} exists with another shape ({detail})")
