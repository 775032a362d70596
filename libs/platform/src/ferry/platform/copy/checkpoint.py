"""The durable progress of one copy, so that a killed workload resumes.

Two files beside the target: ``copy.json`` (atomically replaced) says how many
leading chunks are done, and ``copy.leaves`` holds the 32-byte leaf of each done
chunk at ``index * 32``. A checkpoint is committed only after the target's data
and the leaves are fsync'd, so whatever it claims is on disk. It also records
the source's identity: a checkpoint from another source (or one that changed
since) is discarded and the copy starts over.

The checkpoint lives on the target's volume, so its writes fail like the
target's own (a full volume is as likely to refuse a leaf or ``copy.json`` as a
data block): they raise the same ``CopyError``s, never a bare ``OSError``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import msgspec

from ferry.platform import durable, errors
from ferry.platform.copy import checksum


class State(msgspec.Struct, frozen=True, kw_only=True):
    version: int = 1
    identity: str
    size: int
    target_format: str
    algorithm: str = checksum.ALGORITHM
    chunk: int = checksum.CHUNK
    block: int = checksum.BLOCK
    watermark: int = 0  # chunks [0, watermark) are durable and their leaves stored
    bytes_written: int = 0


@contextlib.contextmanager
def _as_target_error(where: str) -> Iterator[None]:
    """An OSError inside becomes the CopyError a data write would raise (ENOSPC, EIO…)."""
    try:
        yield
    except OSError as exc:
        raise errors.on_write(exc, where) from exc


class Checkpoint:
    def __init__(self, directory: Path) -> None:
        with _as_target_error(f"the copy's checkpoint directory {directory}"):
            directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.state_path = directory / "copy.json"
        self.leaves_path = directory / "copy.leaves"
        self._fd = -1

    def load(self, identity: str, size: int, target_format: str) -> tuple[State, bool]:
        """The state to continue from, and whether an earlier attempt left one."""
        fresh = State(identity=identity, size=size, target_format=target_format)
        try:
            found = msgspec.json.decode(self.state_path.read_bytes(), type=State)
        except (FileNotFoundError, msgspec.DecodeError, msgspec.ValidationError):
            existed = self.state_path.exists()
            self._open(truncate=True)
            return fresh, existed
        if (found.identity, found.size, found.target_format) != (identity, size, target_format) or (
            found.algorithm,
            found.chunk,
            found.block,
        ) != (fresh.algorithm, fresh.chunk, fresh.block):
            self._open(truncate=True)
            return fresh, True
        self._open(truncate=False)
        return found, True

    def _open(self, *, truncate: bool) -> None:
        flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | (os.O_TRUNC if truncate else 0)
        with _as_target_error(f"the copy's checkpoint {self.leaves_path}"):
            self._fd = os.open(self.leaves_path, flags, 0o600)

    def put_leaf(self, index: int, leaf: bytes) -> None:
        with _as_target_error(f"the copy's checkpoint {self.leaves_path}"):
            os.pwrite(self._fd, leaf, index * checksum.LEAF)

    def commit(self, state: State) -> None:
        with _as_target_error(f"the copy's checkpoint {self.state_path}"):
            os.fsync(self._fd)
            durable.write_atomic(self.state_path, msgspec.json.encode(state))

    def leaves(self, count: int) -> Iterator[bytes]:
        step = 4096
        for first in range(0, count, step):
            n = min(step, count - first)
            data = os.pread(self._fd, n * checksum.LEAF, first * checksum.LEAF)
            if len(data) != n * checksum.LEAF:
                raise OSError("checkpoint leaves file is short")
            for i in range(n):
                yield data[i * checksum.LEAF : (i + 1) * checksum.LEAF]

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def remove(self) -> None:
        self.close()
        for path in (self.state_path, self.leaves_path):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
