"""Stopping background tasks for sure.

A single ``Task.cancel()`` can be lost. Before Python 3.12, ``asyncio.wait_for``
returns its inner result instead of raising when the cancellation arrives in the
same turn as that result, and nats-py waits for every request that way (a KV
update, a JetStream publish). A loop around such a call then carries on as if it
had never been cancelled, and whoever awaits it waits forever: a controller that
never finished stopping, its lease renewal still beating, was how this showed.
:func:`cancel_and_wait` cancels again while a task runs on.
"""

from __future__ import annotations

import asyncio
from typing import Any

AGAIN_SECONDS = 1.0  # a task still running this long after a cancel is cancelled again


async def cancel_and_wait(*tasks: asyncio.Task[Any], again: float = AGAIN_SECONDS) -> None:
    """Cancel ``tasks`` and return once every one has ended (its outcome is dropped).

    A task that handles its cancellation with a clean-up of its own gets ``again``
    seconds for it before the next cancel; background loops are what this is for.
    """
    pending = {task for task in tasks if not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=again)
    for task in tasks:  # retrieve outcomes, so none is reported as never retrieved
        if not task.cancelled():
            task.exception()
