"""Helpers for the vSphere tests: arrange the simulator as an administrator would."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pyVmomi import vim

from ferry.providers.vsphere.provider import VsphereProvider
from ferry.testing.vcsim.server import Endpoint


def make_provider(endpoint: Endpoint, **settings: str) -> VsphereProvider:
    secret = {"user": endpoint.username, "password": endpoint.password}
    return VsphereProvider.create(endpoint.url, settings, secret)


def find_vm(si: Any, name: str) -> Any:
    content = si.RetrieveContent()
    view = content.viewManager.CreateContainerView(content.rootFolder, [vim.VirtualMachine], True)
    try:
        return next(vm for vm in view.view if vm.name == name)
    finally:
        view.Destroy()


def run(task: Any) -> Any:
    """Wait for an arranging task; the tests' own, independent of the provider's."""
    while task.info.state in ("queued", "running"):
        pass
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
