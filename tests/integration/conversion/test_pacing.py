"""A full conversion's source reads under a bandwidth budget: nbdkit's rate filter, fed grants.

The helper is a real ``nbdkit`` (its file plugin standing for ``curl``) with the argv the
converter gives a captive helper when the VM's budgets have a bandwidth; the grants come
from a budget of ``RATE`` bytes a second. A reader as eager as virt-v2v's copy must not
get more than the budget (the tolerance is the filter's one-second bucket), and without
the filter the same reader is many times faster (the test would see it).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from ferry.conversion_service import pacing
from ferry.providers.nbd import AsyncNbdClient

MiB = 1 << 20
RATE = 8 * MiB  # the budget, bytes per second
SIZE = 16 * MiB


def budget(rate: float) -> pacing.Rate:
    """Grants at ``rate`` bytes a second, one asker at a time (a budget's share)."""
    lock = asyncio.Lock()

    async def take(nbytes: int) -> None:
        async with lock:
            await asyncio.sleep(nbytes / rate)

    return take


@pytest.fixture
def disk(tmp_path: Path) -> Path:
    path = tmp_path / "disk.raw"
    path.write_bytes(os.urandom(SIZE))  # data, so nothing is skipped as a hole
    return path


@contextlib.asynccontextmanager
async def _serve(argv: list[str], socket: Path) -> AsyncIterator[asyncio.subprocess.Process]:
    proc = await asyncio.create_subprocess_exec(*argv, "--foreground")
    try:
        for _ in range(200):
            if socket.exists():
                break
            await asyncio.sleep(0.02)
        yield proc
    finally:
        proc.terminate()
        await proc.wait()


async def _read_all(socket: Path) -> float:
    """Read the whole disk in 1 MiB requests as fast as the server answers; MiB/s."""
    client = await AsyncNbdClient.connect(socket)
    started = time.monotonic()
    try:
        for offset in range(0, SIZE, MiB):
            await client.read(offset, MiB)
    finally:
        await client.close()
    return SIZE / (time.monotonic() - started)


@pytest.mark.parametrize("paced", [True, False], ids=["paced", "unpaced"])
async def test_an_eager_reader_gets_no_more_than_the_budget(
    disk: Path, tmp_path: Path, paced: bool
) -> None:
    # Given a captive helper's argv, with the rate filter when the budget applies
    socket = tmp_path / "nbd.sock"
    helper = ["nbdkit", "--readonly", f"--unix={socket}", "file", str(disk)]
    rate_file = tmp_path / "rate"
    argv = pacing.rate_filter(helper, rate_file) if paced else helper
    assert ("--filter=rate" in argv) is paced

    # When a reader reads it all while the grants feed the filter's rate file
    async with _serve(argv, socket):
        if paced:
            async with pacing.paced(budget(RATE), rate_file, step=MiB, period=0.5):
                rate = await _read_all(socket)
        else:
            rate = await _read_all(socket)

    print(f"\n{'paced' if paced else 'unpaced'}: {rate / MiB:.1f} MiB/s, budget {RATE / MiB:.0f}")
    # Then paced, it got the budget and no more (within the one-second bucket); unpaced,
    # many times more
    if paced:
        allowed = (SIZE + RATE * pacing.BURST_SECONDS) / SIZE * RATE  # the bucket's burst
        assert RATE * 0.5 < rate <= allowed * 1.05, (rate / MiB, allowed / MiB)
    else:
        assert rate > 3 * RATE, rate / MiB


def test_the_filter_goes_before_the_plugin_and_its_parameters_after() -> None:
    helper = ["nbdkit", "--readonly", "--unix=/w/nbd-0.sock", "curl", "url=https://h/f"]
    argv = pacing.rate_filter(helper, Path("/w/rate"))
    assert argv[:2] == ["nbdkit", "--filter=rate"]
    assert argv[argv.index("curl") :][:2] == ["curl", "url=https://h/f"]
    assert "rate-file=/w/rate" in argv and argv.index("rate-file=/w/rate") > argv.index("curl")
    # a helper that is not nbdkit is left as it is
    assert pacing.rate_filter(["qemu-nbd", "x"], Path("/w/rate")) == ["qemu-nbd", "x"]


async def test_grants_out_of_reach_keep_the_last_rate_and_fail_nothing(tmp_path: Path) -> None:
    # Given grants that fail (the bus away) after the first period
    calls = 0

    async def flaky(nbytes: int) -> None:
        nonlocal calls
        calls += 1
        if calls > 2:
            raise ConnectionError("no NATS server reachable")
        await asyncio.sleep(0.05)

    rate_file = tmp_path / "rate"
    # When a conversion runs under them for a while, then ends
    async with pacing.paced(flaky, rate_file, step=MiB, period=0.1):
        await asyncio.sleep(0.5)
    # Then it ended without their error, nbdkit kept a rate, and they were asked again
    assert int(rate_file.read_text()) > 0 and calls > 3
