"""The schema check itself: it finds the schemas, and it can fail.

A validator that accepts everything would make every "validated" test
worthless, so these tests feed it broken objects and expect the JSON path of
the error back.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from ferry.platform import kubevirt, schemas
from ferry.proto.inventory import Disk, NetworkTarget, Nic, ProviderType, Vm, Volume


def valid_vm() -> dict[str, Any]:
    vm = Vm(
        id="vm-1",
        name="db01",
        provider_type=ProviderType.OVA,
        disks=[Disk(id="d1", name="d1", capacity=1 << 30)],
        nics=[Nic(id="n1", name="n1", mac="52:54:00:00:00:01")],
    )
    return kubevirt.build(
        vm,
        inspection=None,
        volumes=[Volume(disk_id="d1", name="db01-d1", size=1 << 30)],
        networks=[NetworkTarget(nic_id="n1")],
        target=kubevirt.Target(namespace="ns"),
        owner=kubevirt.Owner(plan="p", migration="m", vm_id="vm-1"),
    )


def data_volume() -> dict[str, Any]:
    return {
        "apiVersion": "cdi.kubevirt.io/v1beta1",
        "kind": "DataVolume",
        "metadata": {"name": "db01-d1", "namespace": "ns"},
        "spec": {
            "source": {"blank": {}},
            "storage": {"resources": {"requests": {"storage": "1Gi"}}},
        },
    }


def pvc() -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": "db01-d1", "namespace": "ns"},
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": "1Gi"}},
            "volumeMode": "Filesystem",
        },
    }


def test_schemas_are_the_packaged_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given no FERRY_SCHEMAS_DIR, and a working directory whose parents hold a
    # shared/schemas folder (the steering checkout)
    monkeypatch.delenv(schemas.ENV_DIR, raising=False)
    # When the directory is looked up
    found = schemas.schemas_dir()
    # Then it is the copy packaged with the library, never a folder found by searching
    assert found == schemas.PACKAGED_DIR
    assert (found / "kubevirt-v1.swagger.json").is_file()
    assert (found / "cdi-v1beta1.swagger.json").is_file()


def test_packaged_schemas_are_the_shared_ones() -> None:
    # Given the steering copy of the schemas, when this checkout has one beside it
    steering = Path(__file__).resolve().parents[4] / "shared" / "schemas"
    shared = [steering] if steering.is_dir() else []
    if not shared:
        pytest.skip(f"no {steering} beside this checkout to compare with")
    # Then every packaged document is byte-identical to it (no silent drift)
    for name in ("kubevirt-v1.swagger.json", "cdi-v1beta1.swagger.json"):
        assert (schemas.PACKAGED_DIR / name).read_bytes() == (shared[0] / name).read_bytes()


def test_valid_objects_pass() -> None:
    # Given a built VM, a DataVolume and a PVC, When validated, Then nothing is raised
    schemas.validate(valid_vm())
    schemas.validate(data_volume())
    schemas.validate(pvc())


@pytest.mark.parametrize(
    ("path", "value", "where"),
    [
        (("spec", "runStratgy"), "Always", "$.spec"),
        (
            ("spec", "template", "spec", "domain", "cpu", "cores"),
            "two",
            "$.spec.template.spec.domain.cpu.cores",
        ),
        (
            ("spec", "template", "spec", "domain", "devices", "disks", 0, "bootOrder"),
            "first",
            "$.spec.template.spec.domain.devices.disks[0].bootOrder",
        ),
        (
            ("spec", "template", "spec", "domain", "firmware", "bootloader", "efi"),
            {"secureboot": True},
            "$.spec.template.spec.domain.firmware.bootloader.efi",
        ),
    ],
)
def test_invalid_vm_is_rejected_with_the_json_path(
    path: tuple[str | int, ...], value: Any, where: str
) -> None:
    # Given a valid VM with one field broken (a typo or a wrong type)
    manifest = valid_vm()
    node: Any = manifest
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    # When it is validated
    with pytest.raises(schemas.SchemaValidationError) as caught:
        schemas.validate(manifest)
    # Then the error points at the broken field
    assert caught.value.path == where
    assert caught.value.kind == "VirtualMachine"


def test_missing_required_field_is_rejected() -> None:
    # Given a VM whose disk lost its required name
    manifest = valid_vm()
    del manifest["spec"]["template"]["spec"]["domain"]["devices"]["disks"][0]["name"]
    # When it is validated, Then the disk is named as the place of the error
    with pytest.raises(schemas.SchemaValidationError, match="'name' is a required property"):
        schemas.validate(manifest)


def test_invalid_data_volume_is_rejected() -> None:
    # Given a DataVolume with an unknown source field
    volume = data_volume()
    volume["spec"]["source"] = {"blank": {}, "ftp": {"url": "x"}}
    # When it is validated, Then the CDI schema rejects it
    with pytest.raises(schemas.SchemaValidationError) as caught:
        schemas.validate(volume)
    assert caught.value.path == "$.spec.source"


def test_invalid_core_object_is_rejected() -> None:
    # Given a PVC with a list where a quantity belongs, and one with an unknown field
    broken = pvc()
    broken["spec"]["resources"]["requests"]["storage"] = ["1Gi"]
    typo = copy.deepcopy(pvc())
    typo["spec"]["storageClass"] = "fast"
    # When they are validated, Then the upstream Kubernetes schema rejects both
    with pytest.raises(schemas.SchemaValidationError) as caught:
        schemas.validate(broken)
    assert caught.value.path == "$.spec.resources.requests.storage"
    with pytest.raises(schemas.SchemaValidationError) as caught:
        schemas.validate(typo)
    assert caught.value.path == "$.spec"


def test_unknown_kind_of_a_known_group_fails_loudly() -> None:
    # Given a kind KubeVirt does not define
    thing = {"apiVersion": "kubevirt.io/v1", "kind": "VirtualToaster", "spec": {}}
    # When it is validated, Then it is not silently accepted
    with pytest.raises(schemas.SchemasNotFound):
        schemas.validate(thing)


def test_missing_schemas_fail_loudly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given FERRY_SCHEMAS_DIR pointing at a directory without schemas
    monkeypatch.setenv(schemas.ENV_DIR, str(tmp_path))
    # When a VM is validated, Then it fails rather than passing unchecked
    with pytest.raises(schemas.SchemasNotFound, match=str(tmp_path)):
        schemas.validate(valid_vm())


def test_configured_directory_is_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a copy of the KubeVirt schema in a configured directory
    original = schemas.schemas_dir() / "kubevirt-v1.swagger.json"
    (tmp_path / "kubevirt-v1.swagger.json").write_bytes(original.read_bytes())
    monkeypatch.setenv(schemas.ENV_DIR, str(tmp_path))
    # When the directory is looked up, Then the configured one wins
    assert schemas.schemas_dir() == tmp_path
    schemas.validate(valid_vm())
