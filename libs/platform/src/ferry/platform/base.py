"""The target platform seam: one Protocol made of its volume, VM and workload parts.

Services never import an implementation; they ask :mod:`ferry.platform.factory`
for a ``Platform`` by name. Each half is its own Protocol so a service (or a
test) can depend on only what it uses: the volume-service on
:class:`~ferry.platform.volumes.VolumePlatform`, the vm-service on
:class:`~ferry.platform.vms.VmPlatform`, the conversion-service on
:class:`~ferry.platform.workloads.WorkloadPlatform`. The types they share (the
:class:`~ferry.platform.images.ImageRef` a transfer reads, the
:mod:`~ferry.platform.errors` a transfer raises) sit beside this module, so no
service reaches into an implementation for them.
"""

from __future__ import annotations

from typing import Protocol

from ferry.platform.vms import VmPlatform
from ferry.platform.volumes import VolumePlatform
from ferry.platform.workloads import WorkloadPlatform


class Platform(VolumePlatform, VmPlatform, WorkloadPlatform, Protocol):
    """Everything a target platform does: volumes, VirtualMachines, and workloads."""
