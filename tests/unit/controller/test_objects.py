"""The user-facing objects: YAML that reads like the KubeVirt-migration API, clear errors."""

from __future__ import annotations

import pytest

from ferry.proto import names, objects

from .conftest import YAML


def test_multi_document_yaml_reads_every_kind() -> None:
    # Given a file with providers, maps, a plan and a migration
    # When it is read
    docs = objects.load_documents(YAML, "plan.yaml")
    # Then every object has its kind, and the plan's fields are typed
    assert [d.KIND for d in docs] == [
        "Provider",
        "Provider",
        "NetworkMap",
        "StorageMap",
        "Plan",
        "Migration",
    ]
    plan = docs[4]
    assert isinstance(plan, objects.Plan)
    assert plan.spec.targetNamespace == "migrated" and plan.spec.maxInFlight == 20
    assert plan.spec.vms[1].targetName == "db"
    assert docs[1].is_local_target and not docs[0].is_local_target  # type: ignore[attr-defined]


def test_refs_name_every_dependency() -> None:
    # Given the plan
    plan = objects.load_documents(YAML, "plan.yaml")[4]
    # Then its references are the providers and both maps, each with its path
    assert plan.refs() == [
        ("spec.provider.source", "Provider", "vmware"),
        ("spec.provider.destination", "Provider", "host"),
        ("spec.map.network", "NetworkMap", "net"),
        ("spec.map.storage", "StorageMap", "disks"),
    ]


HEAD = "apiVersion: ferry.dev/v1alpha1\n"


def provider(name: str, spec: str) -> str:
    return f"{HEAD}kind: Provider\nmetadata: {{name: {name}}}\nspec: {spec}\n"


TYPES = "'ova', 'vsphere', 'ovirt', 'openstack', 'kubevirt' or 'libvirt'"
KINDS = "Provider, NetworkMap, StorageMap, Hook, Plan, Migration, Budget"
BAD = [
    (
        f"{HEAD}kind: Plan\nmetadata: {{name: p}}\nspec: {{nope: 1}}\n",
        # every problem, one per line, not only the first
        "f.yaml: document 1 (Plan p): spec.provider: Field required\n"
        "f.yaml: document 1 (Plan p): spec.map: Field required\n"
        "f.yaml: document 1 (Plan p): spec.vms: Field required\n"
        "f.yaml: document 1 (Plan p): spec.nope: unknown field",
    ),
    (
        provider("p", "{type: ova, colour: red}"),
        "f.yaml: document 1 (Provider p): spec.colour: unknown field",
    ),
    (
        provider("p", "{type: hyperv}"),
        f"f.yaml: document 1 (Provider p): spec.type: Input should be {TYPES}",
    ),
    ("kind: Gadget\n", f"f.yaml: document 1: kind: unknown kind 'Gadget' (one of {KINDS})"),
    (
        "apiVersion: v1\nkind: Plan\n",
        "f.yaml: document 1 (Plan ?): apiVersion: expected 'ferry.dev/v1alpha1', got 'v1'",
    ),
    (
        "a: [1, 2\n",
        "f.yaml: line 2, column 1: invalid YAML: expected ',' or ']', but got '<stream end>'",
    ),
    ("", "f.yaml: no objects in the file"),
    (
        provider("Bad_Name", "{type: ova}"),
        "f.yaml: document 1 (Provider Bad_Name): metadata.name: Value error, 'Bad_Name' is not "
        "a DNS-1123 name (lower-case letters, digits, '-', '.')",
    ),
]


@pytest.mark.parametrize(("text", "message"), BAD)
def test_errors_are_lines_with_file_place_and_problem(text: str, message: str) -> None:
    # Given a bad document
    # When it is read
    with pytest.raises(objects.ObjectError) as caught:
        objects.load_documents(text, "f.yaml")
    # Then the error is one line per problem, each naming the file, where and what
    assert str(caught.value) == message
    assert all(line.startswith("f.yaml: ") for line in str(caught.value).splitlines())


@pytest.mark.parametrize(
    "spec",
    [
        "{type: vsphere, url: 'https://admin:hunter2@vcenter/sdk'}",
        "{type: vsphere, url: 'https://vcenter/sdk', settings: {password: hunter2}}",
        "{type: openstack, settings: {api_key: abc}}",
    ],
)
def test_secrets_are_never_inline(spec: str) -> None:
    # Given a provider that carries a credential instead of referring to a secret
    text = provider("p", spec)
    # When it is read
    with pytest.raises(objects.ObjectError) as caught:
        objects.load_documents(text, "f.yaml")
    # Then it is refused, pointing at spec.secret, and the error does not repeat the secret
    assert "spec.secret" in str(caught.value)
    assert "hunter2" not in str(caught.value) and "abc" not in str(caught.value)


def test_dns1123_target_names() -> None:
    assert names.to_dns1123_label("Web_01.Corp") == "web-01-corp"
    assert names.to_dns1123_label("---") == "vm"
    assert len(names.to_dns1123_label("x" * 100)) == 63
    assert names.is_dns1123_label("db-1") and not names.is_dns1123_label("DB")


def test_round_trip_through_the_store_shape() -> None:
    # Given objects as stored (plain documents)
    for obj in objects.load_documents(YAML, "plan.yaml"):
        # When one is read back
        again = objects.from_document(objects.to_document(obj))
        # Then it is the same object
        assert again == obj
