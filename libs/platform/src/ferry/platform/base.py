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

A platform may also have HTTP routes to serve on its service's own HTTP server
(:class:`Served`: the kubernetes platform's grant broker, which its transfer pods ask
for bandwidth); :func:`http_routes` hands them to the service, opaque.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from ferry.platform.vms import VmPlatform
from ferry.platform.volumes import VolumePlatform
from ferry.platform.workloads import WorkloadPlatform


class Platform(VolumePlatform, VmPlatform, WorkloadPlatform, Protocol):
    """Everything a target platform does: volumes, VirtualMachines, and workloads."""


@runtime_checkable
class Served(Protocol):
    """A platform with routes of its own (aiohttp ``RouteDef``s) for the service to serve."""

    def http_routes(self) -> Sequence[object]: ...


def http_routes(platform: object) -> list[object]:
    """The routes ``platform`` asks its service to serve (none for most)."""
    return list(platform.http_routes()) if isinstance(platform, Served) else []
