"""What a running migration uses stays in the cluster, the upstream way: a finalizer.

While a Migration has not ended, the operator keeps ``ferry.dev/in-use`` on it and on
every cluster object it uses: its Plan, what the Plan names (both Providers, the maps,
the hooks) and the Budgets that cover one of its VMs still in flight. A DELETE of such
an object then only marks it (``deletionTimestamp``); the intake keeps it in the
objects bucket, its status says which migrations hold it (:mod:`.statuses`), and once
no running migration uses it the finalizer goes and the API server removes it (its
watch's DELETED takes it out of the bucket). A new Migration is held, with what its
Plan names, before it starts (:meth:`Holds.hold_new`); one whose Plan (or what that
names) is being deleted is refused instead. The finalizer is written with the
object's resourceVersion (409: read again, retry), as the statuses are.

Which migrations run is the bucket's word (a Migration not ended there), whoever
applied them: a Migration applied with ``ferry apply`` holds the cluster's Plan too.
"""

from __future__ import annotations

import logging

from ferry.bus import Bus
from ferry.migration_controller import budgets
from ferry.migration_controller.operator import naming
from ferry.migration_controller.operator.intake import Document, Key, Known
from ferry.platform.clusterobjects import ClusterObjects, ClusterObjectsError, Conflict
from ferry.proto import objects, subjects
from ferry.proto.budget import Budget
from ferry.proto.phases import MigrationPhase
from ferry.proto.state import VmState
from ferry.proto.subjects import Bucket
from ferry.runtime import objectbucket

log = logging.getLogger(__name__)

FINALIZER = "ferry.dev/in-use"
ATTEMPTS = 5


def finalizers(doc: Document) -> list[str]:
    return list((doc.get("metadata") or {}).get("finalizers") or [])


def deleting(doc: Document) -> bool:
    return bool((doc.get("metadata") or {}).get("deletionTimestamp"))


