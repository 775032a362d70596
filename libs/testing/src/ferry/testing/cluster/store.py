"""The stand-in's object store: what etcd plus the API server's registry do for it.

Objects are plain dicts, as they travel. Every write bumps one resourceVersion
counter and is broadcast to subscribers (watches, and the stand-in's controllers,
which react to changes as upstream controllers react to their informers). The
rules here are the API server's own, not a controller's: names are unique per
namespace, a deleted object with finalizers stays (``deletionTimestamp`` set)
until they are gone, and removing an owner removes what it owns (background
garbage collection). A bounded history of changes lets a watch resume from a
resourceVersion; what fell out of it (or :meth:`Store.compact` dropped, as etcd's
compaction) is 410 Gone.
"""

from __future__ import annotations

import asyncio
import builtins
import copy
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from ferry.testing.cluster.resources import Kind

Obj = dict[str, Any]
Event = tuple[str, Kind, Obj]  # ADDED | MODIFIED | DELETED, the kind, a copy of the object
HISTORY = 5000  # changes kept for watches that resume from a resourceVersion (etcd's window)


class ApiError(Exception):
    """A refusal the API server would answer with a ``Status``; ``code`` is the HTTP status."""

    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message

    def status(self) -> Obj:
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def meta(obj: Obj) -> dict[str, Any]:
    return obj.setdefault("metadata", {})  # type: ignore[no-any-return]


