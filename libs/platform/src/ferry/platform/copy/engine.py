"""The copy loop: chunks of a source disk through a few threads into a sink.

The disk is cut into 4 MiB chunks. Chunks without allocated data are never
read: their leaf is a constant and the target keeps its hole. A chunk with data
is handled by one worker thread end to end: read the allocated ranges (rounded
out to 64 KiB blocks) into that thread's own buffer, hash each block, skip
blocks that turn out to be zeros, write the rest in runs. Memory is therefore
``workers * 4 MiB`` whatever the disk size, and reads, hashing (BLAKE3, like file I/O, releases
the GIL) and writes of different chunks overlap.

Results are consumed in chunk order, which makes "every chunk below N is done"
a single number: the checkpoint's watermark. A resumed copy punches the target
from the watermark to the end (a killed attempt may have written past it) and
continues; the leaves below the watermark come from the checkpoint, so the
final digest covers the whole disk without re-reading it.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import msgspec

from ferry.platform.copy import checksum, errors
from ferry.platform.copy.checkpoint import Checkpoint, State
from ferry.platform.copy.sink import DiskSink, RangeWriter
from ferry.platform.copy.source import DiskSource, RangeReader
from ferry.proto.inventory import Checksum, Extent

_ZEROS = bytes(checksum.BLOCK)


@dataclass(frozen=True)
class Options:
    # Two threads keep two cores busy; more only queue up on the target's inode lock.
    workers: int = 2
    # A checkpoint's fdatasync stalls the pipeline, so it is paced by time first;
    # the byte bound only matters for very fast copies of very large disks.
    checkpoint_bytes: int = 4 * 1024 * 1024 * 1024

    checkpoint_seconds: float = 10.0  # …or this often
    progress_seconds: float = 0.5  # at most one progress report per interval
    verify: bool = True  # read the target back and compare digests
    max_rate: float | None = None  # bytes per second of allocated data, None = unlimited


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


@dataclass(frozen=True)
class _ChunkDone:
    leaf: bytes
    read: int  # bytes read: the allocated extents rounded out to whole blocks
    written: int
    allocated: int = 0  # bytes of allocated extents in the chunk (what progress counts)


def chunk_groups(extents: Iterator[Extent], size: int) -> Iterator[tuple[int, list[Extent]]]:
    """Extents clipped and grouped by chunk, chunks in order, empty chunks skipped."""
    current = -1
    group: list[Extent] = []
    for ext in extents:
        start, end = ext.offset, min(ext.offset + ext.length, size)
        while start < end:
            index = start // checksum.CHUNK
            stop = min(end, (index + 1) * checksum.CHUNK)
            if index != current:
                if group:
                    yield current, group
                current, group = index, []
            group.append(Extent(start, stop - start))
            start = stop
    if group:
        yield current, group


def _block_ranges(group: list[Extent], chunk_start: int, chunk_len: int) -> list[tuple[int, int]]:
    """The chunk-relative ranges to read: extents rounded out to whole blocks, merged."""
    out: list[tuple[int, int]] = []
    block = checksum.BLOCK
    for ext in group:
        a = (ext.offset - chunk_start) // block * block
        b = min(-(-(ext.offset + ext.length - chunk_start) // block) * block, chunk_len)
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


class _Workers:
    """Per-thread buffers, readers and writers, closed together at the end."""

    def __init__(self, source: DiskSource, sink: DiskSink | None) -> None:
        self._source = source
        self._sink = sink
        self._local = threading.local()
        self._lock = threading.Lock()
        self._opened: list[RangeReader | RangeWriter] = []

    def _get(self) -> tuple[bytearray, RangeReader, RangeWriter | None]:
        local = self._local
        if not hasattr(local, "buffer"):
            local.buffer = bytearray(checksum.CHUNK)
            local.reader = self._source.reader()
            local.writer = self._sink.writer() if self._sink is not None else None
            with self._lock:
                self._opened.append(local.reader)
                if local.writer is not None:
                    self._opened.append(local.writer)
        return local.buffer, local.reader, local.writer

    def chunk(self, index: int, group: list[Extent], size: int) -> _ChunkDone:
        buffer, reader, writer = self._get()
        view = memoryview(buffer)
        start, length = checksum.chunk_span(index, size)
        block = checksum.BLOCK
        digests = checksum.block_digests_of_zeros(length)
        read = written = 0
        for a, b in _block_ranges(group, start, length):
            reader.readinto(start + a, view[a:b])
            read += b - a
            run = -1
            for offset in range(a, b, block):
                n = min(block, b - offset)
                if buffer.startswith(_ZEROS[:n], offset, offset + n):
                    if run >= 0 and writer is not None:
                        writer.write(start + run, view[run:offset])
                        written += offset - run
                    run = -1
                    continue
                digests[offset // block] = checksum.block_digest(view[offset : offset + n])
                if run < 0:
                    run = offset
            if run >= 0 and writer is not None:
                writer.write(start + run, view[run:b])
                written += b - run
        allocated = sum(ext.length for ext in group)
        return _ChunkDone(checksum.leaf(digests), read, written, allocated)

    def close(self) -> None:
        for one in self._opened:
            one.close()


class _Pacer:
    """Throttled progress reports and an optional bandwidth cap."""

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


def _run(
    source: DiskSource,
    sink: DiskSink | None,
    first: int,
    options: Options,
    on_chunk: Callable[[int, _ChunkDone], None],
) -> None:
    """Feed chunks from ``first`` on through the workers; ``on_chunk`` sees them in order."""
    size = source.size
    workers = _Workers(source, sink)
    inflight: collections.deque[tuple[int, Future[_ChunkDone] | _ChunkDone]] = collections.deque()
    limit = max(1, options.workers) * 2

    def drain(keep: int) -> None:
        while len(inflight) > keep or (inflight and not isinstance(inflight[0][1], Future)):
            index, item = inflight.popleft()
            done = item.result() if isinstance(item, Future) else item
            on_chunk(index, done)

    try:
        with ThreadPoolExecutor(max_workers=max(1, options.workers)) as pool:
            try:
                expected = first
                for index, group in chunk_groups(source.extents(), size):
                    if index < first:
                        continue
                    for hole in range(expected, index):
                        _, length = checksum.chunk_span(hole, size)
                        leaf = checksum.zero_chunk_leaf(length)
                        inflight.append((hole, _ChunkDone(leaf, 0, 0)))
                        drain(limit)
                    inflight.append((index, pool.submit(workers.chunk, index, group, size)))
                    drain(limit)
                    expected = index + 1
                for hole in range(expected, checksum.chunk_count(size)):
                    _, length = checksum.chunk_span(hole, size)
                    inflight.append((hole, _ChunkDone(checksum.zero_chunk_leaf(length), 0, 0)))
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

    def keep(_index: int, done: _ChunkDone) -> None:
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
    once the target was read back and its digest matched.
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
    pacer = _Pacer(allocated, done_before, options, progress)
    ledger = _Ledger(state, checkpoint, sink, options, pacer)
    pacer.begin()
    try:
        _run(source, sink, state.watermark, options, ledger.record)
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
    if options.verify:
        target = sink.reopen_for_reading()
        try:
            target_sum = digest(_Sized(target, size), options)
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
        self, state: State, checkpoint: Checkpoint, sink: DiskSink, options: Options, pacer: _Pacer
    ) -> None:
        self.state = state
        self._checkpoint = checkpoint
        self._sink = sink
        self._options = options
        self._pacer = pacer
        self._since = 0
        self._at = time.monotonic()

    def record(self, index: int, done: _ChunkDone) -> None:
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


class _Sized:
    """A source seen with a given size (a target may be larger than the disk)."""

    def __init__(self, inner: DiskSource, size: int) -> None:
        self._inner = inner
        self._size = size

    @property
    def size(self) -> int:
        return self._size

    def extents(self) -> Iterator[Extent]:
        for ext in self._inner.extents():
            if ext.offset >= self._size:
                return
            yield Extent(ext.offset, min(ext.length, self._size - ext.offset))

    def reader(self) -> RangeReader:
        return self._inner.reader()

    def identity(self) -> str:
        return self._inner.identity()

    def close(self) -> None:
        self._inner.close()
