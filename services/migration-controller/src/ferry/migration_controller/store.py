"""The controller's two buckets: the objects people applied, and per-VM state.

Objects (``ferry-objects``) are stored as the plain documents ``ferry apply``
wrote, keyed by :func:`ferry.proto.subjects.object_key`, and validated again on
every read. VM states (``ferry-vms``) are written only with compare-and-set; the
controller keeps the last state and revision it wrote in memory (it is the one
active writer), and re-reads when a write loses.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar

import msgspec

from ferry.bus import Bus, Conflict
from ferry.proto import objects, subjects
from ferry.proto.phases import VmStatus
from ferry.proto.state import VmState
from ferry.proto.subjects import Bucket
from ferry.runtime import estimates

Obj = TypeVar("Obj", bound=objects.FerryObjectBase)

ALL = "*"
"""The ``vm`` of a message about a whole migration rather than one of its VMs."""
Document = dict[str, Any]
LEARNED = 2000  # samples of forgotten VMs kept for estimates


class MissingObject(LookupError):
    def __init__(self, kind: str, name: str, needed_by: str = "") -> None:
        by = f" (needed by {needed_by})" if needed_by else ""
        super().__init__(f"{kind} {name!r} does not exist{by}")


class Objects:
    def __init__(self, bus: Bus) -> None:
        self.kv = bus.kv(Bucket.OBJECTS, dict)

    async def get(self, cls: type[Obj], name: str, needed_by: str = "") -> Obj:
        entry = await self.kv.get(subjects.object_key(cls.KIND, name))
        if entry is None:
            raise MissingObject(cls.KIND, name, needed_by)
        obj = objects.from_document(entry.value)
        if not isinstance(obj, cls):
            raise MissingObject(cls.KIND, name, needed_by)
        return obj

    async def revision(self, kind: str, name: str) -> int | None:
        """The stored object's revision (it changes with every apply), or None."""
        entry = await self.kv.get(subjects.object_key(kind, name))
        return None if entry is None else int(entry.revision)

    async def find(self, cls: type[Obj], name: str) -> Obj | None:
        try:
            return await self.get(cls, name)
        except MissingObject:
            return None

    async def set_status(
        self, cls: type[Obj], name: str, change: Callable[[Document], None]
    ) -> None:
        """Change an object's ``status`` with compare-and-set (its spec stays the user's)."""

        def apply(doc: Document) -> Document:
            new = dict(doc)
            status = dict(new.get("status") or {})
            change(status)
            new["status"] = status
            return new

        await self.kv.mutate(subjects.object_key(cls.KIND, name), apply)


_enc = msgspec.json.Encoder()
_dec = msgspec.json.Decoder(VmState)


def copy_state(s: VmState) -> VmState:
    return _dec.decode(_enc.encode(s))


class VmStates:
    """Per-VM state with an in-memory copy of what this process last wrote."""

    def __init__(self, bus: Bus) -> None:
        self.kv = bus.kv(Bucket.VMS, VmState)
        self.cache: dict[str, tuple[VmState, int]] = {}
        # plan -> {vm id: name} migrated by a migration already forgotten: a later
        # migration of the plan skips them; bounded by the plans' VMs, not by waves.
        self.succeeded: dict[str, dict[str, str]] = {}
        # What forgotten VMs measured, for the estimates of later migrations; bounded.
        self.learned: deque[estimates.Sample] = deque(maxlen=LEARNED)

    def forget(self, keys: list[str]) -> None:
        """Drop ended VMs from memory, remembering which of them succeeded."""
        for key in keys:
            got = self.cache.pop(key, None)
            if got is not None and got[0].status is VmStatus.SUCCEEDED:
                self.succeeded.setdefault(got[0].plan, {})[got[0].vm] = got[0].name
                measured = estimates.sample(got[0])
                if measured is not None:
                    self.learned.append(measured)

    @staticmethod
    def key(migration: str, vm: str) -> str:
        return subjects.vm_key(migration, vm)

    async def load_all(self) -> list[VmState]:
        for key in await self.kv.keys():
            entry = await self.kv.get(key)
            if entry is not None:
                self.cache[key] = (entry.value, entry.revision)
        return [s for s, _ in self.cache.values()]

    async def create(self, state: VmState) -> VmState:
        """Store a new VM; when it exists already (a redelivered start), keep the stored one."""
        key = self.key(state.migration, state.vm)
        try:
            rev = await self.kv.create(key, state)
        except Conflict:
            entry = await self.kv.get(key)
            assert entry is not None
            self.cache[key] = (entry.value, entry.revision)
            return entry.value
        self.cache[key] = (state, rev)
        return state

    def get(self, key: str) -> VmState | None:
        got = self.cache.get(key)
        return got[0] if got else None

    def require(self, key: str) -> VmState:
        """The state of a VM this process knows (indexed); a KeyError is a bug, not a race."""
        state = self.get(key)
        if state is None:
            raise KeyError(key)
        return state

    async def change(self, key: str, fn: Callable[[VmState], Any]) -> tuple[VmState, Any]:
        """Apply ``fn`` to a copy of the state and store it with compare-and-set.

        ``fn`` returns whatever the caller wants back (the engine's actions);
        on a lost race the state is re-read and ``fn`` runs again.
        """
        for _ in range(20):
            cached = self.cache.get(key)
            if cached is None:
                entry = await self.kv.get(key)
                if entry is None:
                    raise KeyError(key)
                cached = (entry.value, entry.revision)
            state, rev = cached
            work = copy_state(state)
            result = fn(work)
            if work == state:
                return state, result
            try:
                new_rev = await self.kv.update(key, work, rev)
            except Conflict:
                self.cache.pop(key, None)
                continue
            self.cache[key] = (work, new_rev)
            return work, result
        raise Conflict(Bucket.VMS.value, key, -1)
