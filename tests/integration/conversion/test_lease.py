"""The conversion lease outlives a bus hiccup, and never costs the result it guards."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from ferry.bus import Bus, TemporaryError, TopologySettings, declare
from ferry.bus.tasks import cancel_and_wait
from ferry.conversion_service import lease
from ferry.proto.conversion import GuestConverted
from ferry.proto.subjects import Bucket, Service

TOPOLOGY = TopologySettings(ack_wait_seconds=10.0, duplicate_window_seconds=60)
RESULT = GuestConverted(plan="p", migration="m", vm="v", step="convert", seconds=1.0)


def flaky_renewals(held: lease.Lease, failures: int) -> list[int]:
    """Make the first ``failures`` renewals time out, as a NATS hiccup would."""
    real = held.kv.update
    calls: list[int] = []

    async def update(key: str, value: Any, revision: int) -> int:
        if value.state == "running" and len(calls) < failures:
            calls.append(revision)
            raise TimeoutError("nats: timeout (injected)")
        return await real(key, value, revision)

    held.kv.update = update  # type: ignore[method-assign]
    return calls


async def test_a_renewal_timeout_is_retried_and_the_result_kept(nats_url: str) -> None:
    async with await Bus.connect(nats_url, name="lease-test", settings=TOPOLOGY) as bus:
        await declare(bus, TOPOLOGY, [Service.CONVERSION])
        # Given a lease of 0.9 s whose first renewal times out
        mine = lease.Lease(bus, "m", "v", "convert", 1, 0.9, owner="replica-a")
        failed = flaky_renewals(mine, 1)
        other = lease.Lease(bus, "m", "v", "convert", 1, 0.9, owner="replica-b")
        # When a conversion runs for three lease lengths, then records its result
        async with mine.held():
            for _ in range(6):
                await asyncio.sleep(0.45)
                # Then no other replica could take the VM meanwhile: renewals went on
                with pytest.raises(TemporaryError):
                    await other.acquire()
            await mine.complete(RESULT)
        # And the result is kept, even though the body's lease is then released
        await mine.release()
        entry = await bus.kv(Bucket.LOCKS, lease.Claim).get(lease.key("m", "v"))
    assert failed, "the injected timeout never happened"
    assert entry is not None and entry.value.state == "done" and entry.value.result == RESULT


async def test_release_after_a_failure_frees_the_vm(nats_url: str) -> None:
    async with await Bus.connect(nats_url, name="lease-test", settings=TOPOLOGY) as bus:
        await declare(bus, TOPOLOGY, [Service.CONVERSION])
        mine = lease.Lease(bus, "m", "v", "convert", 1, 30, owner="replica-a")
        # Given a conversion that failed while holding the lease
        with pytest.raises(RuntimeError):
            async with mine.held():
                raise RuntimeError("virt-v2v failed")
        await mine.release()
        # Then another replica may start afresh
        await lease.Lease(bus, "m", "v", "convert", 2, 30, owner="replica-b").acquire()


async def test_giving_up_while_waiting_leaves_the_holders_claim(nats_url: str) -> None:
    async with await Bus.connect(nats_url, name="lease-test", settings=TOPOLOGY) as bus:
        await declare(bus, TOPOLOGY, [Service.CONVERSION])
        # Given replica b converting the VM, and replica a waiting for its claim
        holder = lease.Lease(bus, "m", "v", "convert", 1, 30, owner="replica-b")
        await holder.acquire()
        waiter = lease.Lease(bus, "m", "v", "convert", 1, 30, owner="replica-a")
        waiting = asyncio.create_task(waiter.claim())
        await asyncio.sleep(0.5)
        # When a's wait ends without a claim (canceled) and a releases as after a failure
        await cancel_and_wait(waiting)  # a single cancel can be lost in nats-py's waits
        assert waiting.cancelled()
        await waiter.release()
        entry = await bus.kv(Bucket.LOCKS, lease.Claim).get(lease.key("m", "v"))
    # Then b's claim is still there, untouched
    assert entry is not None and entry.value.owner == "replica-b"
    assert entry.value.state == "running"
