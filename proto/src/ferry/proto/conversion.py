"""The conversion-service's commands and events: virt-v2v."""

from __future__ import annotations

from enum import StrEnum

import msgspec

from ferry.proto.base import Command, Failed, StepEvent
from ferry.proto.inventory import Inspection, Vm, Volume
from ferry.proto.volume import Bandwidth, SourceRef


class ConversionMode(StrEnum):
    FULL = "full"  # virt-v2v reads the source and writes converted disks into the volumes
    IN_PLACE = "in-place"  # virt-v2v-in-place on disks an importer already copied


class ConvertGuest(Command, frozen=True, kw_only=True, tag="conversion.convert_guest.v1"):
    namespace: str
    mode: ConversionMode
    provider: SourceRef
    inventory: Vm
    volumes: list[Volume]  # bound target volumes, one per source disk, in disk order
    timeout_seconds: int = 3600
    # Every Budget with a bandwidth the VM touches: a full conversion's reads of the
    # source wait for all of them where the conversion-service serves the disks itself.
    bandwidth: list[Bandwidth] = msgspec.field(default_factory=list)


class ConversionProgress(StepEvent, frozen=True, kw_only=True, tag="conversion.progress.v1"):
    stage: str  # e.g. "Opening the source", "Inspecting", "Copying disk 1/1"
    disk: int | None = None  # 1-based disk index while copying
    disks: int | None = None
    percent: float | None = None  # of the current disk copy
    run: int = 1  # which delivery of the command this run is (a restarted conversion: 2…)
    elapsed: float = 0.0  # seconds since this run started; a heartbeat repeats the stage with it


class GuestConverted(StepEvent, frozen=True, kw_only=True, tag="conversion.guest_converted.v1"):
    mode: ConversionMode = ConversionMode.FULL
    inspection: Inspection = msgspec.field(default_factory=Inspection)
    volumes: list[Volume] = msgspec.field(default_factory=list)
    seconds: float = 0.0
    log: str = ""  # where the full virt-v2v log is kept


class ConversionFailed(Failed, frozen=True, kw_only=True, tag="conversion.failed.v1"):
    log: str = ""
