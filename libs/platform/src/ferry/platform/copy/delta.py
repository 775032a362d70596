"""A warm-migration round: only the changed ranges of a source written onto a filled target.

The first round of a warm migration is an ordinary copy (:mod:`.engine`); every
later round writes just the extents the provider reported as changed since the
previous checkpoint, over the data already there. Nothing else of the target is
touched: no hole is punched, no range zeroed, so what earlier rounds wrote stays.

What a round proves: each changed range reads back from the target as the bytes
read from the source (a SHA-256 over the changed ranges, in order, on both
sides). The last round, taken while the source is off and so cannot change,
proves more: the tree digest of the whole source disk equals that of the whole
target (``whole``), the same checksum a cold copy reports.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from ferry.platform import errors
from ferry.platform.copy import engine, holes
from ferry.platform.copy.sink import DiskSink
from ferry.platform.copy.source import DiskSource
from ferry.proto.inventory import Checksum, Extent

ALGORITHM = "sha256-changed-ranges"
CHUNK = 4 * 1024 * 1024


@dataclass(frozen=True)
class Result:
    changed: int  # bytes the provider reported as changed
    written: int  # bytes written onto the target (the same, here)
    source: Checksum
    target: Checksum
    seconds: float


def _ranges(extents: list[Extent], size: int) -> list[tuple[int, int]]:
    out = []
    for ext in extents:
        end = min(ext.offset + ext.length, size)
        offset = ext.offset
        while offset < end:
            length = min(CHUNK, end - offset)
            out.append((offset, length))
            offset += length
    return out


def apply(
    source: DiskSource,
    sink: DiskSink,
    extents: list[Extent],
    *,
    whole: DiskSource | None = None,
    options: engine.Options | None = None,
    progress: Callable[[engine.Progress], None] | None = None,
) -> Result:
    """Write ``extents`` of ``source`` onto ``sink``; the sink is flushed and closed.

    ``whole`` is the same source with its true allocation, given on the last round:
    then both whole disks are hashed and compared as well.
    """
    started = time.monotonic()
    size = source.size
    ranges = _ranges(extents, size)
    total = sum(length for _, length in ranges)
    buffer = bytearray(CHUNK)
    read_hash, back_hash = hashlib.sha256(), hashlib.sha256()
    reader, writer = source.reader(), sink.writer()
    done, last = 0, started
    try:
        for offset, length in ranges:
            view = memoryview(buffer)[:length]
            reader.readinto(offset, view)
            read_hash.update(view)
            writer.write(offset, view)
            done += length
            now = time.monotonic()
            if progress is not None and (now - last >= 0.5 or done == total):
                progress(engine.Progress(done, total, done / max(now - started, 1e-6)))
                last = now
        sink.flush()
    finally:
        writer.close()
        reader.close()
        sink.close()
    target = sink.reopen_for_reading()
    try:
        back = target.reader()
        try:
            for offset, length in ranges:
                view = memoryview(buffer)[:length]
                back.readinto(offset, view)
                back_hash.update(view)
        finally:
            back.close()
        src = Checksum(algorithm=ALGORITHM, digest=read_hash.hexdigest(), bytes=total)
        dst = Checksum(algorithm=ALGORITHM, digest=back_hash.hexdigest(), bytes=total)
        if whole is not None and src.digest == dst.digest:
            # Both disks are read at once: the cutover's downtime waits for this.
            with ThreadPoolExecutor(2) as pool:
                source_sum = pool.submit(engine.digest, whole, options)
                target_sum = pool.submit(engine.digest, holes.Sized(target, size), options)
                src, dst = source_sum.result(), target_sum.result()
    finally:
        target.close()
    if src.digest != dst.digest:
        raise errors.ChecksumMismatchError(
            f"the target reads back as {dst.digest[:16]}…, the source as {src.digest[:16]}…"
        )
    return Result(total, total, src, dst, time.monotonic() - started)
