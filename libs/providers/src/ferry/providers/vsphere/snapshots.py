"""Ferry's snapshots on a source VM: made for a copy, never left behind.

A snapshot Ferry takes is named ``ferry-<tag>`` (the tag names the migration and
round), so whoever runs next (the same step redelivered after a kill -9, a
clean-up, a cancel) finds every one of them by name in the VM's snapshot tree and
removes it, consolidating the disks. Nothing needs remembering across a crash: the
tree is the record. User snapshots (any other name) are never touched; the
validator reports them instead.

Snapshots are quiesced when VMware Tools runs in the guest; a guest whose
quiescing fails (no VSS writer, frozen file systems timing out) gets a
crash-consistent snapshot rather than no migration.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from pyVmomi import vim, vmodl

from ferry.providers.base import ProviderError
from ferry.providers.vsphere import client

log = logging.getLogger(__name__)

FERRY_PREFIX = "ferry-"
DESCRIPTION = "taken by Ferry for a disk copy; removed when the copy ends"


def tree(vm_ref: Any) -> Any:
    """Blocking: the VM's ``snapshot`` property, None when it has no snapshot.

    Read through the property collector rather than a property fetch: an unset
    property is then simply absent (vcsim's fetch of it drops the connection).
    """
    pc = vim.ServiceInstance("ServiceInstance", vm_ref._stub).RetrieveContent().propertyCollector
    spec = vmodl.query.PropertyCollector.FilterSpec(
        objectSet=[vmodl.query.PropertyCollector.ObjectSpec(obj=vm_ref)],
        propSet=[
            vmodl.query.PropertyCollector.PropertySpec(
                type=vim.VirtualMachine, pathSet=["snapshot"]
            )
        ],
    )
    for item in pc.RetrieveContents([spec]):
        for prop in item.propSet:
            if prop.name == "snapshot":
                return prop.val
    return None


def walk(info: Any) -> Iterator[Any]:
    """Every node of a VM's ``snapshot`` property (``VirtualMachineSnapshotInfo``)."""
    stack = list(info.rootSnapshotList) if info is not None else []
    while stack:
        node = stack.pop()
        yield node
        stack.extend(node.childSnapshotList or [])


def snapshot_names(tree: Any) -> list[str]:
    return sorted(node.name for node in walk(tree))


def create(vm_ref: Any, tag: str, *, quiesce: bool, description: str = DESCRIPTION) -> Any:
    """Blocking: a new ``ferry-<tag>`` snapshot (memory never included); its moref."""
    name = FERRY_PREFIX + tag
    if quiesce:
        try:
            return client.wait_for(
                vm_ref.CreateSnapshot_Task(name, description, False, True),
                f"quiesced snapshot of {vm_ref._moId}",
            )
        except ProviderError as exc:
            log.warning("quiesced snapshot failed, taking a crash-consistent one: %s", exc)
    return client.wait_for(
        vm_ref.CreateSnapshot_Task(name, description, False, False),
        f"snapshot of {vm_ref._moId}",
    )


def leftovers(vm_ref: Any) -> list[Any]:
    """Ferry's snapshot nodes on the VM, deepest first so children go before parents."""
    nodes = [node for node in walk(tree(vm_ref)) if node.name.startswith(FERRY_PREFIX)]
    return list(reversed(nodes))


def remove_all(vm_ref: Any) -> list[str]:
    """Blocking: remove every Ferry snapshot (children of user ones kept); their names."""
    removed = []
    for node in leftovers(vm_ref):
        client.wait_for(
            node.snapshot.RemoveSnapshot_Task(removeChildren=False, consolidate=True),
            f"removing snapshot {node.name!r} of {vm_ref._moId}",
        )
        removed.append(node.name)
    if removed:
        log.info("removed Ferry snapshots of %s: %s", vm_ref._moId, ", ".join(removed))
    return removed


def tools_running(vm_ref: Any) -> bool:
    guest = vm_ref.guest
    return guest is not None and guest.toolsRunningStatus == "guestToolsRunning"
