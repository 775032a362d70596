"""Small files that survive a crash whole or not at all.

Every piece of state the local platform and the copy keep on disk (volume
records, checkpoints) is written here: to a temporary file in the same
directory, fsync'd, renamed over the old one, and the directory fsync'd, so a
``kill -9`` or a power cut leaves either the old content or the new.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically and durably.

    On failure (a full disk, say) ``path`` keeps its old content and the
    temporary file is removed, so a failed write leaves nothing behind.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def create_exclusive(path: Path, data: bytes) -> bool:
    """Create ``path`` with ``data`` unless it exists; True when this call created it.

    The content is complete before the name appears (written under a temporary
    name, then hard-linked), so a reader never sees a half-written file.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.new")
    write_atomic(tmp, data)
    try:
        os.link(tmp, path)
    except FileExistsError:
        return False
    finally:
        os.unlink(tmp)
    fsync_dir(path.parent)
    return True


def remove(path: Path) -> bool:
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    fsync_dir(path.parent)
    return True
