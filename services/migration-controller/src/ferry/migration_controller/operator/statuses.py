"""The bus's view written back into the cluster objects' ``status``.

For each object the intake knows: a Migration gets its stored status (phase,
started, reasons, warnings, estimate) and ``vms``, the per-VM pipeline
``ferry describe migration`` shows (:func:`ferry.proto.pipeline.summary` of each
VM's state); a Plan its stored status (what holds its waiting VMs). Every kind
gets a ``Ready`` condition: True once it is in the bucket, False with the reason
and the message that refused it (a missing reference, an invalid field, a name too
long); an object deleted but kept gets a ``Deleting`` condition naming the running
migrations that hold it (:mod:`.finalizers`), a running Migration deleted says it is
being canceled first.

A status is written only when it differs from the object's, through the
``status`` subresource, with the resourceVersion last seen: a 409 (someone
changed the object meanwhile) re-reads it and tries again. Only the active
controller runs this (it runs inside the lease, see :mod:`..leadership`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ValidationError

from ferry.bus import Bus
from ferry.migration_controller.operator import naming
from ferry.migration_controller.operator.intake import Key, Known
from ferry.platform.clusterobjects import ClusterObjects, ClusterObjectsError, Conflict
from ferry.proto import objects, pipeline
from ferry.proto.phases import MigrationPhase
from ferry.runtime import objectbucket

log = logging.getLogger(__name__)

Document = dict[str, Any]
READY = "Ready"
DELETING = "Deleting"
ATTEMPTS = 5


def _status_model(kind: str) -> type[BaseModel]:
    model = objects.KINDS[kind].model_fields["status"].annotation
    assert isinstance(model, type) and issubclass(model, BaseModel)
    return model


# The per-VM pipeline's share of a Migration: the whole object must stay under etcd's
# 1.5 MiB (a larger write fails, and the status would stop changing for good).
VMS_BYTES = 1_000_000
# The order in which VMs keep their full detail when not all fit: the ones in flight and
# the ones that failed are what people look at.
_DETAIL_FIRST = {"Running": 0, "Failed": 1, "Canceled": 2, "Queued": 3, "Pending": 3}


def fitted(vms: list[pipeline.VmSummary], budget: int) -> tuple[list[Document], int, int]:
    """The VMs as the status shows them within ``budget`` bytes of JSON, in their order:
    each in full while that fits (running and failed ones first), else in brief, and
    the rest left out; with how many are brief and how many left out."""
    full = [v.model_dump(mode="json", exclude_none=True) for v in vms]
    short = [pipeline.brief(v).model_dump(mode="json", exclude_none=True) for v in vms]
    size = [len(json.dumps(d, separators=(",", ":"))) + 1 for d in short]
    order = sorted(range(len(vms)), key=lambda i: _DETAIL_FIRST.get(vms[i].status, 4))
    chosen: dict[int, Document] = {}
    used = 0
    for i in order:  # everyone in brief first, as many as fit
        if used + size[i] > budget:
            break
        chosen[i], used = short[i], used + size[i]
    for i in order:  # then full detail, most wanted first, while it fits
        if i not in chosen:
            continue
        extra = len(json.dumps(full[i], separators=(",", ":"))) + 1 - size[i]
        if used + extra <= budget:
            chosen[i], used = full[i], used + extra
    shown = [chosen[i] for i in sorted(chosen)]
    brief = sum(1 for i in chosen if chosen[i] is short[i] and short[i] != full[i])
    return shown, brief, len(vms) - len(chosen)


def normal(kind: str, status: Any) -> Document | None:
    """``status`` as its model writes it (None when it is not one)."""
    if not isinstance(status, dict):
        return None
    try:
        return _status_model(kind).model_validate(status).model_dump(mode="json", exclude_none=True)
    except ValidationError:
        return None


class Statuses:
    def __init__(
        self,
        bus: Bus,
        cluster: ClusterObjects,
        known: Known,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.bus = bus
        self.cluster = cluster
        self.known = known
        self.clock = clock
        self.rounds = 0  # rounds over every object so far (for tests and diagnostics)

    async def run(
        self, seconds: float, between: Callable[[], Awaitable[None]] | None = None
    ) -> None:
        """Write what changed, on every change the intake saw and every ``seconds``."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.known.changed.wait(), seconds)
            self.known.changed.clear()
            if between is not None:
                try:
                    await between()
                except Exception:
                    log.exception("operator: deletions or finalizers failed; next round")
            for k in list(self.known.docs):
                try:
                    await self.write(k)
                except Exception:  # one object's trouble must not stop the others'
                    log.exception("operator: writing the status of %s %s/%s failed", *k)
            self.rounds += 1

    async def desired(self, k: Key, doc: Document) -> Document | None:
        """The status ``doc`` should show, or None when there is nothing to say yet."""
        kind, namespace, name = k
        problem = self.known.problems.get(k)
        status: Document = {}
        if problem is None:
            name = naming.joined(namespace, name)  # as the bucket keeps it (it was stored)
            stored = await objectbucket.get_doc(self.bus, kind, name)
            uid = (doc.get("metadata") or {}).get("uid")
            if stored is None or (stored.get("metadata") or {}).get("uid") != uid:
                return None  # not applied (yet): the intake has not said why
            status = dict(stored.get("status") or {})
            if kind == objects.Migration.KIND:
                states = await objectbucket.vm_states(self.bus, name)
                vms, status["vmsBrief"], status["vmsOmitted"] = fitted(
                    [pipeline.summary(s) for s in states], VMS_BYTES
                )
                status["vms"] = vms
        ready = {
            "type": READY,
            "status": "False" if problem else "True",
            "reason": problem.reason if problem else "Applied",
            "message": problem.message if problem else "taken into Ferry's objects",
        }
        conditions = [c for c in status.get("conditions") or [] if c.get("type") != READY]
        conditions.append(self._since(doc, ready))
        deleting = self._deleting(k, doc, status)
        if deleting is not None:
            conditions.append(self._since(doc, deleting))
        status["conditions"] = conditions
        wanted = normal(kind, status)
        if wanted is None:
            log.warning("operator: the stored status of %s %s is not one its CRD takes", kind, name)
        return wanted

    def _since(self, doc: Document, condition: Document) -> Document:
        """``condition`` with its lastTransitionTime: kept while it says the same."""
        before = next(
            (
                c
                for c in (doc.get("status") or {}).get("conditions") or []
                if c.get("type") == condition["type"]
            ),
            None,
        )
        same = before is not None and all(before.get(f) == condition[f] for f in condition)
        kept = before.get("lastTransitionTime") if same and before is not None else None
        when = kept or datetime.fromtimestamp(self.clock(), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return {**condition, "lastTransitionTime": when}

    def _deleting(self, k: Key, doc: Document, status: Document) -> Document | None:
        """While a deleted object is kept: a ``Deleting`` condition saying why."""
        if not (doc.get("metadata") or {}).get("deletionTimestamp"):
            return None
        if k[0] == objects.Migration.KIND:
            if MigrationPhase(status.get("phase") or "").ended:
                return None
            message = "deleted while running: canceled first, removed once it has ended"
            return {"type": DELETING, "status": "True", "reason": "Canceling", "message": message}
        holders = sorted(self.known.holders.get(k, set()))
        if not holders:
            return None
        message = f"deleted; kept until the running migrations using it end: {', '.join(holders)}"
        return {"type": DELETING, "status": "True", "reason": "InUse", "message": message}

    async def write(self, k: Key) -> bool:
        """Write ``k``'s status if it changed (409: read again, try again); True if written."""
        for _ in range(ATTEMPTS):
            doc = self.known.docs.get(k)
            if doc is None:
                return False
            wanted = await self.desired(k, doc)
            if wanted is None or wanted == normal(k[0], doc.get("status")):
                return False
            try:
                written = await self.cluster.write_status({**doc, "status": wanted})
            except Conflict:
                fresh = await self.cluster.get(*k)
                if fresh is None:
                    self.known.docs.pop(k, None)
                    return False
                self.known.saw(k, fresh)
                continue
            except ClusterObjectsError as error:
                if error.status == 404:  # deleted; the watch (or a re-list) says so too
                    self.known.docs.pop(k, None)
                    return False
                log.warning("operator: status of %s %s/%s not written: %s", *k, error)
                return False
            self.known.saw(k, written)
            return True
        log.warning("operator: status of %s %s/%s kept changing; later", *k)
        return False
