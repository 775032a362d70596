"""The files a conversion reads, copied where only Ferry can write and checked there.

virt-v2v opens its disks by name, minutes after Ferry checked them. A file in the
import area can be rewritten in that time by whoever owns it (it came from
outside), so checking its manifest digest there and letting virt-v2v read it
later leaves a window. Instead each file the conversion reads is copied once, from
the descriptor checked for it (:func:`package.open_checked`), into the run's
private work directory (mode 0700, Ferry's alone); its digest is computed over the
very bytes written into the copy and compared with the manifest, and virt-v2v is
given the copy. Nothing can change between the check and the read: the bytes
checked are the bytes read.

Runs of zeros are skipped, not written, so a sparse raw disk stays sparse. The
copy costs the disk's size in the work directory for the length of the run
(``FERRY_CONVERSION__WORK_DIR``).

The copy is where a conversion reads the OVA's bytes from where they are kept (a
share), so it is what the VM's bandwidth budgets pace: given a ``pace``, every chunk
waits for its grant before it is read (:func:`blocking`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import os
import threading
from collections.abc import Callable
from pathlib import Path

from ferry.providers.base import Pace, ProviderError
from ferry.providers.ova import errors
from ferry.providers.ova.manifest import CHUNK, Entry
from ferry.providers.ova.package import Location, Package, open_checked, safe_name

BLOCK = 64 * 1024  # zeros this long (aligned) become a hole in the copy
_ZEROS = bytes(BLOCK)
Throttle = Callable[[int], None]  # blocks until this many more bytes may be read
WAKE_SECONDS = 0.5  # how often a copy waiting for its grant looks whether it was stopped


def blocking(pace: Pace, loop: asyncio.AbstractEventLoop, stopped: threading.Event) -> Throttle:
    """``pace`` (a coroutine on ``loop``) for the copy's thread: it waits for each grant,
    and gives up with an error once ``stopped`` is set (the conversion was canceled)."""

    async def ask(nbytes: int) -> None:
        await pace(nbytes)

    def throttle(nbytes: int) -> None:
        granted = asyncio.run_coroutine_threadsafe(ask(nbytes), loop)
        while True:
            try:
                granted.result(timeout=WAKE_SECONDS)
                return
            except concurrent.futures.TimeoutError:
                if stopped.is_set():
                    granted.cancel()
                    stop = "the copy was stopped while it waited for bandwidth"
                    raise ProviderError(stop) from None

    return throttle


class Staged(Package):
    """``package`` whose files are private copies under ``directory``, made on demand."""

    def __init__(self, package: Package, directory: Path, entries: dict[str, Entry]) -> None:
        self.origin = package
        self.source = package.source
        self.descriptor = package.descriptor
        self.limits = package.limits
        self.directory = directory
        self.entries = entries
        self._copies: dict[str, Location] = {}
        self.stopped = threading.Event()  # set on cancel: a copy in a thread stops
        self.throttle: Throttle | None = None  # the copies' grants (:func:`blocking`)
        directory.mkdir(mode=0o700, exist_ok=True)

    def names(self) -> list[str]:
        return self.origin.names()

    def locate(self, name: str) -> Location:
        clean = safe_name(self.source, name)
        done = self._copies.get(clean)
        if done is not None:
            return done
        original = self.origin.locate(clean)
        target = self.directory / clean
        target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        entry = self.entries.get(clean)
        algorithm = entry.algorithm if entry else "sha256"
        digest = copy(original, target, algorithm, self.stopped, self.throttle)
        if entry is not None and digest != entry.digest:
            target.unlink()
            raise errors.ManifestMismatchError(
                self.source,
                f"{clean}: {entry.algorithm} is {digest}, manifest says {entry.digest}",
            )
        info = target.stat()
        copied = Location(clean, target, 0, original.size, (info.st_dev, info.st_ino))
        self._copies[clean] = copied
        return copied


def copy(
    location: Location,
    target: Path,
    algorithm: str,
    stopped: threading.Event | None = None,
    throttle: Throttle | None = None,
) -> str:
    """Copy ``location``'s bytes to a new file ``target``; the digest of what was written.

    ``stopped``, once set, ends the copy at the next chunk with an error; ``throttle``
    is asked for each chunk's bytes before the chunk is read.
    """
    hasher = hashlib.new(algorithm)
    source = open_checked(location)
    try:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        out = os.open(target, flags, 0o600)
        try:
            done = 0
            while done < location.size:
                if stopped is not None and stopped.is_set():
                    raise errors.OvaError(location.path, f"copy of {location.name} was stopped")
                want = min(CHUNK, location.size - done)
                if throttle is not None:
                    throttle(want)
                chunk = os.pread(source, want, location.offset + done)
                if not chunk:
                    raise errors.TruncatedArchiveError(
                        location.path, f"{location.name} is cut short at byte {done}"
                    )
                hasher.update(chunk)
                _write_sparse(out, memoryview(chunk))
                done += len(chunk)
            os.ftruncate(out, location.size)
        finally:
            os.close(out)
    finally:
        os.close(source)
    return hasher.hexdigest()


def _write_sparse(fd: int, data: memoryview) -> None:
    """Write ``data`` at the file position, seeking over whole blocks of zeros."""
    for start in range(0, len(data), BLOCK):
        block = data[start : start + BLOCK]
        if block == _ZEROS[: len(block)]:
            os.lseek(fd, len(block), os.SEEK_CUR)
            continue
        while block:
            block = block[os.write(fd, block) :]
