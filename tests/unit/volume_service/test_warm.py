"""The warm round's bookkeeping without I/O: which checkpoint each round counts from,
which ones it keeps, and when a source cannot do warm at all."""

from __future__ import annotations

from types import TracebackType
from typing import Any, Self, cast

import pytest

from ferry.bus import PermanentError
from ferry.platform.images import ImageRef
from ferry.platform.volumes import Phase, VolumePlatform, VolumeState
from ferry.proto import volume
from ferry.proto.inventory import Checksum, Disk, DiskCopy, Extent, ProviderType, Vm
from ferry.proto.volume import SourceRef
from ferry.providers.base import Provider
from ferry.volume_service import warm

VM = Vm(
    id="v",
    name="web",
    provider_type=ProviderType.LIBVIRT,
    disks=[Disk(id="vda", name="a", capacity=1 << 20)],
)
SUM = Checksum(algorithm="x", digest="0", bytes=1)


class View:
    def __init__(self, source: Source, since: str | None) -> None:
        self.source, self._since = source, since
        self.checkpoint = f"cp{len(source.names) + 1}"

    @property
    def since(self) -> str | None:
        return self._since

    async def __aenter__(self) -> Self:
        self.source.names.append(self.checkpoint)
        self.source.opened.append(self._since)
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        pass

    def size(self, disk_id: str) -> int:
        return 1 << 20

    async def changed_extents(self, disk_id: str) -> list[Extent]:
        return [Extent(0, 65536)] if self._since else [Extent(0, 1 << 20)]

    async def read(self, disk_id: str, offset: int, length: int) -> bytes:
        return b""

    def nbd_export(self, disk_id: str) -> tuple[str, str]:
        return "/sock", disk_id


class Source:
    def __init__(self, names: list[str] | None = None) -> None:
        self.names = list(names or [])
        self.opened: list[str | None] = []
        self.rounds: list[str] = []

    def changes(self, vm: Vm, since: str | None, round_id: str = "") -> View:
        self.rounds.append(round_id)
        return View(self, since)

    async def remove_checkpoint(self, vm: Vm, checkpoint: str) -> None:
        self.names.remove(checkpoint)

    async def checkpoints(self, vm: Vm) -> list[str]:
        return list(self.names)


class Platform:
    def __init__(self) -> None:
        self.calls: list[tuple[str, list[Extent] | None]] = []

    async def import_disk(
        self, volume: VolumeState, source: ImageRef, progress: Any = None, *, rate: Any = None
    ) -> DiskCopy:
        self.calls.append(("full", source.extents))
        return DiskCopy(disk_id="vda", volume="x", bytes_copied=1, source=SUM, target=SUM)

    async def apply_changes(
        self,
        volume: VolumeState,
        source: ImageRef,
        progress: Any = None,
        *,
        last: bool = False,
        rate: Any = None,
    ) -> DiskCopy:
        self.calls.append(("last" if last else "delta", source.extents))
        return DiskCopy(disk_id="vda", volume="x", bytes_copied=1, source=SUM, target=SUM)


class _Claim:
    """Only the phase of a claim matters to the round's bookkeeping."""

    def __init__(self, phase: Phase) -> None:
        self.phase = phase


def claim(phase: Phase) -> dict[str, VolumeState]:
    return {"vda": cast(VolumeState, _Claim(phase))}


def cmd(precopy: int, since: str, final: bool = False) -> volume.CopyDisks:
    ref = SourceRef(provider="kvm", type=ProviderType.LIBVIRT)
    return volume.CopyDisks(
        plan="p",
        migration="m",
        vm="v",
        step="s",
        namespace="ns",
        provider=ref,
        inventory=VM,
        precopy=precopy,
        final=final,
        warm=True,
        since=since,
    )


async def run(source: Source, platform: Platform, c: volume.CopyDisks, phase: Phase) -> warm.Round:
    return await warm.copy_round(
        cast(VolumePlatform, platform), source, c, claim(phase), lambda p: None
    )


async def test_rounds_count_from_the_previous_checkpoint_and_keep_only_it_and_the_new() -> None:
    source, platform = Source(), Platform()
    first = await run(source, platform, cmd(0, ""), Phase.PENDING)
    second = await run(source, platform, cmd(1, first.checkpoint), Phase.SUCCEEDED)
    third = await run(source, platform, cmd(2, second.checkpoint), Phase.SUCCEEDED)
    assert source.opened == [None, "cp1", "cp2"]
    assert source.names == ["cp2", "cp3"] and third.checkpoint == "cp3"
    assert [k for k, _ in platform.calls] == ["full", "delta", "delta"]
    assert platform.calls[1][1] == [Extent(0, 65536)]
    last = await run(source, platform, cmd(3, third.checkpoint, final=True), Phase.SUCCEEDED)
    assert last.checkpoint == "" and source.names == [] and platform.calls[-1][0] == "last"


async def test_a_view_is_asked_for_one_round_of_one_vm_the_same_for_every_attempt() -> None:
    # Given rounds 0 and 1, round 1 run twice (a killed attempt's redo), and the final
    # round with the last precopy's number
    source, platform = Source(), Platform()
    first = await run(source, platform, cmd(0, ""), Phase.PENDING)
    for _ in range(2):
        await run(source, platform, cmd(1, first.checkpoint), Phase.SUCCEEDED)
    await run(source, platform, cmd(1, first.checkpoint, final=True), Phase.SUCCEEDED)
    # Then the attempts of one round name it alike, and no two rounds alike
    assert source.rounds == ["m/v/0", "m/v/1", "m/v/1", "m/v/final"]


async def test_a_redelivered_first_round_on_filled_volumes_becomes_a_delta_from_the_oldest() -> (
    None
):
    source, platform = Source(["cp-old"]), Platform()
    done = await run(source, platform, cmd(0, ""), Phase.SUCCEEDED)
    assert source.opened == ["cp-old"] and platform.calls[0][0] == "delta"
    assert done.checkpoint == "cp2" and source.names == ["cp-old", "cp2"]


async def test_a_resumed_first_round_hands_the_killed_attempts_checkpoint_on() -> None:
    source, platform = Source(["cp-old"]), Platform()
    done = await run(source, platform, cmd(0, ""), Phase.POPULATING)
    assert platform.calls[0][0] == "full"
    assert done.checkpoint == "cp-old" and source.names == ["cp-old", "cp2"]


async def test_a_filled_first_round_without_checkpoints_gives_up_clearly() -> None:
    with pytest.raises(PermanentError, match="no checkpoint remains"):
        await run(Source(), Platform(), cmd(0, ""), Phase.SUCCEEDED)


def test_a_source_without_change_tracking_is_refused() -> None:
    with pytest.raises(PermanentError, match="cannot track changed blocks"):
        warm.warm_source(cast(Provider, object()), cmd(0, ""))
