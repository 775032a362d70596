"""One controller replica drives the VMs; the others wait, ready to take over.

The controller's tables (queues, slots, budgets' ledger, timers) are derived
from the stored VM states by one process; two processes deriving and acting on
them at once would start a VM twice and overrun every budget. So replicas are
active / standby: the active one holds a lease in the locks bucket
(``controller.leader``), renewed every third of ``leader_lease_seconds``; the
others try to take it as often. A replica killed outright (``kill -9``) stops
renewing; its lease lapses and a standby takes it, resumes every VM from the
stored states (as a restart does) and serves the two durable consumers. What
the dead one had fetched but not acked is redelivered after the ack wait. A
replica stopped with SIGTERM drains, then gives the lease up at once.

Every write is a compare-and-set on the lease's revision, so two standbys
racing for a lapsed lease cannot both win, and an active replica that finds its
lease taken (it stalled longer than the lease) stops instead of acting on.
Expiry is wall-clock time: replicas' clocks are assumed in step (NTP).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable

import msgspec

from ferry.bus import Bus, Conflict
from ferry.proto.subjects import Bucket

log = logging.getLogger(__name__)

KEY = "controller.leader"


class Lease(msgspec.Struct, frozen=True, kw_only=True):
    owner: str
    expires: float  # unix time


class LeaseLost(Exception):
    """Another replica holds the lease now."""


def owner_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class Leadership:
    def __init__(
        self,
        bus: Bus,
        lease_seconds: float,
        *,
        owner: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._kv = bus.kv(Bucket.LOCKS, Lease)
        self._lease = lease_seconds
        self.owner = owner or owner_id()
        self._clock = clock
        self._revision = 0

    async def _try(self) -> bool:
        entry = await self._kv.get(KEY)
        now = self._clock()
        mine = Lease(owner=self.owner, expires=now + self._lease)
        try:
            if entry is None:
                self._revision = await self._kv.create(KEY, mine)
                return True
            if entry.value.owner == self.owner or entry.value.expires < now:
                self._revision = await self._kv.update(KEY, mine, entry.revision)
                return True
        except Conflict:
            pass
        return False

    async def acquire(self, stop: asyncio.Event) -> bool:
        """Wait until this replica holds the lease (``True``) or ``stop`` is set."""
        waited = False
        while not stop.is_set():
            if await self._try():
                log.info("controller %s is active%s", self.owner, " (took over)" * waited)
                return True
            if not waited:
                log.info("controller %s is standing by", self.owner)
                waited = True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._lease / 3)
        return False

    async def hold(self) -> None:
        """Renew the lease until cancelled; raise :class:`LeaseLost` when another took it.

        Only a lost compare-and-set means another replica holds the lease. A renewal
        that fails because the bus is away (nats-server restarting) is tried again on
        the next beat: while the bus is away this replica can act on nothing, and once
        it is back the next compare-and-set on the same revision says whether a
        standby took the lease meanwhile (then :class:`LeaseLost`) or not.
        """
        while True:
            await asyncio.sleep(self._lease / 3)
            lease = Lease(owner=self.owner, expires=self._clock() + self._lease)
            try:
                self._revision = await self._kv.update(KEY, lease, self._revision)
            except Conflict:
                # A renewal that timed out while the bus was away may still have been
                # applied when it came back: the lease is then ours at a newer revision.
                if not await self._still_mine():
                    raise LeaseLost(KEY) from None
            except Exception as err:
                log.warning("controller lease not renewed (%s); trying again", err or type(err))

    async def _still_mine(self) -> bool:
        entry = await self._kv.get(KEY)
        if entry is None or entry.value.owner != self.owner:
            return False
        self._revision = entry.revision
        return True

    async def release(self) -> None:
        """Let a standby take over now rather than when the lease lapses."""
        lease = Lease(owner=self.owner, expires=0.0)
        with contextlib.suppress(Conflict):
            await self._kv.update(KEY, lease, self._revision)
