"""The plan view's throughput when a source/target pair has no history: a short probe read.

``ferry estimate`` and the controller's admission read a few MiB of one of the
plan's disks (:mod:`ferry.runtime.probe`) when the pair never migrated; the
console does the same for its plan view, so a plan shows the figure it will be
admitted with, marked "probed", not the assumed default. A probe takes up to
a few seconds, so it never holds the snapshot: the snapshot says the probe is
under way and starts it, and the page asks for the plan's estimate on its own
(``/api/plans/{plan}/estimate``), which waits for that probe. One probe runs per
pair at a time, and its result is kept for ``probe_cache_seconds``: many open
pages cost one read of the source, not one each.

The source is opened from its Provider object (:mod:`ferry.runtime.providers`)
but without credentials: the console holds no provider secret, as ``ferry
estimate`` run from a workstation holds none. A source that needs one (vSphere,
a libvirt URI with a password), or that cannot be opened or read from here,
leaves the throughput assumed, with the reason; the controller's admission probes
it with its credentials when the migration starts.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence

from ferry.proto import objects
from ferry.proto.estimate import Input
from ferry.proto.inventory import Vm
from ferry.proto.volume import SourceRef
from ferry.providers.base import Provider
from ferry.runtime import estimates, probe
from ferry.runtime.providers import OpenProvider, SecretNotFound

log = logging.getLogger(__name__)

Pair = tuple[str, str]  # source provider, target namespace
READ_VMS = 100  # a plan's VMs read from the source for their sizes, when not listed yet


class NoSecrets:
    """The console's secret store: it holds none, and says so."""

    def read(self, namespace: str, name: str) -> dict[str, str]:
        raise SecretNotFound(f"the console holds no credentials (secret {namespace}/{name})")


class Probes:
    """The probed throughput per pair: cached, one probe at a time per pair, in the
    background."""

    def __init__(
        self,
        open_source: OpenProvider,
        *,
        seconds: float,
        keep: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._open = open_source
        self._seconds = seconds
        self._keep = keep
        self._clock = clock
        self._done: dict[Pair, tuple[float, Input]] = {}
        self._read: dict[str, list[Vm]] = {}  # plan -> its VMs as the probe read them
        self._running: dict[Pair, asyncio.Task[Input]] = {}

    @staticmethod
    def pair(plan: objects.Plan) -> Pair:
        return plan.spec.provider.source.name, plan.spec.targetNamespace

    def cached(
        self, plan: objects.Plan, source: objects.Provider, listed: Sequence[Vm] = ()
    ) -> Input | None:
        """The pair's probe if one finished within ``keep`` seconds, else None (and a probe
        of ``source`` is started, unless one runs). ``listed``: the source's VMs as the
        controller last read them, else the plan's VMs are asked of the source."""
        key = self.pair(plan)
        got = self._done.get(key)
        if got is not None and self._clock() - got[0] <= self._keep:
            return got[1]
        self._start(key, plan, source, listed)
        return None

    async def wait(
        self, plan: objects.Plan, source: objects.Provider, listed: Sequence[Vm] = ()
    ) -> Input:
        """The pair's probe: the cached one, or the running one awaited."""
        got = self.cached(plan, source, listed)
        if got is not None:
            return got
        return await asyncio.shield(self._running[self.pair(plan)])

    def read(self, plan: objects.Plan) -> list[Vm]:
        """The plan's VMs as its last probe read them from the source (their sizes, before
        the controller's first inventory read of a new Provider)."""
        return self._read.get(plan.name, [])

    def pending(self, reason: str) -> Input:
        """What the plan view shows while the probe runs: the default, saying so."""
        return Input(
            name="throughput",
            value=estimates.ASSUMED_THROUGHPUT,
            unit="B/s",
            measured=False,
            basis=f"{reason}; probing the source",
        )

    async def close(self) -> None:
        """Stop the probes under way (the console is stopping)."""
        running = list(self._running.values())
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)

    def _start(
        self, key: Pair, plan: objects.Plan, source: objects.Provider, listed: Sequence[Vm]
    ) -> None:
        if key in self._running:
            return
        work = self._probe(key, plan, source, listed)
        task = asyncio.create_task(work, name=f"probe {key[0]} -> {key[1]}")
        self._running[key] = task
        task.add_done_callback(lambda _: self._running.pop(key, None))

    async def _probe(
        self, key: Pair, plan: objects.Plan, provider: objects.Provider, listed: Sequence[Vm]
    ) -> Input:
        why = estimates.no_history_on(*key)
        ref = SourceRef(provider=provider.name, type=provider.spec.type, url=provider.spec.url)
        source: Provider | None = None
        vms: list[Vm] = []
        try:
            source = await self._open(ref)
            vms = _of_plan(plan, listed) or await _vms(source, plan)
            self._read[plan.name] = vms
            if not vms:
                why = f"{why}; none of the plan's VMs could be read from the source"
        except Exception as bad:  # an unreadable source is a reason to assume, not to fail
            log.info("probe of %s -> %s: the source could not be opened: %s", *key, bad)
            why = f"{why}; the source could not be opened: {bad}"
        try:
            got = await probe.probed_input(source, vms, why, seconds=self._seconds)
        finally:
            await _close(source)
        self._done[key] = (self._clock(), got)
        return got


def _of_plan(plan: objects.Plan, listed: Sequence[Vm]) -> list[Vm]:
    wanted = {key for vm in plan.spec.vms for key in (vm.key, vm.name) if key}
    return [vm for vm in listed if wanted & {vm.id, vm.name}]


async def _vms(source: Provider, plan: objects.Plan) -> list[Vm]:
    """The plan's VMs as the source lists them (the first ``READ_VMS``)."""
    found: list[Vm] = []
    for wanted in plan.spec.vms[:READ_VMS]:
        try:
            vm = await source.vm(wanted.key)
        except Exception as bad:  # a VM gone from the source: try the next
            log.info("probe: %s not read from the source: %s", wanted.key, bad)
            continue
        found.append(vm)
    return found


async def _close(source: Provider | None) -> None:
    """A provider's ``close`` if it has one (a vSphere session logs out); never raises."""
    close = getattr(source, "close", None)
    if close is None:
        return
    try:
        await close()
    except Exception as bad:
        log.warning("closing a probed source failed: %s", bad)
