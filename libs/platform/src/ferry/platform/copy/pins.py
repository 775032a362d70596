"""Opening a source file only if it is still the file the provider checked.

A provider checks its files by name (an OVA folder's disk: a regular file with
one link, on the same filesystem, inside the import folder) and records what it
saw in :class:`~ferry.providers.base.FilePin` (device and inode). The copy runs
later, in its own workload, and would open the same names again: whatever sits
under a name by then (a hard link or symlink to a file outside the area, a file
renamed over it) is what it would read. So every pinned file is opened here once,
without following a symlink, checked on the open descriptor, and read through
that descriptor only: with ``pread`` for a raw file, or handed to qemu as
``/dev/fd/N`` (``pass_fds``) through a private directory of links named as the
package names its files, so a VMDK descriptor's extents resolve to their own
pinned links and nowhere else.
"""

from __future__ import annotations

import copy
import os
import shutil
import stat
import tempfile
from pathlib import Path, PurePosixPath
from typing import Any

from ferry.platform import errors
from ferry.providers.base import FilePin

__all__ = ["PinnedTree", "check_extents", "open_pinned", "pin_for"]


def pin_for(pins: tuple[FilePin, ...], path: str) -> FilePin:
    """The pin of ``path``; a file the provider did not check is never opened."""
    for pin in pins:
        if pin.path == path:
            return pin
    raise errors.InvalidSourceError(
        f"the source disk reads {path}, a file its provider did not check; nothing was copied"
    )


def open_pinned(pin: FilePin) -> int:
    """A read-only descriptor of ``pin.path``, refused unless it is the file checked."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY
    try:
        fd = os.open(pin.path, flags)
    except FileNotFoundError:
        raise errors.SourceGoneError(
            f"the source disk file {pin.name} ({pin.path}) no longer exists"
        ) from None
    except OSError as exc:
        if exc.errno == 40:  # ELOOP: the name is now a symlink
            _refuse(pin, "it is now a symbolic link")
        raise errors.on_read(exc, pin.path) from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            _refuse(pin, "it is no longer a regular file")
        if (info.st_dev, info.st_ino) != (pin.device, pin.inode):
            _refuse(
                pin,
                f"it is another file now (device {info.st_dev} inode {info.st_ino}, "
                f"checked: device {pin.device} inode {pin.inode})",
            )
        if info.st_nlink != 1:
            _refuse(pin, f"it now has {info.st_nlink} names (a hard link)")
    except BaseException:
        os.close(fd)
        raise
    return fd


def _refuse(pin: FilePin, what: str) -> None:
    raise errors.InvalidSourceError(
        f"the source disk file {pin.name} ({pin.path}) changed after its provider checked it: "
        f"{what}; nothing was copied"
    )


class PinnedTree:
    """A qemu option tree whose files are descriptors opened and checked now.

    ``options`` names only links in a private directory, each pointing at
    ``/dev/fd/N`` of ``fds``; a qemu child started with ``pass_fds=fds`` reads
    exactly the files checked. :meth:`close` closes them and removes the links.
    """

    def __init__(self, options: dict[str, Any], pins: tuple[FilePin, ...]) -> None:
        self.fds: tuple[int, ...] = ()
        self._dir = Path(tempfile.mkdtemp(prefix="ferry-pin-"))
        self.links: frozenset[str] = frozenset()
        try:
            renamed: dict[str, str] = {}
            fds: list[int] = []
            for path in sorted(_filenames(options)):
                pin = pin_for(pins, path)
                fd = open_pinned(pin)
                fds.append(fd)
                self.fds = tuple(fds)
                renamed[path] = str(self._link(pin, fd))
            # Files qemu opens by itself (a VMDK descriptor's extents) get links too.
            for pin in pins:
                if pin.path not in renamed:
                    fd = open_pinned(pin)
                    fds.append(fd)
                    self.fds = tuple(fds)
                    renamed[pin.path] = str(self._link(pin, fd))
            self.links = frozenset(renamed.values())
            self.options = _renamed(copy.deepcopy(options), renamed)
        except BaseException:
            self.close()
            raise

    def _link(self, pin: FilePin, fd: int) -> Path:
        name = PurePosixPath(pin.name)
        if name.is_absolute() or ".." in name.parts or not name.parts:
            raise errors.InvalidSourceError(f"unsafe name {pin.name!r} for a source file")
        link = self._dir / name
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(f"/dev/fd/{fd}", link)
        return link

    def close(self) -> None:
        fds, self.fds = self.fds, ()
        for fd in fds:
            os.close(fd)
        shutil.rmtree(self._dir, ignore_errors=True)


def check_extents(info: dict[str, Any], links: frozenset[str]) -> None:
    """Every file qemu-img info says the image reads is one of the pinned links."""
    data = info.get("format-specific", {}).get("data", {})
    for extent in data.get("extents", []) or []:
        name = str(extent.get("filename", ""))
        if name.startswith("json:"):
            continue  # a window of a pinned file, named by the tree itself
        if name not in links:
            raise errors.InvalidSourceError(
                f"the source disk reads {name}, a file its provider did not check"
            )


def _filenames(node: Any) -> set[str]:
    found: set[str] = set()
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "filename" and isinstance(value, str):
                found.add(value)
            else:
                found |= _filenames(value)
    return found


def _renamed(node: Any, renamed: dict[str, str]) -> Any:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "filename" and isinstance(value, str):
                node[key] = renamed[value]
            else:
                node[key] = _renamed(value, renamed)
    return node
