"""A warm-migration copy round, written once for every source that tracks changes.

The controller sends one ``CopyDisks`` per round (``warm``, ``precopy`` = the
round, ``since`` = the checkpoint the previous round returned) and, after the
source was powered off, the last one (``final``). A round here is:

1. open the provider's view (:meth:`WarmSource.changes`): a point-in-time picture
   of every disk taken together with a new checkpoint;
2. round 0 copies every allocated extent with the ordinary, verified importer copy;
   later rounds write only the changed extents onto the filled volumes
   (``apply_changes``), and the last one also compares the whole disks (unless
   the service's ``warm_final_verify`` is off);
   A delta round killed mid-way and run again resumes inside the round when the
   provider shows the same picture again (libvirt takes over the backup job the
   killed attempt left; vSphere finds the snapshot that attempt took, named for
   the round, :func:`round_id`): the volume's progress is keyed by the view's
   checkpoint;
3. checkpoints older than ``since`` are removed once the round's data is written
   (``since`` itself is kept, so a redelivered round can run again); the last
   round removes every checkpoint, so nothing is left at the source.

A first round run again after a crash must not count from a fresh checkpoint:
the volumes hold bytes read by the killed attempt (all of them, or up to the
copy's resume point), and writes since that attempt's view would be lost. The
oldest checkpoint Ferry left covers them: a filled first round becomes a delta
from it, and a resumed one hands it to the next round.
"""

from __future__ import annotations

from dataclasses import dataclass

from ferry.bus import PermanentError
from ferry.platform.images import ImageRef
from ferry.platform.volumes import Phase, ProgressCallback, Rate, VolumePlatform, VolumeState
from ferry.proto import volume
from ferry.proto.inventory import DiskCopy, Extent
from ferry.providers.base import (
    ChangedDisks,
    HttpsExport,
    Provider,
    RangeExport,
    TlsNbdExport,
    WarmSource,
)


@dataclass(frozen=True)
class Round:
    copies: list[DiskCopy]
    checkpoint: str  # '' after the last round: nothing remains at the source
    changed: int


def round_id(cmd: volume.CopyDisks) -> str:
    """Which round of which VM of which migration asks for a view: the same for every
    attempt of the round, different for every other round (the final round too,
    which has the last precopy's number but a picture taken after the power-off)."""
    which = "final" if cmd.final else str(cmd.precopy)
    return f"{cmd.migration}/{cmd.vm}/{which}"


def warm_source(provider: Provider, cmd: volume.CopyDisks) -> WarmSource:
    if not isinstance(provider, WarmSource):
        raise PermanentError(
            f"{cmd.provider.type.value} sources cannot track changed blocks: migrate cold"
        )
    return provider


async def copy_round(
    platform: VolumePlatform,
    source: WarmSource,
    cmd: volume.CopyDisks,
    claims: dict[str, VolumeState],
    progress: ProgressCallback,
    *,
    verify_whole: bool = True,
    rate: Rate | None = None,
) -> Round:
    vm = cmd.inventory
    since = cmd.since or None
    left = await source.checkpoints(vm) if since is None else []
    if since is None and all(c.phase == Phase.SUCCEEDED for c in claims.values()):
        if not left:
            raise PermanentError(
                f"VM {vm.name}: the first round's volumes are filled but no checkpoint "
                "remains at the source to count changes from; start the migration again"
            )
        since = left[0]
    copies: list[DiskCopy] = []
    changed = 0
    async with source.changes(vm, since, round_id(cmd)) as view:
        for disk in vm.disks:
            extents = await view.changed_extents(disk.id)
            changed += sum(e.length for e in extents)
            claim = claims[disk.id]
            copies.append(
                await _one(
                    platform, view, cmd, disk.id, extents, claim, progress, verify_whole, rate
                )
            )
        taken = view.checkpoint
    # A first round that resumed a killed attempt's copy holds bytes read before this
    # view: the next round must count from that attempt's checkpoint, which covers them.
    follow = left[0] if since is None and left else taken
    keep = set() if cmd.final else {since, taken, follow}
    for old in await source.checkpoints(vm):
        if old not in keep:
            await source.remove_checkpoint(vm, old)
    return Round(copies, "" if cmd.final else follow, changed)


async def _one(
    platform: VolumePlatform,
    view: ChangedDisks,
    cmd: volume.CopyDisks,
    disk_id: str,
    extents: list[Extent],
    claim: VolumeState,
    progress: ProgressCallback,
    verify_whole: bool,
    rate: Rate | None = None,
) -> DiskCopy:
    socket, export = view.nbd_export(disk_id)
    # the same picture over HTTPS or TLS, where the source serves it, for a transfer pod
    url, ca = view.https_export(disk_id) if isinstance(view, HttpsExport) else ("", "")
    tls = view.tls_export(disk_id) if isinstance(view, TlsNbdExport) else None
    ranged = view.range_export(disk_id) if isinstance(view, RangeExport) else None
    ref = ImageRef(
        path=f"{cmd.inventory.name}/{disk_id}",
        nbd_socket=socket,
        nbd_export=export,
        size=view.size(disk_id),
        extents=extents,
        # a killed attempt's progress counts only for this picture of this round
        snapshot=f"{view.since or ''}>{view.checkpoint}",
        url=url,
        ca=ca,
        nbd_tls=tls,
        http_range=ranged,
    )
    if view.since is None:
        return await platform.import_disk(claim, ref, progress, rate=rate)
    last = cmd.final and verify_whole
    return await platform.apply_changes(claim, ref, progress, last=last, rate=rate)
