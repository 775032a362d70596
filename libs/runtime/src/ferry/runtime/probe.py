"""A short read of a source disk, for the throughput of a pair that never migrated.

With no finished migration on a source/target pair, the estimate's throughput
would be a stated default. Instead ``ferry estimate`` and the controller's
admission read a few MiB of one of the plan's disks through the provider's own
disk reader (the reader the copy uses), stop at a byte and a time cap, and use the
rate they saw, marked ``probed``: measured here and now, from the source side
only (the target's write speed is not in it). A provider that cannot be read
says why, and the throughput falls back to the assumed default with that reason.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence

from ferry.proto.estimate import Input
from ferry.proto.inventory import Extent, Vm
from ferry.providers.base import Provider
from ferry.runtime.estimates import ASSUMED_THROUGHPUT

PROBE_BYTES = 8 << 20  # enough for a rate past the first request's latency; small on any link
PROBE_SECONDS = 5.0  # the whole probe, opening the disk included
CHUNK = 1 << 20
MIN_BYTES = 64 << 10  # a disk holding less gives no rate worth stating


class ProbeFailed(Exception):
    """The disk could not be read within the caps; the message says why."""


async def _read(
    provider: Provider, vm: Vm, limit: int, clock: Callable[[], float]
) -> tuple[str, int, float]:
    disk = next((d for d in vm.disks if (d.allocated or d.capacity)), None)
    if disk is None:
        raise ProbeFailed(f"{vm.name} has no disk to read")
    async with provider.open_disk(vm, disk.id) as reader:
        try:  # read data, not holes: a sparse range reads as zeros at memory speed
            ranges = [e for e in await reader.extents() if e.length > 0]
        except Exception:
            ranges = []
        ranges = ranges or [Extent(offset=0, length=reader.size)]
        done, started = 0, clock()
        for extent in ranges:
            offset, end = extent.offset, extent.offset + extent.length
            while offset < end and done < limit:
                got = await reader.read(offset, min(CHUNK, end - offset, limit - done))
                if not got:
                    break
                done += len(got)
                offset += len(got)
            if done >= limit:
                break
        return f"{vm.name}/{disk.name or disk.id}", done, clock() - started


async def throughput(
    provider: Provider,
    vms: Sequence[Vm],
    *,
    limit: int = PROBE_BYTES,
    seconds: float = PROBE_SECONDS,
    clock: Callable[[], float] = time.monotonic,
) -> tuple[float, str]:
    """Bytes per second read from the first of ``vms`` with a disk, and what was read.

    Raises :class:`ProbeFailed` naming why when nothing can be read within the caps."""
    vm = next((v for v in vms if v.disks), None)
    if vm is None:
        raise ProbeFailed("no VM of the plan has a disk")
    try:
        async with asyncio.timeout(seconds):
            what, done, took = await _read(provider, vm, limit, clock)
    except TimeoutError:
        raise ProbeFailed(f"reading {vm.name}'s disk took longer than {seconds:g} s") from None
    except ProbeFailed:
        raise
    except Exception as bad:  # any failure to read is a reason to assume, never to fail
        raise ProbeFailed(f"{vm.name}'s disk could not be read: {bad}") from None
    if done < min(MIN_BYTES, limit) or took <= 0:  # a small disk is read whole: its rate
        raise ProbeFailed(f"{vm.name}'s disk gave {done} bytes, too few for a rate")
    return done / took, f"read {done >> 20} MiB of {what} in {took:.2f} s"


async def probed_input(
    provider: Provider | None,
    vms: Sequence[Vm],
    why: str,
    *,
    limit: int = PROBE_BYTES,
    seconds: float = PROBE_SECONDS,
) -> Input:
    """The throughput input of a pair with no history: probed, or assumed with the reason."""
    if provider is None:
        failed = "the source could not be opened"
    elif seconds <= 0:
        failed = "probing is off"
    else:
        try:
            rate, basis = await throughput(provider, vms, limit=limit, seconds=seconds)
        except ProbeFailed as bad:
            failed = str(bad)
        else:
            return Input(
                name="throughput",
                value=rate,
                unit="B/s",
                measured=True,
                probed=True,
                basis=f"{why}; probe {basis}",
            )
    return Input(
        name="throughput",
        value=ASSUMED_THROUGHPUT,
        unit="B/s",
        measured=False,
        basis=f"{why}; probe failed: {failed}",
    )
