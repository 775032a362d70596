"""qemu-img and qemu-nbd on untrusted images: files pinned by descriptor, resources bounded.

The files of a package were checked by name (:meth:`Folder.locate`), but a qemu
tool given that name would open it again later, and whatever sits under the name
then (a hard link to another file, a file swapped in by rename) is what it reads.
So every file an image reads is opened here once, checked on the open descriptor
(:func:`package.open_checked`: a regular file with one link, the device and inode
that were checked), and handed to the child with ``pass_fds``. The child finds it
through a private directory of symlinks, one per package file under the name the
package gives it, each pointing at ``/dev/fd/N``: qemu opens ``/dev/fd/N`` in its
own process, which is the descriptor it inherited, and a VMDK descriptor's
extents, resolved relative to the descriptor, land on their own pinned links.

qemu parses hostile headers, so ``qemu-img`` runs with a CPU-time and an
address-space limit (``setrlimit`` in the child before it executes) and a wall
clock time-out; ``qemu-nbd``, whose CPU time grows with the disk it serves, gets
the address-space limit only. Both limits are provider settings
(:class:`~ferry.providers.ova.limits.Limits`).
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import resource
import shutil
import signal
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from ferry.providers import lifetime
from ferry.providers.base import QemuSource
from ferry.providers.ova import errors
from ferry.providers.ova.limits import DEFAULT, Limits
from ferry.providers.ova.package import Location, open_checked

QEMU_IMG_TIMEOUT = 60.0
MiB = 1024 * 1024


@dataclass(frozen=True)
class Pinned:
    """A qemu description whose files are the pinned descriptors ``fds``."""

    source: QemuSource
    fds: tuple[int, ...]
    links: frozenset[str]  # the private names qemu may open, and nothing else

    def args(self) -> list[str]:
        return self.source.qemu_img_args()


@contextmanager
def pinned(source: QemuSource, files: Iterable[Location]) -> Iterator[Pinned]:
    """``source`` rewritten to read ``files`` through descriptors checked now.

    The descriptors and the private directory live until the block ends; a child
    started inside it with ``pass_fds=pinned.fds`` reads exactly the files checked.
    """
    directory = Path(tempfile.mkdtemp(prefix="ferry-pin-"))
    fds: list[int] = []
    renamed: dict[str, str] = {}
    try:
        for location in files:
            original = str(location.path)
            if original in renamed:
                continue
            fd = open_checked(location)
            fds.append(fd)
            link = directory / link_name(location)
            link.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(f"/dev/fd/{fd}", link)
            renamed[original] = str(link)
        options = _renamed(copy.deepcopy(source.options), renamed)
        yield Pinned(
            QemuSource(format=source.format, options=options),
            tuple(fds),
            frozenset(renamed.values()),
        )
    finally:
        for fd in fds:
            os.close(fd)
        shutil.rmtree(directory, ignore_errors=True)


def link_name(location: Location) -> str:
    """The package's own name for a folder file (so extents resolve beside their
    descriptor); an archive's file name for an archive, whose members are windows."""
    if location.offset == 0 and str(location.path).endswith(location.name):
        return location.name
    return PurePosixPath(location.path.name).name


def _renamed(node: Any, renamed: dict[str, str]) -> Any:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "filename" and isinstance(value, str):
                if value not in renamed:
                    raise errors.UnsafeImageError(value, "a qemu file node that was not checked")
                node[key] = renamed[value]
            else:
                node[key] = _renamed(value, renamed)
    return node


def bounded(limits: Limits, *, cpu: bool) -> Callable[[], None]:
    """A ``preexec_fn`` setting the child's address-space (and CPU-time) limits."""
    space = limits.qemu_address_space_mib * MiB
    seconds = limits.qemu_cpu_seconds

    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (space, space))
        if cpu:
            # The soft limit sends SIGXCPU, the hard one a second later SIGKILL.
            resource.setrlimit(resource.RLIMIT_CPU, (seconds, seconds + 1))

    return apply


async def qemu_img(
    where: str, args: list[str], pins: Pinned | None = None, limits: Limits = DEFAULT
) -> tuple[int, bytes, bytes]:
    """Run ``qemu-img`` bounded; a limit it hits is a :class:`DiskFormatError`."""
    process = await asyncio.create_subprocess_exec(
        "qemu-img",
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        pass_fds=pins.fds if pins is not None else (),
        # setrlimit only: no lock is taken between fork and exec.
        preexec_fn=lifetime.chained(lifetime.die_with_parent(), bounded(limits, cpu=True)),
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), QEMU_IMG_TIMEOUT)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise errors.DiskFormatError(where, f"qemu-img {args[0]} timed out") from None
    code = process.returncode or 0
    if code < 0 and -code in (signal.SIGXCPU, signal.SIGKILL):
        raise errors.DiskFormatError(
            where,
            f"qemu-img {args[0]} used more than {limits.qemu_cpu_seconds} s of CPU time "
            "(setting qemu_cpu_seconds); the image is hostile or damaged",
        )
    if code < 0 or (code != 0 and any(m in err for m in _OUT_OF_MEMORY)):
        raise errors.DiskFormatError(
            where,
            f"qemu-img {args[0]} ran out of its {limits.qemu_address_space_mib} MiB address "
            "space (setting qemu_address_space_mib) or crashed; the image is hostile or damaged",
        )
    return code, out, err


# What qemu and the loader print when the address-space limit refuses them memory.
_OUT_OF_MEMORY = (b"annot allocate memory", b"Resource temporarily unavailable", b"failed to map")


async def qemu_img_json(
    where: str, args: list[str], pins: Pinned | None = None, limits: Limits = DEFAULT
) -> Any:
    """Run ``qemu-img`` (the caller names the format) and decode its JSON output."""
    code, out, err = await qemu_img(where, args, pins, limits)
    if code != 0:
        message = err.decode(errors="replace").strip().splitlines()
        detail = message[-1] if message else f"exit {code}"
        raise errors.DiskFormatError(where, f"qemu-img {args[0]} failed: {detail[-300:]}")
    try:
        return json.loads(out)
    except ValueError:
        raise errors.DiskFormatError(where, f"qemu-img {args[0]} printed no JSON") from None
