"""The VirtualMachine half of the target platform: create, start, watch, stop, delete.

The vm-service programs against :class:`VmPlatform` only. The local platform
writes the manifest to disk and boots the disks under QEMU; the kubernetes
platform creates the object in a cluster and watches its instance. Both find a
VM again by its name *and* ownership labels, so that a redelivered command
returns the VM it already made instead of making a second one.

Starting is split from waiting so that the service can report "starting"
(with where the console is) before the possibly long wait for the guest.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from enum import StrEnum
from typing import Any, Protocol

import msgspec

from ferry.proto.inventory import Volume


class VmPhase(StrEnum):
    STOPPED = "Stopped"  # defined, not running (runStrategy Halted, or powered off)
    STARTING = "Starting"  # process / instance started, guest not yet up
    RUNNING = "Running"  # the guest reached its login prompt (or the instance is Ready)
    FAILED = "Failed"  # did not boot in time, or died; ``reason`` says why


class VmInfo(msgspec.Struct, frozen=True, kw_only=True):
    """A VirtualMachine as the platform sees it now."""

    name: str
    namespace: str
    labels: dict[str, str] = msgspec.field(default_factory=dict)
    phase: VmPhase = VmPhase.STOPPED
    manifest: str = ""  # local: the path of the VirtualMachine YAML
    console: str = ""  # local: the path of the serial console log
    boot_seconds: float | None = None
    reason: str = ""
    existed: bool = False  # create_vm found it already there


class VmConflict(Exception):
    """A VM of that name exists but belongs to another plan/migration/source VM."""


class VmNotFound(LookupError):
    """No VM of that namespace and name."""


class InvalidVmName(ValueError):
    """A namespace or name that is not a DNS-1123 label: it would not be a Kubernetes
    name, and locally it would become a path outside the VM store (``../..``, ``/etc``)."""


class BootFailed(Exception):
    """The guest did not come up; ``console_tail`` holds the last console lines."""

    def __init__(self, reason: str, console_tail: Sequence[str] = ()) -> None:
        super().__init__(reason)
        self.reason = reason
        self.console_tail = list(console_tail)


class VmPlatform(Protocol):
    """VirtualMachines on the target."""

    async def create_vm(self, manifest: Mapping[str, Any], volumes: Sequence[Volume]) -> VmInfo:
        """Create the VM, or return the existing one with the same ownership labels.

        ``volumes`` are the target volumes its claims name (the local platform
        boots their files). Raises :class:`VmConflict` when the name is taken
        by a VM with other labels.
        """
        ...

    async def get_vm(self, namespace: str, name: str) -> VmInfo | None: ...

    async def find_vm(self, namespace: str, labels: Mapping[str, str]) -> VmInfo | None:
        """The VM in ``namespace`` carrying all of ``labels`` (ensure by label, not name)."""
        ...

    async def start_vm(self, namespace: str, name: str) -> VmInfo:
        """Power on; a VM already starting or running is left as it is."""
        ...

    async def wait_running(self, namespace: str, name: str, time_limit: float) -> VmInfo:
        """Wait until the guest is up; raises :class:`BootFailed` after ``time_limit`` seconds."""
        ...

    async def stop_vm(self, namespace: str, name: str) -> VmInfo:
        """Power off: graceful first, then forced. Stopping a stopped VM is harmless."""
        ...

    async def delete_vm(self, namespace: str, name: str) -> bool:
        """Stop and remove the VM; False when there was nothing to delete."""
        ...
