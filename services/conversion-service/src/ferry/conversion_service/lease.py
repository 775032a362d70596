"""One conversion per VM at a time, across replicas, and no second run of a done one.

The router already runs one VM's messages in order within a replica; across
replicas only a shared record can say "someone is converting this VM". Each VM
has one entry in the locks bucket (``conversion.<migration>.<vm>``):

- ``running`` with an owner and an expiry, renewed every third of the lease
  while the conversion runs, so a crashed replica's claim lapses quickly;
- ``done`` with the event the conversion produced, so a redelivered command
  (a crash between publishing the result and acking the command) returns that
  event again instead of converting a second time;
- nothing, after a failure: a retry may start afresh.

Every write is a compare-and-set on the revision: two replicas racing for the
same VM cannot both win.

A command that finds the VM held by another replica waits for that claim to end
(the router keeps the message alive meanwhile) instead of failing: a redelivery
would count towards giving up, and a duplicate command sent while a conversion
takes minutes (a controller restart after the dedupe window) would end in a
``ConversionFailed`` while the first run still goes. When the claim ends with
this step and attempt done, the waiting command reports that result; a command
whose attempt is older than the claim's is stale and does nothing.

The keeper that renews the claim must outlive a bus hiccup: a renewal that times
out is retried (the claim only lapses if renewals fail for a whole lease), and
whatever happens to the keeper never replaces the body's own result. Once the
``done`` record is written, releasing the claim leaves it in place: deleting it
would let a redelivered command convert the VM a second time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import AsyncIterator
from typing import Literal

import msgspec

from ferry.bus import Bus, Conflict, TemporaryError
from ferry.proto import subjects
from ferry.proto.conversion import GuestConverted

log = logging.getLogger(__name__)


class Claim(msgspec.Struct, frozen=True, kw_only=True):
    state: Literal["running", "done"]
    owner: str
    step: str = ""
    attempt: int = 1
    expires: float = 0.0  # unix time; running only
    result: GuestConverted | None = None  # done only


class LeaseLost(Exception):
    """Another replica took the VM over (our renewals stopped for too long)."""


class Busy(TemporaryError):
    """Another replica's claim on the VM is alive (:meth:`Lease.claim` waits it out)."""


class Stale(Exception):
    """A newer attempt of this step has claimed or finished the VM: this command is old."""


class AlreadyDone(Exception):
    """This very step and attempt finished (perhaps while we waited): here is its result."""

    def __init__(self, result: GuestConverted) -> None:
        super().__init__("conversion already completed")
        self.result = result


def owner_id() -> str:
    """This replica, as it appears in a claim (host name and pid)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def key(migration: str, vm: str) -> str:
    return f"conversion.{subjects.vm_key(migration, vm)}"


class Lease:
    """Claim, renew, complete or release one VM's conversion."""

    def __init__(
        self,
        bus: Bus,
        migration: str,
        vm: str,
        step: str,
        attempt: int,
        seconds: float,
        owner: str | None = None,
    ) -> None:
        self.kv = bus.kv(subjects.Bucket.LOCKS, Claim)
        self.key = key(migration, vm)
        self.step = step
        self.attempt = attempt
        self.seconds = seconds
        self.owner = owner or owner_id()
        self.revision = 0
        self.completed = False

    def _running(self) -> Claim:
        return Claim(
            state="running",
            owner=self.owner,
            step=self.step,
            attempt=self.attempt,
            expires=time.time() + self.seconds,
        )

    async def done_before(self) -> GuestConverted | None:
        """The result of this very step and attempt, if it already completed."""
        entry = await self.kv.get(self.key)
        if entry is None:
            return None
        claim = entry.value
        same = claim.step == self.step and claim.attempt == self.attempt
        return claim.result if claim.state == "done" and same else None

    async def acquire(self) -> None:
        """Claim the VM once: :class:`Busy` while another replica holds it,
        :class:`Stale` when a newer attempt has it, :class:`AlreadyDone` when this
        attempt finished."""
        entry = await self.kv.get(self.key)
        try:
            if entry is None:
                self.revision = await self.kv.create(self.key, self._running())
                return
            claim = entry.value
            if claim.step == self.step and claim.attempt > self.attempt:
                raise Stale(
                    f"attempt {self.attempt} of {self.step} is stale: attempt "
                    f"{claim.attempt} is {claim.state} ({claim.owner})"
                )
            same = claim.step == self.step and claim.attempt == self.attempt
            if claim.state == "done" and same and claim.result is not None:
                raise AlreadyDone(claim.result)
            held = claim.state == "running" and claim.expires > time.time()
            if held and claim.owner != self.owner:
                raise Busy(
                    f"VM is being converted by {claim.owner}; waiting for its lease",
                    delay=max(0.2, min(self.seconds / 3, claim.expires - time.time() + 0.1)),
                )
            self.revision = await self.kv.update(self.key, self._running(), entry.revision)
        except Conflict:
            raise Busy("another replica claimed this VM just now", 0.5) from None

    async def claim(self) -> None:
        """Claim the VM, waiting while another replica's claim is alive.

        Only :class:`Stale` or :class:`AlreadyDone` end the wait without a claim
        (or the task's cancellation: a cancel, a shutdown).
        """
        waiting = False
        while True:
            try:
                await self.acquire()
                return
            except Busy as busy:
                if not waiting:
                    log.info("conversion lease %s: %s", self.key, busy.reason)
                    waiting = True
                await asyncio.sleep(busy.delay)

    async def renew(self) -> None:
        try:
            self.revision = await self.kv.update(self.key, self._running(), self.revision)
        except Conflict:
            raise LeaseLost(f"lost the conversion lease {self.key}") from None

    async def complete(self, result: GuestConverted) -> None:
        done = Claim(
            state="done", owner=self.owner, step=self.step, attempt=self.attempt, result=result
        )
        try:
            self.revision = await self.kv.update(self.key, done, self.revision)
            self.completed = True
        except Conflict as error:
            log.warning("conversion result not recorded in %s: %s", self.key, error)

    async def release(self) -> None:
        """Give the claim up after a failure; a recorded result is never released, and
        nothing is deleted before a claim was made (revision 0 would delete whatever
        is there: another replica's live claim, when we failed while waiting for it)."""
        if self.completed or self.revision == 0:
            return
        try:
            await self.kv.delete(self.key, self.revision)
        except Conflict as error:
            log.warning("conversion lease %s not released: %s", self.key, error)

    @contextlib.asynccontextmanager
    async def held(self) -> AsyncIterator[None]:
        """Hold the claim while the body runs; renewed in the background.

        When a renewal finds the claim taken, the body's task is cancelled and
        :class:`LeaseLost` raised in its place.
        """
        await self.claim()
        body = asyncio.current_task()
        lost: list[LeaseLost] = []

        async def keep() -> None:
            wait = self.seconds / 3
            while True:
                await asyncio.sleep(wait)
                try:
                    await self.renew()
                    wait = self.seconds / 3
                except LeaseLost as error:
                    lost.append(error)
                    if body is not None:
                        body.cancel()
                    return
                except Exception as error:  # a timeout, a reconnect: try again soon
                    wait = max(0.05, self.seconds / 10)
                    log.warning(
                        "renewing conversion lease %s failed: %s; retrying", self.key, error
                    )

        keeper = asyncio.create_task(keep())
        try:
            yield
        except asyncio.CancelledError:
            if lost and body is not None:
                body.uncancel()  # our own cancel, turned into LeaseLost
                raise lost[0] from None
            raise
        finally:
            keeper.cancel()
            # The keeper's end is never the body's: its own failures were logged.
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await keeper
