"""Background tasks stop for sure, even when a cancellation is lost on the way."""

from __future__ import annotations

import asyncio
import contextlib

from ferry.bus.tasks import cancel_and_wait


async def test_a_loop_that_lost_one_cancellation_is_still_stopped() -> None:
    # Given a loop whose first cancellation is lost, as 3.11's wait_for loses one that
    # arrives with its inner result, and which then carries on
    beats: list[int] = []

    async def renew() -> None:
        with contextlib.suppress(asyncio.CancelledError):  # lost
            await asyncio.sleep(30)
        while True:
            beats.append(1)
            await asyncio.sleep(0.01)

    task = asyncio.create_task(renew())
    await asyncio.sleep(0)
    # When it is stopped
    await asyncio.wait_for(cancel_and_wait(task, again=0.05), 5)
    # Then it has ended, after having carried on for a while
    assert task.cancelled() and beats


async def test_finished_and_failed_tasks_are_taken_as_they_are() -> None:
    # Given a task that ended, one that failed and one still running
    async def fail() -> None:
        raise ValueError("boom")

    done = asyncio.create_task(asyncio.sleep(0))
    failed = asyncio.create_task(fail())
    running = asyncio.create_task(asyncio.sleep(30))
    await asyncio.sleep(0.01)
    # When all are stopped / Then nothing is raised and the running one is canceled
    await cancel_and_wait(done, failed, running)
    assert done.done() and not done.cancelled()
    assert running.cancelled()


async def test_a_clean_up_on_cancel_gets_its_time() -> None:
    # Given a task that spends a moment cleaning up when canceled
    cleaned: list[bool] = []

    async def hold() -> None:
        try:
            await asyncio.sleep(30)
        finally:
            await asyncio.sleep(0.05)
            cleaned.append(True)

    task = asyncio.create_task(hold())
    await asyncio.sleep(0)
    # When it is stopped with the default patience / Then its clean-up ran to its end
    await cancel_and_wait(task)
    assert cleaned == [True]
