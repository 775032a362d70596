"""The volume-service's four commands, each an idempotent step of a VM's itinerary.

* ``CreateVolumes`` — one volume per disk, shaped as the command says (importer
  DataVolume, blank DataVolume, PVC + populator), sized by the platform from the
  disk's capacity and the StorageMap's volume mode. Volumes are found by their
  labels before they are made, so a redelivery creates nothing new.
* ``AllocateDisks`` — pvcinit: storage for every volume of the VM, all or none.
* ``CopyDisks`` — each disk read through its provider and written by the
  platform's importer or populator workload, with throttled progress events and
  a verified checksum per disk. A disk already copied is reported, not copied
  again; a copy interrupted by a crash resumes from its checkpoint.
* ``CleanupVolumes`` — temporary volumes (or, with ``all_volumes``, everything
  the migration made for the VM) removed.

Failures keep their precise reason (see :mod:`ferry.volume_service.failures`).
A copy that fails for good leaves no temporary volume behind; one that was
canceled has its workload killed (by the platform, when the task is cancelled)
and its temporary volumes removed. A replica shutting down keeps them: the next
replica resumes.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator

from ferry.bus import Context, PermanentError, Router
from ferry.platform.volumes import (
    DEFAULT_FILESYSTEM_OVERHEAD,
    Phase,
    ProgressCallback,
    Rate,
    TransferProgress,
    VolumePlatform,
    VolumeRequest,
    VolumeState,
    labels_for,
    required_size,
)
from ferry.proto import volume
from ferry.proto.inventory import Disk, DiskCopy, VolumeMode, VolumeTarget
from ferry.proto.volume import SourceRef, VolumeSource
from ferry.providers.base import PacedReader, Provider
from ferry.runtime.bandwidth import Rates
from ferry.runtime.progress import Throttle
from ferry.runtime.providers import OpenProvider
from ferry.volume_service import warm
from ferry.volume_service.failures import classify
from ferry.volume_service.images import image_ref
from ferry.volume_service.progress import ProgressRelay
from ferry.volume_service.settings import VolumeSettings

_FORMATS = {"raw", "qcow2"}


@contextlib.contextmanager
def outcome(what: str) -> Iterator[None]:
    """Turn platform and provider errors raised inside into the bus's outcomes."""
    try:
        yield
    except Exception as exc:
        mapped = classify(exc, what)
        if mapped is None or mapped is exc:
            raise
        raise mapped from exc