class Store:
    def __init__(self) -> None:
        self._objects: dict[tuple[str, str, str], Obj] = {}
        self._kinds: dict[str, Kind] = {}
        self._revision = 0
        self._subscribers: list[asyncio.Queue[Event]] = []
        # Every change with its revision, for a watch resuming from a resourceVersion; what
        # fell out of the window (or was compacted) answers 410 Gone, as etcd's compaction.
        self._history: deque[tuple[int, Event]] = deque(maxlen=HISTORY)
        self.compacted = 0
        # kind key → returns True when it will finish the deletion itself (the kubelet)
        self.graceful: dict[str, Callable[[Obj], bool]] = {}

    # -- registry --------------------------------------------------------------------

    def serve(self, kind: Kind) -> None:
        self._kinds[kind.key] = kind

    def kinds(self) -> Iterable[Kind]:
        return list(self._kinds.values())

    def kind(self, group: str, version: str, plural: str) -> Kind:
        found = self._kinds.get(f"{group}/{version}/{plural}")
        if found is None:
            name = f"{plural}.{group}" if group else plural
            raise ApiError(
                404, "NotFound", f"the server could not find the requested resource ({name})"
            )
        return found

    # -- reads -----------------------------------------------------------------------

    @property
    def revision(self) -> int:
        return self._revision

    def get(self, kind: Kind, namespace: str, name: str) -> Obj | None:
        found = self._objects.get((kind.key, namespace, name))
        return copy.deepcopy(found) if found is not None else None

    def require(self, kind: Kind, namespace: str, name: str) -> Obj:
        found = self.get(kind, namespace, name)
        if found is None:
            plural = f"{kind.plural}.{kind.group}" if kind.group else kind.plural
            raise ApiError(404, "NotFound", f'{plural} "{name}" not found')
        return found

    def list(self, kind: Kind, namespace: str | None = None) -> list[Obj]:
        return [
            copy.deepcopy(obj)
            for (key, ns, _), obj in sorted(self._objects.items())
            if key == kind.key and (namespace is None or ns == namespace)
        ]

    # -- writes ----------------------------------------------------------------------

    def _stamp(self, obj: Obj) -> None:
        self._revision += 1
        meta(obj)["resourceVersion"] = str(self._revision)

    def _emit(self, kind: Kind, event: str, obj: Obj) -> None:
        if len(self._history) == self._history.maxlen:
            self.compacted = self._history[0][0]
        self._history.append((int(meta(obj)["resourceVersion"]), (event, kind, copy.deepcopy(obj))))
        for queue in self._subscribers:
            queue.put_nowait((event, kind, copy.deepcopy(obj)))

    def create(self, kind: Kind, obj: Obj) -> Obj:
        metadata = meta(obj)
        namespace = str(metadata.get("namespace", "")) if kind.namespaced else ""
        name = str(metadata.get("name", ""))
        if not name and metadata.get("generateName"):
            name = f"{metadata['generateName']}{uuid.uuid4().hex[:5]}"
            metadata["name"] = name
        if not name:
            raise ApiError(422, "Invalid", f"{kind.kind}: metadata.name: Required value")
        if (kind.key, namespace, name) in self._objects:
            plural = f"{kind.plural}.{kind.group}" if kind.group else kind.plural
            raise ApiError(409, "AlreadyExists", f'{plural} "{name}" already exists')
        metadata.update(uid=str(uuid.uuid4()), creationTimestamp=now(), generation=1)
        metadata.pop("deletionTimestamp", None)  # as upstream's BeforeCreate
        metadata.pop("deletionGracePeriodSeconds", None)
        if kind.namespaced:
            metadata["namespace"] = namespace
        obj.setdefault("apiVersion", kind.api_version)
        obj.setdefault("kind", kind.kind)
        self._stamp(obj)
        self._objects[(kind.key, namespace, name)] = copy.deepcopy(obj)
        self._emit(kind, "ADDED", obj)
        return copy.deepcopy(obj)

    def replace(self, kind: Kind, obj: Obj) -> Obj:
        """Store ``obj`` as the new state (optimistic: its resourceVersion must be current).

        As upstream's ``BeforeUpdate`` and ``ValidateObjectMetaUpdate``: an update never
        removes or changes a deletion timestamp (it is carried over), sets one (422), or
        adds a finalizer to an object being deleted (422); the update that empties the
        finalizers of an object being deleted removes it (``ShouldDeleteDuringUpdate``).
        """
        metadata = meta(obj)
        key = (kind.key, str(metadata.get("namespace", "")), str(metadata["name"]))
        there = self._objects.get(key)
        if there is None:
            raise ApiError(404, "NotFound", f'{kind.plural} "{metadata["name"]}" not found')
        sent = metadata.get("resourceVersion")
        if sent and sent != there["metadata"]["resourceVersion"]:
            raise ApiError(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on {kind.plural} "{key[2]}": '
                "the object has been modified; please apply your changes to the latest version",
            )
        before = there["metadata"]
        if before.get("deletionTimestamp"):
            metadata["deletionTimestamp"] = before["deletionTimestamp"]
            if metadata.get("deletionGracePeriodSeconds") is None:
                metadata["deletionGracePeriodSeconds"] = before.get("deletionGracePeriodSeconds")
            if metadata["deletionGracePeriodSeconds"] is None:
                metadata.pop("deletionGracePeriodSeconds")
        problems = _update_problems(metadata, before)
        if problems:
            plural = f"{kind.plural}.{kind.group}" if kind.group else kind.plural
            raise ApiError(422, "Invalid", f'{plural} "{key[2]}" is invalid: {"; ".join(problems)}')
        return self._write(kind, key, obj)

    def _write(self, kind: Kind, key: tuple[str, str, str], obj: Obj) -> Obj:
        there = self._objects[key]
        metadata = meta(obj)
        if obj.get("spec") != there.get("spec"):
            metadata["generation"] = int(there["metadata"].get("generation", 1)) + 1
        self._stamp(obj)
        self._objects[key] = copy.deepcopy(obj)
        ending = metadata.get("deletionTimestamp") and not metadata.get("finalizers")
        if ending and not self._finishing_elsewhere(kind, obj):
            self._remove(kind, key)
            return copy.deepcopy(obj)
        self._emit(kind, "MODIFIED", obj)
        return copy.deepcopy(obj)

    def _finishing_elsewhere(self, kind: Kind, obj: Obj) -> bool:
        hook = self.graceful.get(kind.key)
        return hook is not None and hook(obj)

    def delete(self, kind: Kind, namespace: str, name: str, grace: int | None = None) -> Obj:
        """Delete, as the registry's ``Delete``: an object with finalizers only gets a
        ``deletionTimestamp`` (with ``deletionGracePeriodSeconds`` 0 for a kind without
        graceful deletion) and stays, returned as it now is, until an update empties its
        finalizers; deleting it again changes nothing. A graceful kind's object (the
        kubelet's pod) stays until whoever finishes it deletes it with grace 0."""
        obj = self.require(kind, namespace, name)
        metadata = meta(obj)
        key = (kind.key, namespace if kind.namespaced else "", name)
        held = bool(metadata.get("finalizers"))
        if metadata.get("deletionTimestamp") is None:
            metadata["deletionTimestamp"] = now()
            graceful = grace != 0 and self._finishing_elsewhere(kind, obj)
            if held or graceful:
                if int(metadata.get("generation") or 0) > 0:
                    metadata["generation"] = int(metadata["generation"]) + 1
                if grace is not None:
                    metadata["deletionGracePeriodSeconds"] = grace
                elif not graceful:
                    metadata["deletionGracePeriodSeconds"] = 0  # upstream's markAsDeleting
                return self._write(kind, key, obj)
        elif held:
            have = metadata.get("deletionGracePeriodSeconds")
            if grace is not None and (have is None or grace < int(have)):
                metadata["deletionGracePeriodSeconds"] = grace  # a grace may only shorten
                return self._write(kind, key, obj)
            return obj
        self._remove(kind, key)
        return obj

    def _remove(self, kind: Kind, key: tuple[str, str, str]) -> None:
        obj = self._objects.pop(key, None)
        if obj is None:
            return
        self._stamp(obj)
        self._emit(kind, "DELETED", obj)
        uid = obj["metadata"]["uid"]
        for (other_key, ns, name), other in list(self._objects.items()):
            owners = other.get("metadata", {}).get("ownerReferences") or []
            if any(o.get("uid") == uid for o in owners):
                owned = self._kinds[other_key]
                if (other_key, ns, name) in self._objects:
                    self.delete(owned, ns, name)

    # -- changes ---------------------------------------------------------------------

    def compact(self) -> None:
        """Forget the changes made so far, as etcd's compaction does: a watch resuming
        from an older resourceVersion is told 410 Gone and must list again."""
        self._history.clear()
        self.compacted = self._revision

    def since(self, revision: int) -> builtins.list[tuple[int, Event]]:
        """The changes after ``revision``; :class:`ApiError` 410 when they are not kept."""
        if revision < self.compacted:
            raise ApiError(
                410,
                "Expired",
                f"too old resource version: {revision} ({self.compacted})",
            )
        return [(rev, copy.deepcopy(event)) for rev, event in self._history if rev > revision]

    def subscribe(self) -> asyncio.Queue[Event]:
        queue: asyncio.Queue[Event] = asyncio.Queue()
        self._subscribers.append(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[Event]) -> None:
        if queue in self._subscribers:
            self._subscribers.remove(queue)


def _update_problems(new: dict[str, Any], old: dict[str, Any]) -> builtins.list[str]:
    """What upstream's ``ValidateObjectMetaAccessorUpdate`` refuses of the finalizers and
    the deletion fields (the update carried an existing deletion over already)."""
    problems = []
    if old.get("deletionTimestamp"):
        extra = sorted(set(new.get("finalizers") or []) - set(old.get("finalizers") or []))
        if extra:
            found = "[]string{" + ", ".join(f'"{f}"' for f in extra) + "}"
            problems.append(
                "metadata.finalizers: Forbidden: no new finalizers can be added if the object "
                f"is being deleted, found new finalizers {found}"
            )
    for field in ("deletionTimestamp", "deletionGracePeriodSeconds"):
        if new.get(field) != old.get(field):
            problems.append(f"metadata.{field}: Invalid value: field is immutable")
    return problems
