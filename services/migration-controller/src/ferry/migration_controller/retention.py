"""How long an ended migration's per-VM state stays on the bus.

Every VM ever migrated leaves a record (with up to five revisions) in the VM
bucket; without a bound, the bucket, and every replay of it at start-up, grows
with every wave. The state of a migration that ended is kept for
``finished_retention_seconds`` after its ``status.completed`` (for ``ferry get``,
the console and audits), then removed with its history. The Migration object itself
is the user's and stays; a migration still going is never touched, whatever its age.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime

from ferry.bus import BusError
from ferry.migration_controller.store import Objects, VmStates
from ferry.proto import objects, subjects

log = logging.getLogger(__name__)

_MAX_INTERVAL = 3600.0


class Retention:
    """Removes the VM states of migrations that ended longer ago than ``keep_seconds``."""

    def __init__(
        self,
        objects_: Objects,
        states: VmStates,
        keep_seconds: float,
        clock: Callable[[], float],
        removed: Callable[[str, list[str]], None] = lambda name, keys: None,
    ) -> None:
        self._removed = removed
        self._objects = objects_
        self._states = states
        self._keep = keep_seconds
        self._clock = clock

    @property
    def interval(self) -> float:
        """How often to look: a tenth of the retention, at most hourly, at least every second."""
        return max(1.0, min(self._keep / 10, _MAX_INTERVAL))

    async def sweep(self) -> list[str]:
        """Remove what is due; the keys removed."""
        kind = objects.Migration.KIND.lower()
        removed: list[str] = []
        for key in await self._objects.kv.keys(f"{kind}."):
            entry = await self._objects.kv.get(key)
            if entry is None:
                continue
            try:
                migration = objects.from_document(entry.value)
            except ValueError as err:
                log.warning("retention skipped %s: %s", key, err)
                continue
            if isinstance(migration, objects.Migration) and self._due(migration):
                removed += await self._remove(migration.metadata.name)
        return removed

    def _due(self, migration: objects.Migration) -> bool:
        status = migration.status
        ended: datetime | None = status.completed
        if not status.phase.ended or ended is None:
            return False
        return self._clock() - ended.timestamp() >= self._keep

    async def _remove(self, name: str) -> list[str]:
        keys = await self._states.kv.keys(f"{subjects.token(name)}.")
        for key in keys:
            await self._states.kv.remove(key)
        self._states.forget(keys)
        self._removed(name, keys)
        if keys:
            log.info("removed the state of %d VMs of migration %s (retention)", len(keys), name)
        return keys

    async def run(self) -> None:
        """Sweep now, then every :attr:`interval`, until cancelled; errors wait a turn."""
        while True:
            try:
                await self.sweep()
            except (BusError, OSError, TimeoutError) as err:
                log.warning("retention sweep failed, will try again: %s", err)
            await asyncio.sleep(self.interval)
