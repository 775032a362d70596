"""The cluster's ferry.dev objects into the objects bucket, as ``ferry apply`` puts them there.

Each kind is listed, then watched from the list's resourceVersion (bookmarks move it
on while nothing changes; a watch that times out or breaks resumes from it). A watch
told 410 Gone (its version is older than the server keeps) lists the kind again:
what changed meanwhile is applied, and what is gone from the list is removed from
the bucket, so nothing is lost across the gap.

An object is applied by :mod:`ferry.runtime.objectbucket`, the one path ``ferry
apply`` takes: validated, its references checked against the bucket (a listing is
applied kind by kind, what is named before what names it, so a Migration whose Plan
was refused is refused too, never started), stored with the controller's status
kept; a new Migration starts. An object that fails is not stored: its problem is kept for its status
(:mod:`.statuses`) and it is tried again whenever another object was applied (the
map a Plan names may come later). Nothing an object holds stops the intake.

A cluster object is kept under its namespace and name joined (:mod:`.naming`:
``team-a.m1``), so objects of the same name in different namespaces are different
objects, and a Migration runs as ``<namespace>.<name>``. A deleted
object leaves the bucket; a deleted Migration still running is canceled first and
leaves the bucket once it has ended (its VMs' clean-up writes to it until then). A
Migration is "deleted" as soon as its ``deletionTimestamp`` is set (the finalizer
of :mod:`.finalizers` keeps it in the cluster until it ended); any other object
being deleted stays applied until the API server removes it (for one a running
migration uses, once that migration ended).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from ferry.bus import Bus
from ferry.migration_controller.operator import naming
from ferry.platform.clusterobjects import ClusterObjects, ClusterObjectsError, Expired
from ferry.proto import migration, objects
from ferry.proto.phases import MigrationPhase
from ferry.runtime import objectbucket

log = logging.getLogger(__name__)

Document = dict[str, Any]
Key = tuple[str, str, str]  # kind, namespace, name
# Listed (and applied) in this order: what an object refers to comes before it.
ORDER = ("Provider", "NetworkMap", "StorageMap", "Hook", "Budget", "Plan", "Migration")
RETRY_SECONDS = 2.0
# Called (under ``Known.lock``) before a new Migration is stored, which starts it: why it
# must not start, or None (:meth:`.finalizers.Holds.hold_new`).
BeforeStart = Callable[[Key, objects.Migration], Awaitable[str | None]]


def key(doc: Document) -> Key:
    metadata = doc.get("metadata") or {}
    return str(doc.get("kind")), str(metadata.get("namespace", "")), str(metadata.get("name"))


@dataclass(frozen=True)
class Problem:
    """Why an object is not in the bucket: a condition's reason and message."""

    reason: str
    message: str


@dataclass
class Known:
    """What the intake has seen of the cluster, shared with the status writer."""

    docs: dict[Key, Document] = field(default_factory=dict)  # latest version seen
    problems: dict[Key, Problem] = field(default_factory=dict)
    deleting: set[str] = field(default_factory=set)  # Migrations canceled by their deletion
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    # The running migrations holding each object (:mod:`.finalizers`), for its status.
    holders: dict[Key, set[str]] = field(default_factory=dict)
    # Held while a new Migration is held and started, and while finalizers are reconciled.
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def saw(self, k: Key, doc: Document) -> None:
        """What a write of ours returned: kept if newer than what the watch has shown."""
        have = self.docs.get(k)
        if have is None:
            return
        mine = int((doc.get("metadata") or {}).get("resourceVersion") or 0)
        theirs = int((have.get("metadata") or {}).get("resourceVersion") or 0)
        if mine >= theirs:
            self.docs[k] = doc


