"""A warm-migration round: only the changed ranges of a source written onto a filled target.

The first round of a warm migration is an ordinary copy (:mod:`.engine`); every
later round writes just the extents the provider reported as changed since the
previous checkpoint, over the data already there. Nothing else of the target is
touched: no hole is punched, no range zeroed, so what earlier rounds wrote stays.

What a round proves: each changed range reads back from the target as the bytes
read from the source. Both sides are one hash chain over the ranges in order
(``chain = SHA-256(chain || SHA-256(range))`` from a fixed start): the chain of
the source's reads against the chain of the target's read-back. The last round, taken while the
source is off and so cannot change, proves more: the tree digest of the whole
source disk equals that of the whole target (``whole``), the same checksum a cold
copy reports.

A round killed mid-way resumes inside the round, like a full copy resumes from
its watermark. Its ledger (:class:`State`) is small and of fixed size: how many
leading ranges are done and the source chain over them. It is committed only
after the target was flushed, so whatever it claims is on disk: replaced
atomically in ``delta.json`` beside the target where there is a directory for
it, and handed to ``on_commit`` (a transfer pod prints it; the volume-service gives
the last one to the pod it starts next, :mod:`ferry.platform.kubernetes.rounds`).
It counts only for the same round: the same point-in-time picture of the source
(``key``, a warm view's checkpoint), the same size and the same ranges; anything
else starts afresh. A round without a key never resumes: the same extents of
another picture may hold other bytes.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import msgspec

from ferry.platform import durable, errors
from ferry.platform.copy import engine, holes
from ferry.platform.copy.sink import DiskSink
from ferry.platform.copy.source import DiskSource
from ferry.proto.inventory import Checksum, Extent

ALGORITHM = "sha256-chain-of-changed-range-sha256s"
CHUNK = 4 * 1024 * 1024
STATE = "delta.json"


@dataclass(frozen=True)
class Result:
    changed: int  # bytes the provider reported as changed
    written: int  # bytes written onto the target by this attempt
    source: Checksum
    target: Checksum
    seconds: float
    resumed_at: int = 0  # bytes of the round a killed attempt had made durable


class State(msgspec.Struct, frozen=True, kw_only=True):
    round: str  # the round's identity: picture, size and ranges (``_round``)
    done: int = 0  # leading ranges durable on the target
    chain: str = ""  # hex: the source chain over those ranges


def _round(key: str, size: int, ranges: list[tuple[int, int]]) -> str:
    return hashlib.sha256(msgspec.json.encode([key, size, CHUNK, ranges])).hexdigest()


_START = hashlib.sha256(ALGORITHM.encode()).digest()  # the chain before any range


def _link(chain: bytes, digest: bytes) -> bytes:
    return hashlib.sha256(chain + digest).digest()


class _Ledger:
    """The round's durable progress; nothing is kept or resumed without a key."""

    def __init__(
        self,
        directory: Path | None,
        key: str,
        size: int,
        ranges: list[tuple[int, int]],
        resume: State | None,
        on_commit: Callable[[State], None] | None,
    ):
        self._path = directory / STATE if directory is not None and key else None
        self._on_commit = on_commit if key else None
        self._round = _round(key, size, ranges)
        self.done, self.chain = 0, _START
        if not key:
            return
        for found in (self._read(), resume):
            if found is not None and found.done > self.done and self._fits(found, len(ranges)):
                self.done, self.chain = found.done, bytes.fromhex(found.chain)

    def _read(self) -> State | None:
        if self._path is None:
            return None
        try:
            return msgspec.json.decode(self._path.read_bytes(), type=State)
        except (FileNotFoundError, msgspec.DecodeError, msgspec.ValidationError):
            return None

    def _fits(self, found: State, count: int) -> bool:
        try:
            chain = bytes.fromhex(found.chain)
        except ValueError:
            return False
        return found.round == self._round and 0 < found.done <= count and len(chain) == 32

    def record(self, digest: bytes) -> None:
        self.done, self.chain = self.done + 1, _link(self.chain, digest)

    def commit(self) -> None:
        """Called only once the target holds every recorded range (flushed)."""
        state = State(round=self._round, done=self.done, chain=self.chain.hex())
        if self._path is not None:
            try:
                self._path.parent.mkdir(parents=True, exist_ok=True)
                durable.write_atomic(self._path, msgspec.json.encode(state))
            except OSError as exc:
                raise errors.on_write(exc, f"the round's progress {self._path}") from exc
        if self._on_commit is not None:
            self._on_commit(state)

    def remove(self) -> None:
        if self._path is not None:
            with contextlib.suppress(FileNotFoundError):
                self._path.unlink()


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
    state_dir: Path | None = None,
    key: str = "",
    resume: State | None = None,
    on_commit: Callable[[State], None] | None = None,
) -> Result:
    """Write ``extents`` of ``source`` onto ``sink``; the sink is flushed and closed.

    ``whole`` is the same source with its true allocation, given on the last round:
    then both whole disks are hashed and compared as well. With ``state_dir`` and a
    ``key`` (the picture ``source`` shows), progress is kept there and a killed
    attempt's durable ranges are not read again; ``resume`` is such progress kept
    elsewhere (the furthest of the two counts), and ``on_commit`` sees each commit.
    """
    started = time.monotonic()
    options = options or engine.Options()
    size = source.size
    ranges = _ranges(extents, size)
    total = sum(length for _, length in ranges)
    ledger = _Ledger(state_dir, key, size, ranges, resume, on_commit)
    first = ledger.done
    resumed_at = sum(length for _, length in ranges[:first])
    buffer = bytearray(CHUNK)
    reader, writer = source.reader(), sink.writer()
    # the same pacing as a full copy: progress reports, max_rate and the shared throttle
    pacer = engine.Pacer(total, resumed_at, options, progress)
    pacer.begin()
    since, at = 0, time.monotonic()
    try:
        for offset, length in ranges[first:]:
            view = memoryview(buffer)[:length]
            if options.throttle is not None:
                options.throttle(length)
            reader.readinto(offset, view)
            writer.write(offset, view)
            ledger.record(hashlib.sha256(view).digest())
            since += length
            now = time.monotonic()
            if since >= options.checkpoint_bytes or now - at >= options.checkpoint_seconds:
                sink.flush()
                ledger.commit()
                since, at = 0, now
            pacer.advance(length)
        pacer.finish()
        sink.flush()
    finally:
        writer.close()
        reader.close()
        sink.close()
    back_chain = _START
    target = sink.reopen_for_reading()
    try:
        back = target.reader()
        try:
            for offset, length in ranges:
                view = memoryview(buffer)[:length]
                back.readinto(offset, view)
                back_chain = _link(back_chain, hashlib.sha256(view).digest())
        finally:
            back.close()
        src = Checksum(algorithm=ALGORITHM, digest=ledger.chain.hex(), bytes=total)
        dst = Checksum(algorithm=ALGORITHM, digest=back_chain.hex(), bytes=total)
        if whole is not None and src.digest == dst.digest:
            # Both disks are read at once: the cutover's downtime waits for this.
            with ThreadPoolExecutor(2) as pool:
                source_sum = pool.submit(engine.digest, whole, options)
                target_sum = pool.submit(engine.digest, holes.Sized(target, size), options)
                src, dst = source_sum.result(), target_sum.result()
    finally:
        target.close()
    ledger.remove()  # done, or wrong: either way a next attempt starts the round afresh
    if src.digest != dst.digest:
        raise errors.ChecksumMismatchError(
            f"the target reads back as {dst.digest[:16]}…, the source as {src.digest[:16]}…"
        )
    written = total - resumed_at
    return Result(total, written, src, dst, time.monotonic() - started, resumed_at)
