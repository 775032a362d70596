"""A cluster object's name in the objects bucket: its namespace and name joined."""

from __future__ import annotations

import pytest

from ferry.migration_controller.operator import naming
from ferry.proto import objects


def _plan(**vm: object) -> objects.Plan:
    obj = objects.from_document(
        {
            "apiVersion": "ferry.dev/v1alpha1",
            "kind": "Plan",
            "metadata": {"name": "plan1", "namespace": "team-a", "uid": "u-1"},
            "spec": {
                "provider": {
                    "source": {"name": "vcenter"},
                    "destination": {"name": "host", "namespace": "shared"},
                },
                "map": {"network": {"name": "net"}, "storage": {"name": "disks"}},
                "targetNamespace": "migrated",
                "vms": [{"id": "vm-1", "hooks": [{"hook": {"name": "notify"}, "step": "PreHook"}]}],
            },
        }
    )
    assert isinstance(obj, objects.Plan)
    return obj


def test_an_object_and_what_it_names_are_kept_under_their_namespaces() -> None:
    plan = _plan()
    stored = naming.qualified(plan, "team-a")
    # Its own name, and each Ferry object it names in its namespace, or the one named
    assert stored.name == "team-a.plan1"
    assert [name for _, _, name in stored.refs()] == [
        "team-a.vcenter", "shared.host", "team-a.net", "team-a.disks", "team-a.notify",
    ]  # fmt: skip
    # and the object given is left as it was
    assert plan.name == "plan1" and plan.spec.provider.source.name == "vcenter"


def test_a_provider_keeps_its_secret_reference_as_the_cluster_has_it() -> None:
    provider = objects.from_document(
        {
            "apiVersion": "ferry.dev/v1alpha1",
            "kind": "Provider",
            "metadata": {"name": "vcenter", "namespace": "team-a"},
            "spec": {"type": "vsphere", "url": "https://vc/sdk", "secret": {"name": "creds"}},
        }
    )
    stored = naming.qualified(provider, "team-a")
    assert isinstance(stored, objects.Provider) and stored.spec.secret is not None
    assert stored.name == "team-a.vcenter" and stored.spec.secret.name == "creds"


def test_the_cluster_name_comes_back_from_what_is_stored() -> None:
    doc = objects.to_document(naming.qualified(_plan(), "team-a"))
    assert naming.cluster_name(doc) == "plan1"
    assert naming.shown(doc) == "team-a/plan1" and naming.slashed("team-a.plan1") == "team-a/plan1"
    # an object `ferry apply` stored (no uid) keeps its name, dots and all
    applied = {"metadata": {"name": "team-a.plan1", "namespace": "team-a"}}
    assert naming.cluster_name(applied) == "team-a.plan1" == naming.shown(applied)


def test_a_name_too_long_once_joined_is_refused_with_the_reason() -> None:
    with pytest.raises(naming.NameTooLong, match="longer than 253 characters"):
        naming.joined("n" * 63, "x" * 190)
    assert len(naming.joined("n" * 63, "x" * 189)) == 253