class Intake:
    def __init__(self, bus: Bus, cluster: ClusterObjects, known: Known) -> None:
        self.bus = bus
        self.cluster = cluster
        self.known = known
        self.before_start: BeforeStart | None = None

    # -- listing -----------------------------------------------------------------------

    async def sync(self, namespace: str) -> dict[str, str]:
        """List every kind in ``namespace`` and apply what was listed (kind by kind, in
        ORDER); each kind's resourceVersion to watch from."""
        versions: dict[str, str] = {}
        listed: list[Document] = []
        for kind in ORDER:
            docs, versions[kind] = await self.cluster.list(kind, namespace)
            listed.extend(docs)
        await self._apply_listed(listed, namespace, ORDER)
        return versions

    async def relist(self, kind: str, namespace: str) -> str:
        docs, version = await self.cluster.list(kind, namespace)
        await self._apply_listed(docs, namespace, (kind,))
        return version

    async def _apply_listed(
        self, docs: list[Document], namespace: str, kinds: tuple[str, ...]
    ) -> None:
        parsed = [(key(doc), doc, self._parsed(doc)) for doc in docs]
        for k, doc, _ in parsed:
            self.known.docs[k] = doc
        # In ORDER, so what an object names is stored (or refused) before it is looked at:
        # a Migration of a refused Plan must not start.
        for k, doc, obj in sorted(parsed, key=lambda p: ORDER.index(p[0][0])):
            if obj is not None:
                await self._admit(k, doc, obj)
        # What the cluster no longer has (deleted while no watch was open) leaves too.
        here = {k for k, _, _ in parsed}
        for k in [k for k in self.known.docs if k[0] in kinds and k not in here]:
            if not namespace or k[1] == namespace:
                await self.removed(self.known.docs[k])
        for kind in kinds:
            for doc in await objectbucket.list_docs(self.bus, kind):
                meta = doc.get("metadata") or {}
                mine = meta.get("uid") and (not namespace or meta.get("namespace") == namespace)
                listed = (kind, str(meta.get("namespace")), naming.cluster_name(doc))
                if mine and listed not in here:
                    await self._forget(kind, doc)
        await self.retry()

    # -- watching ----------------------------------------------------------------------

    async def follow(self, kind: str, namespace: str, since: str, seconds: float) -> None:
        """Apply every change of ``kind`` after ``since``, for ever (re-listing on 410)."""
        while True:
            try:
                async for event, doc in self.cluster.watch(kind, namespace, since, seconds):
                    version = str((doc.get("metadata") or {}).get("resourceVersion") or "")
                    if event in ("ADDED", "MODIFIED"):
                        await self.changed(doc)
                    elif event == "DELETED":
                        await self.removed(doc)
                    since = version or since
            except Expired as gone:
                log.info("operator: %s watch expired (%s); listing again", kind, gone)
                since = await self._relist_until_listed(kind, namespace)
            except ClusterObjectsError as error:
                log.warning("operator: %s watch failed (%s); resuming", kind, error)
                await asyncio.sleep(RETRY_SECONDS)
            except Exception:
                # The bus failed us mid-change: listing again applies whatever was missed.
                log.exception("operator: applying a %s failed; listing again", kind)
                await asyncio.sleep(RETRY_SECONDS)
                since = await self._relist_until_listed(kind, namespace)

    async def _relist_until_listed(self, kind: str, namespace: str) -> str:
        while True:
            try:
                return await self.relist(kind, namespace)
            except Exception as error:
                log.warning("operator: listing %s failed (%s); trying again", kind, error)
                await asyncio.sleep(RETRY_SECONDS)

    # -- one object --------------------------------------------------------------------

    def _parsed(self, doc: Document) -> objects.FerryObjectBase | None:
        k = key(doc)
        try:
            obj = objects.parse_object(objectbucket.from_cluster(doc), f"{k[0]} {k[1]}/{k[2]}")
            obj = naming.qualified(obj, k[1])
        except objects.ObjectError as bad:
            self._refuse(k, "Invalid", str(bad))
            return None
        except naming.NameTooLong as bad:
            self._refuse(k, "NameTooLong", str(bad))
            return None
        return obj

    async def changed(self, doc: Document) -> None:
        k = key(doc)
        self.known.docs[k] = doc
        obj = self._parsed(doc)
        if obj is not None and await self._admit(k, doc, obj):
            await self.retry()

    async def retry(self) -> None:
        """Apply again the objects that failed (what they named may be there now)."""
        progress = True
        while progress:
            progress = False
            for k in [k for k in self.known.problems if k in self.known.docs]:
                doc = self.known.docs[k]
                obj = self._parsed(doc)
                if obj is not None and await self._admit(k, doc, obj):
                    progress = True

    async def _admit(self, k: Key, doc: Document, obj: objects.FerryObjectBase) -> bool:
        """Store ``obj`` unless it is refused (then its problem is kept); True if stored."""
        if isinstance(obj, objects.Migration) and (doc.get("metadata") or {}).get(
            "deletionTimestamp"
        ):
            await self.removed(doc, keep_known=True)  # canceled if it runs; never started
            return False
        old = await objectbucket.get_doc(self.bus, obj.KIND, obj.name)
        try:
            source = f"{k[0]} {k[1]}/{k[2]}"
            exists = objectbucket.in_bucket(self.bus)
            await objectbucket.check_refs([(source, 0, obj)], exists, naming.slashed)
        except objects.ObjectError as bad:
            self._refuse(k, "ReferenceNotFound", str(bad))
            return False
        new = objects.to_document(obj)
        if old is not None and _without_status(old) == _without_status(new):
            self._accepted(k)
            return False  # nothing new (our own status write coming back, a re-list)
        if old is None and isinstance(obj, objects.Migration) and self.before_start is not None:
            async with self.known.lock:  # held before it starts, not released meanwhile
                problem = await self.before_start(k, obj)
                if problem is not None:
                    self._refuse(k, "ReferenceBeingDeleted", problem)
                    return False
                said = await objectbucket.store(self.bus, obj)
        else:
            said = await objectbucket.store(self.bus, obj)
        log.info("operator: %s (%s/%s)", said, k[1], k[2])
        self._accepted(k)
        return True

    def _refuse(self, k: Key, reason: str, message: str) -> None:
        if self.known.problems.get(k) != Problem(reason, message):
            log.warning("operator: %s %s/%s refused: %s", k[0], k[1], k[2], message)
        self.known.problems[k] = Problem(reason, message)
        self.known.changed.set()

    def _accepted(self, k: Key) -> None:
        self.known.problems.pop(k, None)
        self.known.changed.set()

    async def removed(self, doc: Document, keep_known: bool = False) -> None:
        k = key(doc)
        if not keep_known:
            self.known.docs.pop(k, None)
            self.known.problems.pop(k, None)
        uid = (doc.get("metadata") or {}).get("uid")
        try:
            stored = await objectbucket.get_doc(self.bus, k[0], naming.joined(k[1], k[2]))
        except naming.NameTooLong:
            return  # never stored
        if stored is not None and (stored.get("metadata") or {}).get("uid") == uid:
            await self._forget(k[0], stored)

    async def _forget(self, kind: str, stored: Document) -> None:
        """Remove a deleted object from the bucket (a running Migration: cancel it first)."""
        name = str(stored["metadata"]["name"])
        if kind == objects.Migration.KIND:
            phase = MigrationPhase((stored.get("status") or {}).get("phase") or "")
            if not phase.ended:
                if name not in self.known.deleting:
                    plan = stored["spec"]["plan"]["name"]
                    reason = "its Migration was deleted in the cluster"
                    await self.bus.publish(
                        migration.CancelMigration(
                            plan=plan, migration=name, vm=objectbucket.ALL, reason=reason
                        )
                    )
                    self.known.deleting.add(name)
                return
        self.known.deleting.discard(name)
        await objectbucket.kv(self.bus).delete(objectbucket.key_of(kind, name))
        log.info("operator: %s/%s deleted", kind.lower(), name)

    async def finish_deletions(self) -> None:
        """Deleted Migrations that have ended now leave the bucket."""
        for name in list(self.known.deleting):
            stored = await objectbucket.get_doc(self.bus, objects.Migration.KIND, name)
            if stored is None:
                self.known.deleting.discard(name)
            elif MigrationPhase((stored.get("status") or {}).get("phase") or "").ended:
                await self._forget(objects.Migration.KIND, stored)


def _without_status(doc: Document) -> Document:
    return {k: v for k, v in doc.items() if k != "status"}
