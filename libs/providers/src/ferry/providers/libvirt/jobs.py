"""A domain's backup job as libvirt keeps it: Ferry's found, ended, and its checkpoint.

A domain runs at most one backup job. Ferry's are recognised by where they serve
(a socket in a ``ferry-backup-*`` job directory) or, on TCP, by their export names
(``ferry-<target>``); every checkpoint Ferry takes is named ``ferry-…``.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from pathlib import Path
from typing import Any

import libvirt

from ferry.providers.base import ProviderError
from ferry.providers.libvirt import exports, inventory

CHECKPOINT_PREFIX = "ferry-"
WORKDIR_PREFIX = "ferry-backup-"


def abort_leftover(dom: libvirt.virDomain) -> bool:
    """Abort a backup job a crashed Ferry left on ``dom``; True when one was aborted."""
    try:
        desc = dom.backupGetXMLDesc(0)
    except libvirt.libvirtError:
        return False  # no backup job
    root = inventory.parse(desc)
    server = root.find("server")
    socket = server.get("socket", "") if server is not None else ""
    if WORKDIR_PREFIX not in socket and not ours_on_tcp(root):
        return False  # someone else's backup: not ours to end
    end_job(dom)
    if socket:
        shutil.rmtree(Path(socket).parent, ignore_errors=True)
    return True


def ours_on_tcp(desc: Any) -> bool:
    server = desc.find("server")
    names = [
        n.get("exportname", "") for n in desc.findall("disks/disk") if n.get("backup") == "yes"
    ]
    return (
        server is not None
        and server.get("transport", "tcp") == "tcp"
        and bool(names)
        and all(n.startswith(exports.EXPORT_PREFIX) for n in names)
    )


def _parent(checkpoint: libvirt.virDomainCheckpoint) -> str:
    try:
        return str(checkpoint.getParent(0).getName())
    except libvirt.libvirtError:
        return ""  # the first checkpoint has none


def newest_after(dom: libvirt.virDomain, since: str) -> str | None:
    """The checkpoint the running job took: the only leaf, ``since`` among its ancestors.

    A job's checkpoint is made when the job begins (libvirt makes it a child of the
    newest checkpoint then), and a domain runs one job at a time, so it is the one
    Ferry checkpoint nothing descends from. More than one such leaf is ambiguous,
    and then nothing is taken over (the round starts afresh).
    """
    parents: dict[str, str] = {
        str(c.getName()): _parent(c)
        for c in dom.listAllCheckpoints(0)
        if c.getName().startswith(CHECKPOINT_PREFIX)
    }
    leaves = [name for name in parents if name not in parents.values()]
    if len(leaves) != 1 or leaves[0] == since:
        return None
    seen, node = set(), parents[leaves[0]]
    while node and node not in seen:
        if node == since:
            return leaves[0]
        seen.add(node)
        node = parents.get(node, "")
    return None


def end_job(dom: libvirt.virDomain, timeout: float = 30.0) -> None:
    """Abort the domain's backup job and wait until libvirt has forgotten it.

    The abort returns before the job's end is processed; a next backup started in
    that window would be refused as a second job.
    """
    with contextlib.suppress(libvirt.libvirtError):
        dom.abortJob()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            dom.backupGetXMLDesc(0)
        except libvirt.libvirtError:
            return
        time.sleep(0.05)
    raise ProviderError(f"the backup job of {dom.name()} did not end within {timeout:.0f}s")
