"""Changed block tracking (CBT): which areas of a disk hold data, or changed.

``QueryChangedDiskAreas`` with change id ``*`` answers the allocated areas of a
disk: the cold copy reads only those. With a snapshot's change id it answers what
changed since, which is what a warm precopy reads (see the issue's warm interface:
start tracking, changed extents since a checkpoint, read a range, remove the
checkpoint). vSphere may answer a query in parts; the loop asks again from where
each answer ended.
"""

from __future__ import annotations

from typing import Any

from pyVmomi import vmodl

from ferry.proto.inventory import Extent
from ferry.providers.base import ProviderError
from ferry.providers.vsphere import client

ALL = "*"


def changed_areas(
    vm_ref: Any, device_key: int, size: int, change_id: str = ALL, snapshot: Any = None
) -> list[Extent]:
    """Blocking: areas of the disk allocated (``*``) or changed since ``change_id``."""
    areas: list[Extent] = []
    offset = 0
    while offset < size:
        try:
            info = vm_ref.QueryChangedDiskAreas(snapshot, device_key, offset, change_id)
        except vmodl.MethodFault as exc:
            raise ProviderError(
                f"changed areas of disk {device_key} of {vm_ref._moId}: {client.fault_text(exc)}"
            ) from None
        for area in info.changedArea or []:
            areas.append(Extent(int(area.start), int(area.length)))
        if info.length <= 0:
            break
        offset = int(info.startOffset) + int(info.length)
    return areas
