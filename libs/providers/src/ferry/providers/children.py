"""Stopping a helper process a provider started (qemu-nbd, nbdkit): one way for all.

SIGTERM first, so the server closes its export cleanly; SIGKILL if it has not gone
within the grace period, so a stuck server never holds a provider's close forever.
"""

from __future__ import annotations

import asyncio

GRACE_SECONDS = 10.0


async def stop(process: asyncio.subprocess.Process | None, grace: float = GRACE_SECONDS) -> None:
    """Terminate ``process`` (if it still runs), killing it after ``grace`` seconds."""
    if process is None or process.returncode is not None:
        return
    process.terminate()
    try:
        await asyncio.wait_for(process.wait(), grace)
    except TimeoutError:
        process.kill()
        await process.wait()
