"""The copy loop: chunks of a source disk through a few threads into a sink.

The disk is cut into 4 MiB chunks. Chunks without allocated data are never
read: their leaf is a constant and the target keeps its hole. A chunk with data
is handled by one worker thread end to end: read the allocated ranges (rounded
out to 64 KiB blocks) into that thread's own buffer, hash each block, skip
blocks that turn out to be zeros, write the rest in runs, then read the same
ranges back from the target into a second buffer and compare (one ``memcmp``).
Memory is therefore ``threads * 8 MiB`` whatever the disk size, and reads,
hashing (BLAKE3, like file I/O and zlib, releases the GIL) and writes of
different chunks overlap on all cores. Each finished chunk's range is handed to
the kernel for writeback at once, so the final ``fdatasync`` finds little left
to write instead of the whole disk.

What the verification proves: every byte the copy read from the source was
hashed into the source digest, and the target, read back through the kernel
after the write, holds exactly those bytes at the same offsets (skipped zero
blocks included: they must read back as zeros); after the flush, every place
where the target has data and the source has a hole is read and must be zeros.
So the target's guest-visible bytes equal the bytes that were hashed, i.e. the
target's tree digest *is* the source digest, without hashing twice. It checks
the copy's own path (offsets, lost or short writes, the sink, stale data of a
resumed attempt), not the device's media. Where the target takes direct I/O
(the default), writes and read-backs bypass the page cache, so the read-back
asks the device (a virtual disk may answer from its host's cache); where it
does not (tmpfs, ``FERRY_COPY_BUFFERED``), it reads the page cache. Either
way it costs one more read of every written byte: on a copy whose bottleneck
is the device (raw to raw on one local disk) that is the price of the check,
measured in ``bench/copy``. ``Options.rehash`` adds the old, independent second
pass that re-reads and re-hashes the whole target.

Results are consumed in chunk order, which makes "every chunk below N is done"
a single number: the checkpoint's watermark. A chunk counts as done only once
it was compared. A resumed copy punches the target from the watermark to the
end (a killed attempt may have written past it) and continues; the leaves below
the watermark come from the checkpoint, so the final digest covers the whole
disk without re-reading it.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import msgspec

from ferry.platform import errors
from ferry.platform.copy import checksum, chunks, holes
from ferry.platform.copy.checkpoint import Checkpoint, State
from ferry.platform.copy.sink import DiskSink
from ferry.platform.copy.source import DiskSource
from ferry.proto.inventory import Checksum


@dataclass(frozen=True)
class Options:
    # Cores to keep busy: hashing, inflating and copying run on this many
    # threads (twice as many when verifying, see ``_threads``).
    workers: int = 2
    # A checkpoint's fdatasync stalls the pipeline, so it is paced by time first;
    # the byte bound only matters for very fast copies of very large disks.
    checkpoint_bytes: int = 4 * 1024 * 1024 * 1024

    checkpoint_seconds: float = 10.0  # …or this often
    progress_seconds: float = 0.5  # at most one progress report per interval
    # Read every range back from the target right after writing it and compare it
    # with the bytes that were hashed; after the flush, check the rest is zeros.
    verify: bool = True
    # Also re-read the whole target after the flush and hash it again: an
    # independent second pass (slow: every byte read and hashed twice).
    rehash: bool = False
    max_rate: float | None = None  # bytes per second of allocated data, None = unlimited
    # Called with each chunk's allocated bytes before the chunk is read: a rate
    # shared with other processes (``ferry.bus.rate``) blocks here when spent, so
    # no byte moves ahead of its grant (``max_rate`` paces after the fact).
    throttle: Callable[[int], None] | None = None


@dataclass(frozen=True)
class Progress:
    done: int  # allocated bytes processed
    total: int  # allocated bytes of the source
    rate: float  # bytes per second since the previous report


@dataclass(frozen=True)
class Result:
    size: int
    bytes_written: int
    allocated: int
    source: Checksum
    target: Checksum
    seconds: float
    resumed_at: int  # bytes of the disk already done when this run started


ProgressCallback = Callable[[Progress], None]


class Pacer:
    """Throttled progress reports and the bandwidth caps (``max_rate``, ``throttle``):
    one for every copy that moves data, full or delta."""

    def __init__(self, total: int, done: int, options: Options, report: ProgressCallback | None):
        self.total = total
        self.done = done
        self._options = options
        self._report = report
        self._started = time.monotonic()
        self._base = done
        self._last_time = self._started
        self._last_done = done

    def advance(self, nbytes: int) -> None:
        self.done += nbytes
        now = time.monotonic()
        if self._options.max_rate:
            ahead = (self.done - self._base) / self._options.max_rate - (now - self._started)
            if ahead > 0:
                time.sleep(ahead)
                now = time.monotonic()
        if now - self._last_time >= self._options.progress_seconds:
            self._emit(now)

    def begin(self) -> None:
        """Report where the copy starts (above zero when it resumed)."""
        self._emit(time.monotonic())

    def finish(self) -> None:
        self._emit(time.monotonic())

    def _emit(self, now: float) -> None:
        if self._report is not None:
            elapsed = max(now - self._last_time, 1e-9)
            rate = (self.done - self._last_done) / elapsed
            self._report(Progress(done=self.done, total=self.total, rate=rate))
        self._last_time, self._last_done = now, self.done


def _allocated(source: DiskSource, below: int) -> tuple[int, int]:
    """Allocated bytes in all of the source, and below offset ``below``."""
    total = before = 0
    for ext in source.extents():
        end = min(ext.offset + ext.length, source.size)
        total += end - ext.offset
        if ext.offset < below:
            before += min(end, below) - ext.offset
    return total, before


def _threads(options: Options, verify: bool) -> int:
    """Threads for ``options.workers`` busy cores.

    A verifying worker spends part of each chunk waiting for the device (its
    direct write, then the read-back), so twice as many threads keep the same
    number of cores hashing; each costs two 4 MiB buffers.
    """
    return min(64, max(1, options.workers) * (2 if verify else 1))


def _run(
    source: DiskSource,
    sink: DiskSink | None,
    first: int,
    options: Options,
    on_chunk: Callable[[int, chunks.ChunkDone], None],
    verify: bool = False,
) -> None:
    """Feed chunks from ``first`` on through the workers; ``on_chunk`` sees them in order."""
    size = source.size
    workers = chunks.Workers(source, sink, verify)
    inflight: collections.deque[tuple[int, Future[chunks.ChunkDone] | chunks.ChunkDone]] = (
        collections.deque()
    )
    threads = _threads(options, verify)
    limit = threads * 2

    def drain(keep: int) -> None:
        while len(inflight) > keep or (inflight and not isinstance(inflight[0][1], Future)):
            index, item = inflight.popleft()
            done = item.result() if isinstance(item, Future) else item
            on_chunk(index, done)

    try:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            try:
                expected = first
                for index, group in chunks.chunk_groups(source.extents(), size):
                    if index < first:
                        continue
                    for hole in range(expected, index):
                        _, length = checksum.chunk_span(hole, size)
                        leaf = checksum.zero_chunk_leaf(length)
                        inflight.append((hole, chunks.ChunkDone(leaf, 0, 0)))
                        drain(limit)
                    if sink is not None and options.throttle is not None:
                        options.throttle(sum(e.length for e in group))
                    inflight.append((index, pool.submit(workers.chunk, index, group, size)))
                    drain(limit)
                    expected = index + 1
                for hole in range(expected, checksum.chunk_count(size)):
                    _, length = checksum.chunk_span(hole, size)
                    inflight.append(
                        (hole, chunks.ChunkDone(checksum.zero_chunk_leaf(length), 0, 0))
                    )
                    drain(limit)
                drain(0)
            except BaseException:
                for _, item in inflight:
                    if isinstance(item, Future):
                        item.cancel()
                raise
    finally:
        workers.close()


def digest(source: DiskSource, options: Options | None = None) -> Checksum:
    """The tree digest of a disk, read with the same parallel, sparse-aware path."""
    options = options or Options()
    leaves: list[bytes] = []
    total = [0]

    def keep(_index: int, done: chunks.ChunkDone) -> None:
        leaves.append(done.leaf)
        total[0] += done.read

    _run(source, None, 0, options, keep)
    return Checksum(
        algorithm=checksum.ALGORITHM, digest=checksum.root(source.size, leaves), bytes=source.size
    )


def copy(
    source: DiskSource,
    sink: DiskSink,
    state_dir: Path,
    options: Options | None = None,
    progress: ProgressCallback | None = None,
) -> Result:
    """Copy ``source`` into ``sink``, resuming from ``state_dir``'s checkpoint if any.

    The sink is flushed and closed on success; the checkpoint is removed only
    once the target was verified (see the module's docstring for what that proves).
    """
    options = options or Options()
    started = time.monotonic()
    size = source.size
    if getattr(sink, "size", size) < size:
        raise errors.InvalidSourceError(
            f"the target ({getattr(sink, 'size', 0)} bytes) is smaller than the source ({size})"
        )
    checkpoint = Checkpoint(state_dir)
    state, existed = checkpoint.load(source.identity(), size, sink.format)
    resumed_at = min(state.watermark * checksum.CHUNK, size)
    if existed:
        # A killed attempt may have written anywhere past the watermark.
        sink.punch(resumed_at, size - resumed_at)
    checkpoint.commit(state)

    allocated, done_before = _allocated(source, resumed_at)
    pacer = Pacer(allocated, done_before, options, progress)
    ledger = _Ledger(state, checkpoint, sink, options, pacer)
    pacer.begin()
    try:
        _run(source, sink, state.watermark, options, ledger.record, verify=options.verify)
        sink.flush()
        final = ledger.state
        checkpoint.commit(final)
        source_sum = Checksum(
            algorithm=checksum.ALGORITHM,
            digest=checksum.root(size, checkpoint.leaves(checksum.chunk_count(size))),
            bytes=size,
        )
    finally:
        checkpoint.close()
        sink.close()
    pacer.finish()
    target_sum = source_sum
    if options.verify or options.rehash:
        target = sink.reopen_for_reading()
        try:
            sized = holes.Sized(target, size)
            if options.verify:
                holes.holes_read_as_zeros(source, sized)
            if options.rehash:
                target_sum = digest(sized, options)
        finally:
            target.close()
        if target_sum.digest != source_sum.digest:
            raise errors.ChecksumMismatchError(
                f"the target reads back as {target_sum.digest[:16]}…, "
                f"the source hashed to {source_sum.digest[:16]}…"
            )
    checkpoint.remove()
    return Result(
        size=size,
        bytes_written=final.bytes_written,
        allocated=allocated,
        source=source_sum,
        target=target_sum,
        seconds=time.monotonic() - started,
        resumed_at=resumed_at,
    )


class _Ledger:
    """Records finished chunks in order and commits checkpoints at the set cadence."""

    def __init__(
        self, state: State, checkpoint: Checkpoint, sink: DiskSink, options: Options, pacer: Pacer
    ) -> None:
        self.state = state
        self._checkpoint = checkpoint
        self._sink = sink
        self._options = options
        self._pacer = pacer
        self._since = 0
        self._at = time.monotonic()

    def record(self, index: int, done: chunks.ChunkDone) -> None:
        self._checkpoint.put_leaf(index, done.leaf)
        self.state = msgspec.structs.replace(
            self.state, watermark=index + 1, bytes_written=self.state.bytes_written + done.written
        )
        self._since += done.allocated
        now = time.monotonic()
        if (
            self._since >= self._options.checkpoint_bytes
            or now - self._at >= self._options.checkpoint_seconds
        ):
            self._sink.flush()
            self._checkpoint.commit(self.state)
            self._since, self._at = 0, now
        self._pacer.advance(done.allocated)