class Holds:
    def __init__(self, bus: Bus, cluster: ClusterObjects, known: Known) -> None:
        self.bus = bus
        self.cluster = cluster
        self.known = known

    # -- who uses what -----------------------------------------------------------------

    def _cluster_key(self, kind: str, stored: Document | None) -> Key | None:
        """The cluster object a bucket document came from (None: it came from elsewhere)."""
        meta = (stored or {}).get("metadata") or {}
        if not meta.get("uid"):
            return None
        k = (kind, str(meta.get("namespace", "")), naming.cluster_name(stored or {}))
        seen = self.known.docs.get(k)
        return k if seen is not None and seen["metadata"].get("uid") == meta["uid"] else None

    async def _plan_uses(self, plan: str) -> list[Key]:
        """The cluster objects a Plan stands for: itself and what it names."""
        stored = await objectbucket.get_doc(self.bus, objects.Plan.KIND, plan)
        if stored is None:
            return []
        used: list[tuple[str, Document | None]] = [(objects.Plan.KIND, stored)]
        for _, kind, name in objects.from_document(stored).refs():
            used.append((kind, await objectbucket.get_doc(self.bus, kind, name)))
        return [k for kind, doc in used if (k := self._cluster_key(kind, doc)) is not None]

    async def _budgets_used(self, migration: str, all_budgets: list[Budget]) -> list[str]:
        """The Budgets that cover one of ``migration``'s VMs still in flight."""
        if not all_budgets:
            return []
        states = self.bus.kv(Bucket.VMS, VmState)
        used: set[str] = set()
        for key in await states.keys(subjects.token(migration) + "."):
            entry = await states.get(key)
            if entry is None or entry.value.status.ended:
                continue
            for budget in all_budgets:
                values = budgets.scope_values(entry.value, budget.spec.scope)
                if any(budget.covers(value) for value in values):
                    used.add(budget.name)
        return sorted(used)

    async def holders(self) -> dict[Key, set[str]]:
        """Each cluster object a running migration uses, with the migrations using it."""
        held: dict[Key, set[str]] = {}
        budget_docs = {
            str(d["metadata"]["name"]): d
            for d in await objectbucket.list_docs(self.bus, Budget.KIND)
        }
        all_budgets = [
            b for d in budget_docs.values() if isinstance(b := objects.from_document(d), Budget)
        ]
        for stored in await objectbucket.list_docs(self.bus, objects.Migration.KIND):
            if MigrationPhase((stored.get("status") or {}).get("phase") or "").ended:
                continue
            name = str(stored["metadata"]["name"])
            used = await self._plan_uses(str(stored["spec"]["plan"]["name"]))
            found = [
                (Budget.KIND, budget_docs.get(b))
                for b in await self._budgets_used(name, all_budgets)
            ]
            found.append((objects.Migration.KIND, stored))
            used += [k for kind, doc in found if (k := self._cluster_key(kind, doc)) is not None]
            for k in used:
                held.setdefault(k, set()).add(naming.shown(stored))
        return held

    # -- keeping the finalizers --------------------------------------------------------

    async def reconcile(self) -> None:
        """The finalizer on exactly the objects running migrations use (added while an
        object is not being deleted; removed from the others, which may end them). What
        fails to be read raises before anything is written: nothing is released on a
        partial view of what runs."""
        async with self.known.lock:
            held = await self.holders()
            self.known.holders = held
            for k in list(self.known.docs):
                await self._keep(k, held)

    async def _keep(self, k: Key, held: dict[Key, set[str]]) -> None:
        doc = self.known.docs.get(k)
        if doc is None:
            return
        has = FINALIZER in finalizers(doc)
        if k in held and not has and not deleting(doc):
            await self._set(k, True)
        elif k not in held and has:
            await self._set(k, False)

    async def hold_new(self, k: Key, mig: objects.Migration) -> str | None:
        """Before a new Migration starts: the finalizer on it and on what its Plan names;
        why it must not start instead, when one of those is being deleted. (The intake
        calls this and then stores the Migration under ``known.lock``, which
        :meth:`reconcile` takes too: it cannot release them in between.)"""
        used = await self._plan_uses(mig.spec.plan.name)
        for other in used:
            if deleting(self.known.docs.get(other) or {}):
                return f"{other[0]} {other[2]!r} is being deleted"
        for other in [k, *used]:
            if not await self._set(other, True):
                now = self.known.docs.get(other)
                if now is None or deleting(now):
                    return f"{other[0]} {other[2]!r} is being deleted"
                # Not written (logged): the next reconcile tries again; it starts meanwhile.
        return None

    async def _set(self, k: Key, held: bool) -> bool:
        """Add (``held``) or remove the finalizer on ``k``; True when it is as wanted."""
        for _ in range(ATTEMPTS):
            doc = self.known.docs.get(k)
            if doc is None:
                return False
            have = finalizers(doc)
            if (FINALIZER in have) == held:
                return True
            if held and deleting(doc):
                return False  # none may be added now (the API server says 422)
            wanted = [*have, FINALIZER] if held else [f for f in have if f != FINALIZER]
            sent = {**doc, "metadata": {**doc["metadata"], "finalizers": wanted}}
            try:
                written = await self.cluster.replace(sent)
            except Conflict:
                fresh = await self.cluster.get(*k)
                if fresh is None:
                    self.known.docs.pop(k, None)
                    return False
                self.known.saw(k, fresh)
                continue
            except ClusterObjectsError as error:
                if error.status == 404:
                    self.known.docs.pop(k, None)
                    return False
                log.warning("operator: finalizer of %s %s/%s not written: %s", *k, error)
                return False
            log.info("operator: %s %s/%s %s", k[0], k[1], k[2], "held" if held else "released")
            self.known.saw(k, written)
            return True
        log.warning("operator: %s %s/%s kept changing; its finalizer later", *k)
        return False