class VolumeHandlers:
    """The volume-service's handlers, one method per command, and what they share: the
    platform, the way to open providers, the service's settings."""

    def __init__(
        self,
        platform: VolumePlatform,
        providers: OpenProvider,
        settings: VolumeSettings,
        filesystem_overhead: float = DEFAULT_FILESYSTEM_OVERHEAD,
        rates: Rates | None = None,
    ) -> None:
        self.platform = platform
        self.providers = providers
        self.settings = settings
        # The platform's own figure, so a request that cannot fit fails before anything exists.
        self.filesystem_overhead = filesystem_overhead
        # The bandwidth budgets' shared rates; without a bus (tests) copies are unpaced.
        self.rates = rates

    def register(self, router: Router) -> None:
        """One handler per command on ``router``."""
        router.handler(volume.CreateVolumes)(self.create_volumes)
        router.handler(volume.AllocateDisks)(self.allocate_disks)
        router.handler(volume.CopyDisks)(self.copy_disks)
        # Clean-up must run for a canceled VM: it is how a cancel removes the volumes.
        router.handler(volume.CleanupVolumes, cancelable=False)(self.cleanup_volumes)

    # -- CreateVolumes -------------------------------------------------------------

    async def create_volumes(
        self, cmd: volume.CreateVolumes, ctx: Context
    ) -> volume.VolumesCreated:
        requests = self.requests(cmd)  # every target checked before anything is made
        made: list[VolumeState] = []
        for request in requests:
            with outcome(f"disk {request.disk_id}"):
                made.append(await self.platform.ensure_volume(request))
        ctx.log.info("%d %s volumes ready", len(made), cmd.source.value)
        return volume.VolumesCreated(
            **cmd.reply(),
            volumes=[v.to_proto() for v in made],
        )

    def requests(self, cmd: volume.CreateVolumes) -> list[VolumeRequest]:
        """One request per disk, in disk order; bad input fails before any volume exists."""
        disks = {d.id: d for d in cmd.inventory.disks}
        targets: dict[str, VolumeTarget] = {}
        for target in cmd.targets:
            if target.disk_id not in disks:
                raise PermanentError(
                    f"a target names disk {target.disk_id!r}, which VM {cmd.inventory.name!r} "
                    f"does not have (disks: {', '.join(disks) or 'none'})"
                )
            if target.disk_id in targets:
                raise PermanentError(f"disk {target.disk_id!r} has more than one target")
            targets[target.disk_id] = target
        if not disks:
            raise PermanentError(f"VM {cmd.inventory.name!r} has no disks to create volumes for")
        untargeted = [d.id for d in cmd.inventory.disks if d.id not in targets]
        if untargeted:
            raise PermanentError(
                f"disk(s) {', '.join(untargeted)} have no target: the StorageMap has no entry "
                "for their storage"
            )
        return [self._request(cmd, disk, targets[disk.id]) for disk in cmd.inventory.disks]

    def _request(
        self, cmd: volume.CreateVolumes, disk: Disk, target: VolumeTarget
    ) -> VolumeRequest:
        fmt = target.format or "raw"
        if fmt not in _FORMATS:
            raise PermanentError(f"disk {disk.id}: volume format {fmt!r} is not raw or qcow2")
        if target.volume_mode == VolumeMode.BLOCK and fmt != "raw":
            raise PermanentError(f"disk {disk.id}: a Block volume holds raw data, not {fmt}")
        with outcome(f"disk {disk.id}"):
            required_size(disk.capacity, target.volume_mode, self.filesystem_overhead)
        return VolumeRequest(
            namespace=cmd.namespace,
            migration=cmd.migration,
            vm=cmd.vm,
            vm_name=cmd.inventory.name,
            disk_id=disk.id,
            capacity=disk.capacity,
            target=target,
            source=cmd.source,
        )

    # -- AllocateDisks (pvcinit) -------------------------------------------------------

    async def allocate_disks(
        self, cmd: volume.AllocateDisks, ctx: Context
    ) -> volume.DisksAllocated:
        await self._require_volumes(cmd.namespace, cmd.migration, cmd.vm)
        with outcome("pvcinit"):
            bound = await self.platform.bind_volumes(cmd.namespace, cmd.migration, cmd.vm)
        claims = [v for v in bound if not v.temporary]
        ctx.log.info("pvcinit bound %d volumes", len(claims))
        return volume.DisksAllocated(
            **cmd.reply(),
            volumes=[v.to_proto() for v in claims],
        )

    async def _require_volumes(self, namespace: str, migration: str, vm: str) -> list[VolumeState]:
        found = await self.platform.list_volumes(namespace, labels_for(migration, vm))
        claims = [v for v in found if not v.temporary]
        if not claims:
            raise PermanentError(
                f"no volumes for VM {vm!r} of migration {migration!r} in namespace "
                f"{namespace!r}: CreateVolumes must run first"
            )
        return claims

    # -- CopyDisks ---------------------------------------------------------------------

    async def copy_disks(self, cmd: volume.CopyDisks, ctx: Context) -> volume.DisksCopied:
        if cmd.warm:
            return await self.copy_round(cmd, ctx)
        if cmd.precopy > 0:
            raise PermanentError(
                f"precopy round {cmd.precopy} of a CopyDisks that is not warm: "
                "only a warm migration copies changed blocks"
            )
        claims = await self._claims_for_copy(cmd)
        pending = [d for d in cmd.inventory.disks if _copy_of(claims[d.id]) is None]
        provider = await self._provider(cmd.provider) if pending else None
        throttle = Throttle(self.settings.progress_interval_seconds)
        try:
            async with ProgressRelay(ctx.emit, _progress_event(cmd), throttle) as relay:
                copies = await self._copy_all(cmd, provider, claims, relay.callback)
            for copy in copies:
                _check_checksums(copy)
        except asyncio.CancelledError:
            if ctx.canceled.is_set():  # canceled by the user, not a replica shutting down
                await asyncio.shield(self._clean_temporaries(cmd, ctx, "canceled"))
            raise
        except Exception as exc:
            mapped = classify(exc, "copy")
            if isinstance(mapped, PermanentError):
                await self._clean_temporaries(cmd, ctx, mapped.reason)
            raise
        ctx.log.info(
            "%d disks copied (%d bytes written)",
            len(copies),
            sum(c.bytes_copied for c in copies),
        )
        bound = await self._require_volumes(cmd.namespace, cmd.migration, cmd.vm)
        return volume.DisksCopied(
            **cmd.reply(),
            disks=copies,
            precopy=cmd.precopy,
            volumes=[v.to_proto() for v in bound],
        )

    async def copy_round(self, cmd: volume.CopyDisks, ctx: Context) -> volume.DisksCopied:
        """A warm round (:mod:`ferry.volume_service.warm`): changed blocks only after the first."""
        claims = await self._claims_for_copy(cmd)
        source = warm.warm_source(await self._provider(cmd.provider), cmd)
        throttle = Throttle(self.settings.progress_interval_seconds)
        with outcome(f"warm round {cmd.precopy}"):
            async with ProgressRelay(ctx.emit, _progress_event(cmd), throttle) as relay:
                done = await warm.copy_round(
                    self.platform,
                    source,
                    cmd,
                    claims,
                    relay.callback,
                    verify_whole=self.settings.warm_final_verify,
                    rate=self._pace(cmd),
                )
        for copy in done.copies:
            _check_checksums(copy)
        ctx.log.info(
            "warm round %d%s: %d bytes changed, %d written",
            cmd.precopy,
            " (final)" if cmd.final else "",
            done.changed,
            sum(c.bytes_copied for c in done.copies),
        )
        bound = await self._require_volumes(cmd.namespace, cmd.migration, cmd.vm)
        return volume.DisksCopied(
            **cmd.reply(),
            disks=done.copies,
            precopy=cmd.precopy,
            volumes=[v.to_proto() for v in bound],
            checkpoint=done.checkpoint,
            changed=done.changed,
        )

    async def _provider(self, ref: SourceRef) -> Provider:
        with outcome(f"provider {ref.provider!r}"):
            return await self.providers(ref)

    async def _claims_for_copy(self, cmd: volume.CopyDisks) -> dict[str, VolumeState]:
        if not cmd.inventory.disks:
            raise PermanentError(f"VM {cmd.inventory.name!r} has no disks to copy")
        found = await self._require_volumes(cmd.namespace, cmd.migration, cmd.vm)
        by_disk = {v.disk_id: v for v in found}
        missing = [d.id for d in cmd.inventory.disks if d.id not in by_disk]
        if missing:
            raise PermanentError(
                f"no volume for disk(s) {', '.join(missing)}: CreateVolumes must run first"
            )
        blank = [v.name for v in by_disk.values() if v.source == VolumeSource.BLANK]
        if blank:
            raise PermanentError(
                f"volume(s) {', '.join(blank)} are blank DataVolumes: virt-v2v fills them, "
                "there is nothing to copy"
            )
        return by_disk

    async def _copy_all(
        self,
        cmd: volume.CopyDisks,
        provider: Provider | None,
        claims: dict[str, VolumeState],
        progress: ProgressCallback,
    ) -> list[DiskCopy]:
        slots = asyncio.Semaphore(self.settings.disks_in_parallel)

        async def one(disk: Disk) -> DiskCopy:
            async with slots:
                return await self._copy_one(cmd, provider, disk, claims[disk.id], progress)

        tasks = [asyncio.create_task(one(d)) for d in cmd.inventory.disks]
        try:
            return list(await asyncio.gather(*tasks))
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise

    async def _copy_one(
        self,
        cmd: volume.CopyDisks,
        provider: Provider | None,
        disk: Disk,
        claim: VolumeState,
        progress: ProgressCallback,
    ) -> DiskCopy:
        done = _copy_of(claim)
        if done is not None:
            return done  # copied by an earlier delivery: report it, never copy twice
        assert provider is not None
        rate = self._pace(cmd)
        with outcome(f"disk {disk.id} ({disk.name})"):
            opened = provider.open_disk(cmd.inventory, disk.id)
            rate = paced(opened, rate)
            async with opened as reader:
                source = image_ref(reader.qemu_source())
                if claim.source == VolumeSource.POPULATOR:
                    return await self.platform.populate(claim, source, progress, rate=rate)
                return await self.platform.import_disk(claim, source, progress, rate=rate)

    def _pace(self, cmd: volume.CopyDisks) -> Rate | None:
        if cmd.bandwidth and self.rates is None:
            raise PermanentError(
                "this volume-service has no bus to share bandwidth budgets on: "
                f"cannot keep to {', '.join(b.budget for b in cmd.bandwidth)}"
            )
        return self.rates.pace(cmd.bandwidth) if self.rates is not None else None

    async def _clean_temporaries(self, cmd: volume.CopyDisks, ctx: Context, why: str) -> None:
        try:
            removed = await self.platform.delete_temporary_volumes(
                cmd.namespace, cmd.migration, cmd.vm
            )
        except Exception as exc:  # the failure itself is what must be reported
            ctx.log.warning("could not remove temporary volumes after %s: %s", why, exc)
            return
        if removed:
            ctx.log.info("removed temporary volumes after %s: %s", why, ", ".join(removed))

    # -- CleanupVolumes ------------------------------------------------------------------

    async def cleanup_volumes(
        self, cmd: volume.CleanupVolumes, ctx: Context
    ) -> volume.VolumesCleaned:
        with outcome("clean-up"):
            if cmd.all_volumes:
                removed = await self.platform.delete_volumes(cmd.namespace, cmd.migration, cmd.vm)
            else:
                removed = await self.platform.delete_temporary_volumes(
                    cmd.namespace, cmd.migration, cmd.vm
                )
        ctx.log.info("removed %d %svolumes", len(removed), "" if cmd.all_volumes else "temporary ")
        return volume.VolumesCleaned(**cmd.reply(), removed=removed)


