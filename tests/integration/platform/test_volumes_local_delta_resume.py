"""A warm round (a delta of changed extents) killed mid-round resumes inside the round.

Real pieces: the importer workload is a child process killed with SIGKILL, the
source is a real NBD export (nbdkit serving the changed disk, its ``log`` filter
recording every read the workload makes), the target a real volume filled by an
earlier full copy. What is counted is the bytes the resumed attempt reads from
the export: it must not read again the extents the killed attempt made durable.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from ferry.platform import volumes
from ferry.platform.images import ImageRef
from ferry.platform.local import workload
from ferry.platform.local.volumes import LocalVolumes
from ferry.proto.inventory import Extent
from ferry.proto.volume import VolumeSource

from .localkit import NS, MiB, data_digest, digest_of, make_raw, request, settings, wait_for_child

pytestmark = pytest.mark.skipif(shutil.which("nbdkit") is None, reason="nbdkit is not installed")

SIZE = 64 * MiB
RANGE = 2 * MiB  # each changed extent; the delta copy moves at most 4 MiB at a time
CHANGED = [Extent(offset=i * 8 * MiB + 1 * MiB, length=RANGE) for i in range(8)]
_READ = re.compile(r"\bRead id=\d+ offset=0x[0-9a-f]+ count=(0x[0-9a-f]+)")


@contextmanager
def nbd_export(disk: Path, socket: Path, log: Path) -> Iterator[None]:
    """nbdkit serving ``disk`` read-only on ``socket``, logging each request to ``log``."""
    argv = ["nbdkit", "-U", str(socket), "-f", "-r", "--filter=log", "file", str(disk)]
    proc = subprocess.Popen([*argv, f"logfile={log}"])
    try:
        deadline = time.monotonic() + 20
        while not socket.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("nbdkit did not start")
            time.sleep(0.02)
        yield
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        socket.unlink(missing_ok=True)


def bytes_read(log: Path) -> int:
    return sum(int(m.group(1), 16) for m in _READ.finditer(log.read_text()))


@pytest.mark.slow
async def test_a_delta_round_killed_after_k_of_n_extents_resumes_with_the_rest(
    tmp_path: Path,
) -> None:
    # Given a volume filled by a full copy of the old disk
    old = make_raw(tmp_path / "old.raw", SIZE, [(0, SIZE)], seed=1)
    new = tmp_path / "new.raw"
    shutil.copyfile(old, new)
    with new.open("r+b") as f:  # …and the source since changed in eight 2 MiB extents
        for i, ext in enumerate(CHANGED):
            f.seek(ext.offset)
            f.write(bytes([0x40 + i]) * ext.length)
    fast = LocalVolumes(settings(tmp_path))
    volume = await fast.ensure_volume(request("d0", SIZE, VolumeSource.IMPORTER))
    await fast.import_disk(volume, ImageRef(path=str(old)))
    volume = await fast.require_volume(NS, volume.name)
    socket = tmp_path / "nbd.sock"
    ref = ImageRef(
        path="vm-7/d0", nbd_socket=str(socket), size=SIZE, extents=CHANGED, snapshot="cp-2"
    )
    total = len(CHANGED) * RANGE
    # When the round's workload, slowed to 4 MiB/s, is killed -9 after 3 of 8 extents
    slow = LocalVolumes(settings(tmp_path, max_rate=4 * MiB))
    seen: list[volumes.TransferProgress] = []
    with nbd_export(new, socket, tmp_path / "first.log"):
        task = asyncio.create_task(slow.apply_changes(volume, ref, seen.append))
        child = await wait_for_child("ferry.platform.local.importer")
        while not any(p.done >= 3 * RANGE for p in seen):
            assert not task.done(), task
            await asyncio.sleep(0.02)
        child.kill()
        with pytest.raises(workload.WorkloadCrashed, match="SIGKILL"):
            await task
    # And the same round is run again
    with nbd_export(new, socket, tmp_path / "again.log"):
        copy = await fast.apply_changes(volume, ref)
    # Then the second attempt reads only what the first had not made durable
    again = bytes_read(tmp_path / "again.log")
    assert again <= total - 3 * RANGE, f"read {again // MiB} MiB of {total // MiB} again"
    # And the volume holds the new disk exactly: no extent was skipped
    assert data_digest(await fast.require_volume(NS, volume.name)) == digest_of(new)
    # And the round's checksums agree (over every changed extent, not just this attempt's)
    assert copy.source.digest == copy.target.digest
    assert copy.source.bytes == total
