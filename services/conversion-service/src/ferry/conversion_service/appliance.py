"""Telling a libguestfs appliance that stopped booting from one that boots slowly.

virt-v2v (and virt-v2v-in-place, virt-inspector) start a small appliance VM; under
software emulation its kernel can hang in boot (seen here with ``-smp 2``: the
console stops after ``sched_clock: Marking stable`` while qemu spins). Nothing fails
then: only the run's time limit (an hour by default) would end it. With ``-v`` the
appliance's console comes through virt-v2v's output line by line, so silence while
the appliance boots is the sign: from libguestfs's ``launch:`` line until it says
``appliance is up``, a gap longer than ``silence_seconds`` between two lines means
the boot stopped. The run is then killed and failed as transient (the machine's
fault, not the guest's), so the command is run again after a pause.

Once the appliance is up the watch stands down: its long silent calls (an
initramfs rebuilt under emulation) are work, and the heartbeat reports them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

LAUNCH = "libguestfs: launch: program="
UP = "appliance is up"


class ApplianceHung(Exception):
    """The appliance said nothing for too long while booting."""

    def __init__(self, silent: float, last: str) -> None:
        super().__init__(
            f"the libguestfs appliance stopped booting (nothing for {silent:.0f}s after "
            f"{last!r}); it was killed and the conversion will run again"
        )
        self.last = last


class Watch:
    """Fed every output line; :meth:`guard` ends a run whose appliance hangs in boot."""

    def __init__(self, silence_seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.silence = silence_seconds
        self._clock = clock
        self._booting = False
        self._last_at = 0.0
        self._last = ""

    def feed(self, line: str) -> None:
        if LAUNCH in line:
            self._booting = True
        elif UP in line:
            self._booting = False
        self._last_at, self._last = self._clock(), line.strip()

    def silent_for(self) -> float:
        """Seconds since the last line while the appliance boots; 0 otherwise."""
        return self._clock() - self._last_at if self._booting else 0.0

    def hung(self) -> bool:
        return self.silence > 0 and self.silent_for() > self.silence

    async def guard(self, run: Awaitable[T]) -> T:
        """``run``'s result; if the appliance hangs first, ``run`` is canceled (which
        stops its processes) and :class:`ApplianceHung` raised."""
        task = asyncio.ensure_future(run)
        try:
            while True:
                # (off: wait for the run alone; on: look again when the silence would end)
                wait = None if self.silence <= 0 else max(self.silence - self.silent_for(), 0.05)
                done, _ = await asyncio.wait({task}, timeout=wait)
                if done:
                    return task.result()
                if self.hung():
                    silent = self.silent_for()
                    await _stopped(task)
                    raise ApplianceHung(silent, self._last)
        finally:
            if not task.done():
                await _stopped(task)


async def _stopped(task: asyncio.Future[T]) -> None:
    """Cancel the run and wait while it stops its processes (once: its clean-up is
    itself cancel-proof, and a second cancel must not cut it short)."""
    task.cancel()
    await asyncio.wait({task})
    if not task.cancelled():
        task.exception()  # retrieved: the hang is the run's outcome
