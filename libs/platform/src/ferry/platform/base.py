"""The target platform seam: one Protocol made of its volume and VM halves.

Services never import an implementation; they ask :mod:`ferry.platform.factory`
for a ``Platform`` by name. Each half is its own Protocol so a service (or a
test) can depend on only what it uses: the volume-service on
:class:`~ferry.platform.volumes.VolumePlatform`, the vm-service on
:class:`~ferry.platform.vms.VmPlatform`.
"""

from __future__ import annotations

from typing import Protocol

from ferry.platform.vms import VmPlatform
from ferry.platform.volumes import VolumePlatform


class Platform(VolumePlatform, VmPlatform, Protocol):
    """Everything a target platform does: volumes and workloads, and VirtualMachines."""
