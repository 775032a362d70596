"""The objects bucket (``ferry-objects``) as ``ferry apply`` writes it, for everyone who does.

``ferry apply`` and the controller's operator mode (which applies the ``ferry.dev``
objects it finds in a cluster) hand objects to Ferry the same way, here: every
object validated (:func:`ferry.proto.objects.parse_object`), every reference
checked (:func:`check_refs`: it names an object that exists or comes in the same
batch), then stored keeping the controller's ``status`` (:func:`store`). Storing a
Migration starts it; storing one with new ``spec.cancel`` entries or a new
``spec.cutover`` cancels those VMs or moves the cutover.

A migration's per-VM states (``ferry-vms``) are read here too (:func:`vm_states`):
``ferry describe migration`` shows them, and the operator writes their summary
into the Migration's status.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from ferry.bus import Bus, Conflict, KeyValue
from ferry.proto import migration, objects, subjects
from ferry.proto.state import VmView
from ferry.proto.subjects import Bucket

ALL = "*"
"""The ``vm`` of a message about a whole migration rather than one of its VMs."""
Document = dict[str, Any]
Batch = list[tuple[str, int, objects.FerryObjectBase]]  # (source, index in it, object)
# (the referring object, kind, name) → whether that object exists
Exists = Callable[[objects.FerryObjectBase, str, str], Awaitable[bool]]

# What a Ferry object keeps of a Kubernetes object's metadata (the rest is the server's).
KEPT_METADATA = ("name", "namespace", "labels", "annotations", "uid", "creationTimestamp")


def kv(bus: Bus) -> KeyValue[dict[str, Any]]:
    return bus.kv(Bucket.OBJECTS, dict)


def key_of(kind: str, name: str) -> str:
    return subjects.object_key(kind, name)


async def get_doc(bus: Bus, kind: str, name: str) -> Document | None:
    entry = await kv(bus).get(key_of(kind, name))
    return None if entry is None else dict(entry.value)


async def list_docs(bus: Bus, kind: str) -> list[Document]:
    prefix = kind.lower() + "."
    docs = []
    for key in await kv(bus).keys(prefix):
        entry = await kv(bus).get(key)
        if entry is not None:
            docs.append(dict(entry.value))
    return sorted(docs, key=lambda d: str(d.get("metadata", {}).get("name", "")))


def in_bucket(bus: Bus) -> Exists:
    """References resolve against the bucket (names are unique there: the operator joins a
    cluster object's namespace into its name)."""

    async def exists(_: objects.FerryObjectBase, kind: str, name: str) -> bool:
        return await get_doc(bus, kind, name) is not None

    return exists


async def check_refs(batch: Batch, exists: Exists, shown: Callable[[str], str] = str) -> None:
    """Every reference of every object names one that exists or comes in ``batch``; the
    first that does not raises :class:`~ferry.proto.objects.ObjectError` naming it (each
    name as ``shown`` gives it to people)."""
    coming = {(obj.KIND, obj.name) for _, _, obj in batch}
    for source, index, obj in batch:
        for path, kind, name in obj.refs():
            if (kind, name) in coming or await exists(obj, kind, name):
                continue
            where = f"document {index + 1} ({obj.KIND} {shown(obj.name)}): {path}"
            raise objects.ObjectError(source, where, f"{kind} {shown(name)!r} does not exist")


async def apply(bus: Bus, batch: Batch) -> list[str]:
    """Check the whole batch, then store each object: what was done to each, a line each."""
    await check_refs(batch, in_bucket(bus))
    return [await store(bus, obj) for _, _, obj in batch]


async def store(bus: Bus, obj: objects.FerryObjectBase) -> str:
    """Write one checked object (its stored ``status`` kept: that is the controller's).

    A compare-and-set on the entry's revision: the controller writes the status of the
    same entry (a Migration's phase as it starts), and a plain put of the status read a
    moment before would undo it — a Migration re-applied as it started then never
    ended. On a conflict the entry is read again and its newer status kept.
    """
    doc = objects.to_document(obj)
    bucket, key = kv(bus), key_of(obj.KIND, obj.name)
    label = f"{obj.KIND.lower()}/{obj.name}"
    while True:
        entry = await bucket.get(key)
        old = entry.value if entry is not None else None
        if old is not None:
            doc["status"] = old.get("status", {})  # status is the controller's, spec the user's
        try:
            if entry is None:
                await bucket.create(key, doc)
            else:
                await bucket.update(key, doc, entry.revision)
            break
        except Conflict:
            continue  # written meanwhile (the controller's status): read it again
    if isinstance(obj, objects.Migration):
        await migration_changes(bus, obj, old)
    if old is None:
        return f"{label} created"
    return f"{label} configured" if old.get("spec") != doc.get("spec") else f"{label} unchanged"


async def migration_changes(bus: Bus, mig: objects.Migration, old: Document | None) -> None:
    """A new Migration starts; new cancel entries cancel; a new cutover moves it."""
    ids: dict[str, Any] = {"plan": mig.spec.plan.name, "migration": mig.name}
    cutover = mig.spec.cutover.isoformat() if mig.spec.cutover else None
    if old is None:
        await bus.publish(migration.StartMigration(**ids, vm=ALL, cutover=cutover))
        return
    before = objects.Migration.model_validate(old)
    gone = {c.id or c.name for c in before.spec.cancel}
    for wanted in mig.spec.cancel:
        if (wanted.id or wanted.name) not in gone:
            await bus.publish(migration.CancelMigration(**ids, vm=wanted.id or wanted.name))
    if cutover and mig.spec.cutover != before.spec.cutover:
        await bus.publish(migration.Cutover(**ids, vm=ALL, cutover=cutover))


def from_cluster(doc: Document, *, status: bool = False) -> Document:
    """A Kubernetes object as the Ferry object it holds: the metadata Ferry keeps (not
    resourceVersion, managedFields, finalizers…), and its status only when asked for."""
    metadata = doc.get("metadata") or {}
    kept = {k: metadata[k] for k in KEPT_METADATA if metadata.get(k) not in (None, "", {})}
    out = {k: v for k, v in doc.items() if k not in ("metadata", "status")}
    out["metadata"] = kept
    if status and doc.get("status") is not None:
        out["status"] = doc["status"]
    return out


async def vm_states(bus: Bus, name: str) -> list[VmView]:
    """A migration's VM states from ``ferry-vms``, in plan order."""
    states = bus.kv(Bucket.VMS, VmView)
    found = []
    for key in await states.keys(subjects.token(name) + "."):
        entry = await states.get(key)
        if entry is not None:
            found.append(entry.value)
    return sorted(found, key=lambda s: s.seq)
