"""The dispatcher's hooks: ``check`` (synchronous) and ``before`` (may wait) in the chain's
order, and what the metrics hooks are told for one message."""

from __future__ import annotations

from ferry.bus import Context, Router
from ferry.bus.job import Job
from ferry.bus.middleware import Middleware
from ferry.bus.outcome import Retry, Verdict
from ferry.proto import volume
from ferry.proto.subjects import Service
from ferry.testing.broker import InMemoryBroker
from ferry.testing.bus import Observed, allocate


class Checks(Middleware):
    """A middleware that decides without waiting."""

    def __init__(self, name: str, log: list[str], verdict: Verdict | None = None) -> None:
        self.name, self.log, self.verdict = name, log, verdict

    def check(self, job: Job) -> Verdict | None:
        self.log.append(f"check {self.name}")
        return self.verdict


class Waits(Middleware):
    """A middleware whose ``before`` waits (as one that reads state would)."""

    def __init__(self, name: str, log: list[str]) -> None:
        self.name, self.log = name, log

    async def before(self, job: Job) -> Verdict | None:
        self.log.append(f"before {self.name}")
        return None


class Both(Checks):
    async def before(self, job: Job) -> Verdict | None:
        self.log.append(f"before {self.name}")
        return None


def _router(log: list[str], middleware: list[Middleware]) -> Router:
    router = Router(Service.VOLUME, middleware=middleware)

    @router.handler(volume.AllocateDisks)
    async def handle(cmd: volume.AllocateDisks, ctx: Context) -> None:
        log.append("handler")

    return router


async def test_checks_and_befores_run_in_the_chains_order_then_the_handler() -> None:
    # Given a chain mixing synchronous checks and waiting befores (one middleware both)
    log: list[str] = []
    chain: list[Middleware] = [Checks("a", log), Waits("b", log), Both("c", log), Checks("d", log)]
    async with InMemoryBroker(_router(log, chain)) as broker:
        # When a command is delivered
        done = await broker.deliver(allocate("vm1"))
    # Then every hook ran once, in the chain's order (a middleware's check before its
    # before), and the handler after them
    assert log == ["check a", "before b", "check c", "before c", "check d", "handler"]
    assert done.settled == "ack"


async def test_a_checks_verdict_settles_the_message_without_its_handler() -> None:
    # Given checks only (no before waits), the first of which hands the message back
    for chain_has_a_before in (False, True):
        log: list[str] = []
        chain: list[Middleware] = [Checks("a", log, Retry(3.0)), Checks("b", log)]
        if chain_has_a_before:
            chain.append(Waits("c", log))
        async with InMemoryBroker(_router(log, chain)) as broker:
            # When a command is delivered
            done = await broker.deliver(allocate("vm1"))
        # Then it is nak'ed with that delay, and neither later hooks nor the handler ran
        assert (done.settled, done.delay) == ("nak", 3.0)
        assert log == ["check a"]


async def test_the_metrics_of_one_message_are_what_they_were() -> None:
    # Given a router reporting to an observer
    log: list[str] = []
    observer = Observed()
    async with InMemoryBroker(_router(log, []), observer=observer) as broker:
        # When a command is handled on its first delivery, then on its second
        await broker.deliver(allocate("vm1"))
        await broker.deliver(allocate("vm2"), deliveries=2)
    # Then the observer saw it held, handled, released; the redelivery counted as one
    allocate_disks = "volume.allocate_disks.v1"
    assert observer.log == [
        ("in_flight", 1),
        ("handled", allocate_disks),
        ("in_flight", 0),
        ("in_flight", 1),
        ("redelivered", allocate_disks),
        ("handled", allocate_disks),
        ("in_flight", 0),
    ]
