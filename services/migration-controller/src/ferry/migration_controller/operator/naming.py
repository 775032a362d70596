"""A cluster object's name in Ferry's objects bucket: ``<namespace>.<name>``.

The bucket keeps objects by kind and name, as ``ferry apply`` gives them; a cluster
keeps them by kind, namespace and name, and two teams may each have a Provider
``vcenter`` in their own namespace. So the operator stores a cluster object under
its namespace and name joined by a dot, and every reference it holds to another
Ferry object (a Plan's Providers, maps and hooks, a Migration's Plan) the same way,
in the referring object's namespace unless the reference names another. A Migration
``m1`` in namespace ``team-a`` therefore runs as migration ``team-a.m1``: its events,
its VMs' states and the labels on what it makes on the target say so.

The join cannot be ambiguous: a namespace is a DNS-1123 label (no dots), so the
first dot of a stored name ends its namespace. The result is still a DNS-1123
subdomain, as every object name in the bucket must be; one longer than a name may
be (253 characters) is refused with that reason.
"""

from __future__ import annotations

import re
from typing import Any

from ferry.proto import objects

MAX_NAME = 253  # a DNS-1123 subdomain's length, which every stored name must keep
_STEP = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(?:\[(\d+)\])?")

Document = dict[str, Any]


class NameTooLong(ValueError):
    """The namespace and name together are longer than a stored name may be."""


def joined(namespace: str, name: str) -> str:
    """The bucket name of the cluster object ``name`` of ``namespace``."""
    if not namespace:
        return name
    stored = f"{namespace}.{name}"
    if len(stored) > MAX_NAME:
        raise NameTooLong(
            f"{namespace}/{name}: Ferry keeps it as {namespace}.{name}, which is longer than "
            f"{MAX_NAME} characters; use a shorter name"
        )
    return stored


def cluster_name(stored: Document) -> str:
    """The name in its cluster of a stored object that came from the cluster (the part
    after its namespace); the stored name itself otherwise."""
    meta = stored.get("metadata") or {}
    name, namespace = str(meta.get("name", "")), str(meta.get("namespace", ""))
    prefix = f"{namespace}."
    if meta.get("uid") and namespace and name.startswith(prefix):
        return name[len(prefix) :]
    return name


def slashed(name: str) -> str:
    """A name :func:`joined` made, as people name the cluster object: ``namespace/name``."""
    namespace, dot, rest = name.partition(".")
    return f"{namespace}/{rest}" if dot else name


def shown(stored: Document) -> str:
    """How a stored object is named to people: ``namespace/name`` for one from the cluster
    (as kubectl names it), its name otherwise."""
    meta = stored.get("metadata") or {}
    name = cluster_name(stored)
    if meta.get("uid") and name != meta.get("name"):
        return f"{meta.get('namespace')}/{name}"
    return name


def _at(obj: Any, path: str) -> Any:
    """The part of ``obj`` at a :meth:`~ferry.proto.objects.FerryObjectBase.refs` path
    (``spec.vms[0].hooks[1].hook``)."""
    for step in path.split("."):
        found = _STEP.fullmatch(step)
        if found is None:
            raise ValueError(f"not a reference path: {path!r}")
        obj = getattr(obj, found.group(1))
        if found.group(2) is not None:
            obj = obj[int(found.group(2))]
    return obj


def qualified(obj: objects.FerryObjectBase, namespace: str) -> objects.FerryObjectBase:
    """``obj`` of the cluster's ``namespace`` as the bucket keeps it: its name and every
    Ferry object it refers to joined with their namespaces (raises :class:`NameTooLong`)."""
    if not namespace:
        return obj
    copy = obj.model_copy(deep=True)
    copy.metadata.name = joined(namespace, obj.metadata.name)
    for path, _, _ in obj.refs():
        ref = _at(copy, path)
        ref.name = joined(ref.namespace or namespace, ref.name)
    return copy
