"""The whole local platform: :class:`LocalVolumes`, ``LocalVms`` and ``LocalWorkloads``.

Volumes live under the storage root (``<data_dir>/storage`` unless set), VMs under
``<data_dir>/vms``; this class only forwards, so each half stays testable on its own.
Forwarding is spelled out (not ``__getattr__``) so that mypy checks this class
against the whole :class:`~ferry.platform.base.Platform` protocol: a method added
to either half fails type-checking here until it is forwarded.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from ferry.platform.images import ImageRef
from ferry.platform.local.processes import LocalWorkloads
from ferry.platform.local.vms import LocalVms
from ferry.platform.local.volumes import LocalVolumes
from ferry.platform.settings import LocalSettings
from ferry.platform.vms import VmInfo
from ferry.platform.volumes import ProgressCallback, Rate, VolumeRequest, VolumeState
from ferry.platform.workloads import LineHandler, Placed, Workload
from ferry.proto.inventory import DiskCopy, Volume


class LocalPlatform:
    workloads_run_here = True

    def __init__(self, settings: LocalSettings, data_dir: Path) -> None:
        """Volumes under ``settings.storage_root`` (default ``<data_dir>/storage``), VMs under
        ``<data_dir>/vms``."""
        if settings.storage_root is None:
            settings = settings.model_copy(update={"storage_root": Path(data_dir) / "storage"})
        self.settings = settings
        self.volumes = LocalVolumes(settings)
        self.vms = LocalVms(data_dir, settings.qemu)
        self.workloads = LocalWorkloads()

    # volumes
    async def ensure_volume(self, request: VolumeRequest) -> VolumeState:
        return await self.volumes.ensure_volume(request)

    async def bind_volumes(self, namespace: str, migration: str, vm: str) -> list[VolumeState]:
        return await self.volumes.bind_volumes(namespace, migration, vm)

    async def import_disk(
        self,
        volume: VolumeState,
        source: ImageRef,
        progress: ProgressCallback | None = None,
        *,
        rate: Rate | None = None,
    ) -> DiskCopy:
        return await self.volumes.import_disk(volume, source, progress, rate=rate)

    async def populate(
        self,
        volume: VolumeState,
        source: ImageRef,
        progress: ProgressCallback | None = None,
        *,
        rate: Rate | None = None,
    ) -> DiskCopy:
        return await self.volumes.populate(volume, source, progress, rate=rate)

    async def apply_changes(
        self,
        volume: VolumeState,
        source: ImageRef,
        progress: ProgressCallback | None = None,
        *,
        last: bool = False,
        rate: Rate | None = None,
    ) -> DiskCopy:
        return await self.volumes.apply_changes(volume, source, progress, last=last, rate=rate)

    async def list_volumes(self, namespace: str, labels: Mapping[str, str]) -> list[VolumeState]:
        return await self.volumes.list_volumes(namespace, labels)

    async def get_volume(self, namespace: str, name: str) -> VolumeState | None:
        return await self.volumes.get_volume(namespace, name)

    async def delete_temporary_volumes(self, namespace: str, migration: str, vm: str) -> list[str]:
        return await self.volumes.delete_temporary_volumes(namespace, migration, vm)

    async def delete_volumes(self, namespace: str, migration: str, vm: str) -> list[str]:
        return await self.volumes.delete_volumes(namespace, migration, vm)

    # VirtualMachines
    async def create_vm(self, manifest: Mapping[str, Any], volumes: Sequence[Volume]) -> VmInfo:
        return await self.vms.create_vm(manifest, volumes)

    async def get_vm(self, namespace: str, name: str) -> VmInfo | None:
        return await self.vms.get_vm(namespace, name)

    async def find_vm(self, namespace: str, labels: Mapping[str, str]) -> VmInfo | None:
        return await self.vms.find_vm(namespace, labels)

    async def start_vm(self, namespace: str, name: str) -> VmInfo:
        return await self.vms.start_vm(namespace, name)

    async def wait_running(self, namespace: str, name: str, time_limit: float) -> VmInfo:
        return await self.vms.wait_running(namespace, name, time_limit)

    async def stop_vm(self, namespace: str, name: str) -> VmInfo:
        return await self.vms.stop_vm(namespace, name)

    async def delete_vm(self, namespace: str, name: str) -> bool:
        return await self.vms.delete_vm(namespace, name)

    # workloads
    async def place_volumes(self, namespace: str, volumes: Sequence[Volume]) -> dict[str, Placed]:
        return await self.workloads.place_volumes(namespace, volumes)

    async def run_workload(
        self, workload: Workload, log: BinaryIO, on_line: LineHandler | None = None
    ) -> int:
        return await self.workloads.run_workload(workload, log, on_line)
