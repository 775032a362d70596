"""NetworkMap and StorageMap: one generic pair map, two kinds, the same YAML and errors."""

from __future__ import annotations

import pytest

from ferry.proto import objects

HEAD = """
apiVersion: ferry.dev/v1alpha1
kind: {kind}
metadata: {{name: m}}
spec:
  provider: {{source: {{name: src}}, destination: {{name: host}}}}
  map:
"""


def test_both_kinds_read_their_pairs_and_find_by_id_or_name() -> None:
    # Given a network map and a storage map in one YAML stream
    text = (
        HEAD.format(kind="NetworkMap")
        + "    - {source: {id: net-1}, destination: {type: multus, name: br}}\n---\n"
        + HEAD.format(kind="StorageMap")
        + "    - {source: {name: fast}, destination: {storageClass: ssd}}\n"
    )

    # When they are loaded
    networks, storage = objects.load_documents(text, "maps.yaml")

    # Then each is its kind, with typed destinations found by the source key
    assert isinstance(networks, objects.NetworkMap) and isinstance(storage, objects.StorageMap)
    found = networks.find("net-1")
    assert isinstance(found, objects.NetworkDestination) and found.name == "br"
    assert storage.find("fast") == objects.StorageDestination(storageClass="ssd")
    assert networks.find("") is None and storage.find("slow") is None
    assert objects.from_document(objects.to_document(storage)) == storage
    assert list(objects.to_document(networks))[:3] == ["apiVersion", "metadata", "kind"]


@pytest.mark.parametrize(
    ("kind", "pair", "problem"),
    [
        ("NetworkMap", "nope", "instance of NetworkPair"),
        ("StorageMap", "nope", "instance of StoragePair"),
        ("StorageMap", "{source: {name: a}, destination: {}}", r"\[0\]\.destination\.storageClass"),
        ("NetworkMap", "{source: {}, destination: {}}", "give id or name"),
    ],
)
def test_errors_name_the_kind_and_the_path(kind: str, pair: str, problem: str) -> None:
    # Given a map whose pair is wrong, When it is read, Then the error says where and what
    with pytest.raises(objects.ObjectError, match=problem):
        objects.load_documents(HEAD.format(kind=kind) + f"    - {pair}\n", "maps.yaml")
