"""The hand-off of transfer progress from the platform's callback to the bus
(the throttle itself is tested in tests/unit/runtime/test_progress.py)."""

from __future__ import annotations

import asyncio
import threading

import pytest

from ferry.platform.volumes import TransferProgress
from ferry.proto.volume import DiskProgress
from ferry.runtime.progress import Throttle
from ferry.volume_service.progress import ProgressRelay


def report(disk: str, done: int, total: int = 100) -> TransferProgress:
    return TransferProgress(disk_id=disk, volume=f"vol-{disk}", done=done, total=total, rate=1.0)


def event(p: TransferProgress) -> DiskProgress:
    return DiskProgress(
        plan="p", migration="m", vm="v", disk_id=p.disk_id, done=p.done, total=p.total
    )


async def test_relay_publishes_throttled_reports_handed_over_from_a_thread() -> None:
    # Given a relay whose throttle admits one report per minute (plus first and last)
    sent: list[DiskProgress] = []

    async def emit(message: DiskProgress) -> None:
        sent.append(message)

    async with ProgressRelay(emit, event, Throttle(60.0)) as relay:
        # When a worker thread reports a thousand times
        def work() -> None:
            for done in range(0, 1001):
                relay.callback(report("d0", done, 1000))

        worker = threading.Thread(target=work)
        worker.start()
        await asyncio.to_thread(worker.join)

    # Then only the first and the last were admitted, and the last always reaches the
    # bus (the first may have been replaced by it before the publisher ran: newest wins)
    assert [(m.done, m.total) for m in sent] in ([(0, 1000), (1000, 1000)], [(1000, 1000)])
    assert relay.published == len(sent)


async def test_a_failing_publish_does_not_stop_the_relay() -> None:
    # Given a bus that refuses the first publish
    sent: list[int] = []

    async def emit(message: DiskProgress) -> None:
        if not sent and message.done == 0:
            sent.append(-1)
            raise ConnectionError("bus down")
        sent.append(message.done)

    async with ProgressRelay(emit, event, Throttle(0.0)) as relay:
        relay.callback(report("d0", 0))
        await asyncio.sleep(0.05)
        relay.callback(report("d0", 100))

    # Then later reports still go out
    assert sent == [-1, 100]


async def test_leaving_with_an_error_drops_pending_reports() -> None:
    sent: list[DiskProgress] = []
    gate = asyncio.Event()

    async def emit(message: DiskProgress) -> None:
        await gate.wait()
        sent.append(message)

    # Given reports waiting behind a slow publish
    with pytest.raises(RuntimeError):
        async with ProgressRelay(emit, event, Throttle(0.0)) as relay:
            relay.callback(report("d0", 0))
            await asyncio.sleep(0.05)
            # When the copy fails
            raise RuntimeError("copy failed")
    gate.set()
    # Then nothing more is published
    await asyncio.sleep(0.05)
    assert sent == []