def paced(reader: object, rate: Rate | None) -> Rate | None:
    """Where a copy's bandwidth budgets apply: the reader's own move of the source's bytes
    when it makes one (a download, :class:`PacedReader`), else the copy; what the copy
    itself is paced by."""
    if rate is not None and isinstance(reader, PacedReader):
        reader.pace = rate
        return None
    return rate


def _copy_of(claim: VolumeState) -> DiskCopy | None:
    return claim.copy if claim.phase == Phase.SUCCEEDED and claim.copy is not None else None


def _check_checksums(copy: DiskCopy) -> None:
    src, dst = copy.source, copy.target
    if (src.algorithm, src.digest, src.bytes) != (dst.algorithm, dst.digest, dst.bytes):
        raise PermanentError(
            f"disk {copy.disk_id}: checksum mismatch after the copy into {copy.volume}: "
            f"source {src.algorithm}:{src.digest} ({src.bytes} bytes), "
            f"target {dst.algorithm}:{dst.digest} ({dst.bytes} bytes)"
        )


def _progress_event(cmd: volume.CopyDisks) -> Callable[[TransferProgress], volume.DiskProgress]:
    def make(p: TransferProgress) -> volume.DiskProgress:
        return volume.DiskProgress(
            **cmd.reply(),
            disk_id=p.disk_id,
            done=p.done,
            total=p.total,
            rate=round(p.rate, 1),
            precopy=cmd.precopy,
        )

    return make
