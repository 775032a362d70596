"""Arrange the simulator as a vSphere administrator would, independent of Ferry's code.

The tests shape VMs (CBT, snapshots, odd disks, a real guest's disk) through a plain
pyVmomi connection of their own, so that what Ferry reads is set up by something
other than the code under test.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pyVim import connect
from pyVmomi import vim, vmodl

from ferry.testing.vcsim.server import Endpoint


@contextlib.contextmanager
def admin(endpoint: Endpoint) -> Iterator[Any]:
    """A service instance logged in as the simulator's user (certificate not checked)."""
    host, port = endpoint.host.rsplit(":", 1)
    si = connect.SmartConnect(
        host=host,
        port=int(port),
        user=endpoint.username,
        pwd=endpoint.password,
        disableSslCertValidation=True,
    )
    try:
        yield si
    finally:
        connect.Disconnect(si)


def find_vm(si: Any, name: str) -> Any:
    content = si.RetrieveContent()
    view = content.viewManager.CreateContainerView(content.rootFolder, [vim.VirtualMachine], True)
    try:
        return next(vm for vm in view.view if vm.name == name)
    finally:
        view.Destroy()


def run(task: Any, timeout: float = 60.0) -> Any:
    """Wait for an arranging task; the tests' own, independent of the provider's."""
    deadline = time.monotonic() + timeout
    while task.info.state in ("queued", "running"):
        if time.monotonic() > deadline:
            raise TimeoutError(f"task {task} still {task.info.state}")
        time.sleep(0.05)
    assert task.info.state == "success", task.info.error
    return task.info.result


def datastore_dir(si: Any, name: str = "LocalDS_0") -> Path:
    """The local folder the simulator serves a datastore from."""
    content = si.RetrieveContent()
    view = content.viewManager.CreateContainerView(content.rootFolder, [vim.Datastore], True)
    try:
        ds = next(ds for ds in view.view if ds.name == name)
        return Path(ds.info.url)
    finally:
        view.Destroy()


def snapshot_names(vm_ref: Any) -> list[str]:
    """Every snapshot of the VM, read through the property collector."""
    si = vim.ServiceInstance("ServiceInstance", vm_ref._stub)
    collector = vmodl.query.PropertyCollector
    spec = collector.FilterSpec(
        objectSet=[collector.ObjectSpec(obj=vm_ref)],
        propSet=[collector.PropertySpec(type=vim.VirtualMachine, pathSet=["snapshot"])],
    )
    names: list[str] = []
    for item in si.RetrieveContent().propertyCollector.RetrieveContents([spec]):
        for prop in item.propSet:
            stack = list(prop.val.rootSnapshotList) if prop.val else []
            while stack:
                node = stack.pop()
                names.append(node.name)
                stack.extend(node.childSnapshotList or [])
    return sorted(names)


def place_disk(si: Any, vm_name: str, raw: Path, *, cbt: bool = False) -> Path:
    """Make ``raw`` (a raw image) the VM's only disk: its flat extent, at its size.

    The file is copied sparsely, so the simulator's datastore holds the guest's
    data and holes as a real flat extent would; the disk's capacity is set to the
    image's size by a reconfigure, as an administrator growing a disk would.
    """
    vm_ref = find_vm(si, vm_name)
    [disk] = [d for d in vm_ref.config.hardware.device if isinstance(d, vim.vm.device.VirtualDisk)]
    size = raw.stat().st_size
    disk.capacityInBytes = size
    disk.capacityInKB = size // 1024
    change = vim.vm.device.VirtualDeviceSpec(operation="edit", device=disk)
    run(
        vm_ref.ReconfigVM_Task(
            vim.vm.ConfigSpec(deviceChange=[change], changeTrackingEnabled=cbt or None)
        )
    )
    backing: Any = disk.backing
    descriptor = Path(str(backing.fileName).split("] ", 1)[1]).name
    flat = datastore_dir(si) / vm_name / descriptor.replace(".vmdk", "-flat.vmdk")
    flat.unlink(missing_ok=True)
    cp = shutil.which("cp") or "cp"
    subprocess.run([cp, "--sparse=always", str(raw), str(flat)], check=True)
    return flat
