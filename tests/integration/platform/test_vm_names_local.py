"""The local VM store never builds a path from an unchecked namespace or name."""

from __future__ import annotations

from pathlib import Path

import pytest

from ferry.platform.local.vms import LocalVms
from ferry.platform.vms import InvalidVmName


@pytest.mark.parametrize(
    ("namespace", "name"), [("../..", "vm"), ("/tmp", "vm"), ("default", "../../x")]
)
async def test_a_namespace_or_name_that_escapes_the_store_is_refused(
    tmp_path: Path, namespace: str, name: str
) -> None:
    # Given a VM store in a data dir
    vms = LocalVms(tmp_path / "data")
    manifest = {
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachine",
        "metadata": {"name": name, "namespace": namespace, "labels": {}},
        "spec": {"runStrategy": "Halted", "template": {"spec": {}}},
    }
    # When a VM is created or looked up there, Then it is refused before any file is written
    with pytest.raises(InvalidVmName, match="DNS-1123"):
        await vms.create_vm(manifest, [])
    with pytest.raises(InvalidVmName):
        await vms.get_vm(namespace, name)
    if namespace != "default":
        with pytest.raises(InvalidVmName):
            await vms.find_vm(namespace, {})
    assert not any(p.suffix in {".yaml", ".json"} for p in tmp_path.rglob("*"))
