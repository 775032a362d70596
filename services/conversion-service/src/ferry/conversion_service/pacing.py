"""A full conversion's reads under the bandwidth budgets: nbdkit's rate filter, fed grants.

virt-v2v reads a source the provider serves through captive ``nbdkit`` helpers (a
vSphere disk over the datastore path) as fast as it can; a Budget's MiB/s must hold
for those reads as it holds for the importer's. Each helper gets nbdkit's ``rate``
filter with a ``rate-file``; while the conversion runs, :func:`paced` takes grants
from the budgets' shared rates (the same :class:`~ferry.runtime.bandwidth.Rates` the
volume-service's copies take them from, so conversions and copies share one budget
fairly) and writes what it was granted over the last period into that file, which
nbdkit re-reads as it goes (:mod:`ferry.platform.ratefile`).

The grants are a reservation: the conversion holds its share of each budget while it
runs, whether virt-v2v reads at that moment or not (nbdkit says nothing of what it
served), so a budget is never exceeded but may be under-used during the conversion's
own guest work. virt-v2v copies one disk at a time, so each helper may read at the
whole reservation. A conversion pod's helpers are fed the same way from inside the pod,
by a program that asks this service's grant broker over HTTP with a ticket from the
pod's Secret (:class:`ferry.platform.workloads.RemotePace`). What a provider moves
itself before virt-v2v starts (an OVA's staged copies, an NFC download) asks the same
grants chunk by chunk (``v2v_input(pace=…)``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from ferry.platform import workloads
from ferry.platform.ratefile import Reservation, write_rate
from ferry.platform.workloads import WorkloadError, WorkloadPlatform

Rate = Callable[[int], Awaitable[None]]
log = logging.getLogger(__name__)

STEP = 1 << 20  # bytes asked per grant, at least (more while grants come at once)
PERIOD = 1.0  # seconds between updates of the rate file
START_BITS = 8 * STEP  # the helpers' rate before the first period (1 MiB/s)
BURST_SECONDS = 1.0
TICKET = "pace-ticket.json"  # a conversion pod's grants ticket, among its secret files


def rate_filter(helper: list[str], rate_file: Path) -> list[str]:
    """An ``nbdkit`` helper's argv with the rate filter reading ``rate_file``."""
    if not helper or Path(helper[0]).name != "nbdkit":
        return helper
    return [
        helper[0],
        "--filter=rate",
        *helper[1:],
        f"rate={START_BITS}",
        f"rate-file={rate_file}",
        # a bucket of one second (nbdkit's default is two): the file moves every second,
        # and a reader must not run ahead of the grants by more than one
        f"burstiness={BURST_SECONDS}",
    ]


@contextlib.asynccontextmanager
async def paced(
    rate: Rate, path: Path, *, step: int = STEP, period: float = PERIOD
) -> AsyncIterator[None]:
    """While the block runs, grants are taken and their rate written to ``path``."""
    write_rate(path, START_BITS)

    async def feed() -> None:
        pace = Reservation(step, period)
        while True:
            asked = time.monotonic()
            nbytes = pace.step
            try:
                await rate(nbytes)
            except Exception as exc:  # the shared rates out of reach: ask again
                log.warning("bandwidth grants: %s; asking again", exc)
                pace.unreachable()  # (nbdkit keeps the last rate written)
                await asyncio.sleep(period)
                continue
            bits = pace.granted(nbytes, time.monotonic() - asked)
            if bits is not None:
                write_rate(path, bits)

    task = asyncio.create_task(feed())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _as_is(argv: list[str]) -> list[str]:
    return argv


@dataclass
class Plan:
    """How one conversion's helpers are paced: their argv, the workload's extra secret
    files, its command's wrapper, and what takes the grants while it runs."""

    captive: list[list[str]]
    files: dict[str, bytes] = field(default_factory=dict)
    wrap: Callable[[list[str]], list[str]] = _as_is
    grants: contextlib.AbstractAsyncContextManager[None] = field(
        default_factory=contextlib.nullcontext
    )


def plan(
    platform: WorkloadPlatform,
    rate: Rate | None,
    step: int,
    captive: list[list[str]],
    *,
    workdir: Path,
    seen: str,
    secret_dir: str,
) -> Plan:
    """The pacing of a full conversion whose helpers are ``captive`` (argv as the workload
    runs them), its work directory ``workdir`` here and ``seen`` where it runs.

    With no budget (or no helper) nothing changes. Where workloads run here, this
    service feeds the rate file (:func:`paced`); elsewhere the platform's workload does,
    asking this service's broker with a ticket among its secret files. A platform that
    can do neither refuses (:class:`WorkloadError`) rather than read past a budget.
    """
    if rate is None or not captive:
        return Plan(captive)
    if platform.workloads_run_here:
        here = workdir / "rate"
        helpers = [rate_filter(helper, here) for helper in captive]
        return Plan(helpers, grants=paced(rate, here, step=step))
    remote = workloads.remote_pace(platform, rate)
    if remote is None:
        raise WorkloadError(
            "a bandwidth budget applies to this conversion, and this platform's workloads "
            "cannot take grants"
        )
    there = f"{seen}/rate"
    ticket = f"{secret_dir}/{TICKET}"
    helpers = [rate_filter(helper, Path(there)) for helper in captive]

    def wrap(argv: list[str]) -> list[str]:
        return remote.command(argv, ticket_file=ticket, rate_file=there, step=step)

    return Plan(helpers, {TICKET: remote.ticket}, wrap, remote)
