"""An OVF package as a set of named byte ranges: a tar archive (.ova) or a folder.

Reading a disk never needs the archive unpacked: tar members are contiguous, so a
member is just ``(file, offset, size)``. Both package kinds answer the same
question, "where are the bytes of this file name", and refuse any name that could
lead outside the import area: ``..``, absolute paths, links, devices, FIFOs,
duplicates, truncated members.

In an unpacked folder a file is used only when it is a regular file with one link,
on the folder's filesystem, and inside the folder after every path component is
resolved: a hard link or a bind mount looks like a plain file by name, yet its
bytes belong to someone else. The identity checked here (device and inode) is
checked again on the open descriptor before any byte is read, so a file swapped
in between is refused too. From an archive nothing is ever extracted by name.
"""

from __future__ import annotations

import os
import stat
import tarfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ferry.providers.ova import errors
from ferry.providers.ova.limits import DEFAULT, Limits

BLOCK = 512


@dataclass(frozen=True)
class Location:
    """The bytes of one package file: ``size`` bytes of ``path`` from ``offset``."""

    name: str
    path: Path
    offset: int
    size: int
    identity: tuple[int, int] | None = None  # (st_dev, st_ino) the bytes must come from


def safe_name(origin: Path, name: str) -> str:
    """``name`` as a clean relative POSIX path, or :class:`UnsafeMemberError`."""
    if not name or "\x00" in name or "\\" in name:
        raise errors.UnsafeMemberError(origin, f"unsafe file name {name!r}")
    pure = PurePosixPath(name)
    if pure.is_absolute():
        raise errors.UnsafeMemberError(origin, f"absolute path {name!r}")
    parts = [p for p in pure.parts if p != "."]
    if not parts or ".." in parts or ":" in parts[0]:
        raise errors.UnsafeMemberError(origin, f"path {name!r} leaves the package")
    return "/".join(parts)


class Package:
    """Common face of an OVA archive and an OVF folder."""

    source: Path  # the .ova file, or the .ovf descriptor of a folder
    descriptor: str  # name of the .ovf inside the package
    limits: Limits = DEFAULT

    def locate(self, name: str) -> Location:
        raise NotImplementedError

    def names(self) -> list[str]:
        raise NotImplementedError

    def read_small(self, name: str) -> bytes:
        """A descriptor or manifest, bounded so a huge member cannot exhaust memory."""
        where = self.locate(name)
        if where.size > self.limits.max_descriptor_bytes:
            raise errors.ImageSizeError(
                self.source,
                f"{name} is {where.size} bytes, more than {self.limits.max_descriptor_bytes} "
                "(setting max_descriptor_bytes)",
            )
        return read_location(where)

    def manifest_name(self) -> str | None:
        stem = PurePosixPath(self.descriptor).with_suffix(".mf").as_posix()
        return stem if stem in self.names() else None


class Archive(Package):
    """A ``.ova``: an uncompressed tar, indexed once, members checked as they come."""

    def __init__(self, path: Path, limits: Limits = DEFAULT) -> None:
        self.source = path
        self.limits = limits
        self.members = index_tar(path, limits)
        ovfs = [n for n in self.members if n.lower().endswith(".ovf") and "/" not in n]
        if len(ovfs) != 1:
            raise errors.OvfFormatError(path, f"expected one .ovf descriptor, found {len(ovfs)}")
        self.descriptor = ovfs[0]

    def locate(self, name: str) -> Location:
        clean = safe_name(self.source, name)
        try:
            return self.members[clean]
        except KeyError:
            raise errors.MissingFileError(self.source, f"no member {name!r}") from None

    def names(self) -> list[str]:
        return list(self.members)


class Folder(Package):
    """An unpacked OVF: the descriptor's folder is the import area."""

    def __init__(self, descriptor: Path, limits: Limits = DEFAULT) -> None:
        self.source = descriptor
        self.limits = limits
        self.root = descriptor.parent
        self.descriptor = descriptor.name
        self.locate(self.descriptor)

    def locate(self, name: str) -> Location:
        clean = safe_name(self.source, name)
        path = self.root / clean
        root_info = self.root.lstat()
        # Every component is checked with lstat so a symlinked directory cannot
        # redirect a clean-looking name out of the folder.
        current = self.root
        for part in clean.split("/"):
            current = current / part
            try:
                info = current.lstat()
            except FileNotFoundError:
                raise errors.MissingFileError(self.source, f"no file {name!r}") from None
            if stat.S_ISLNK(info.st_mode):
                raise errors.UnsafeMemberTypeError(self.source, f"{name!r} is a symlink")
            if info.st_dev != root_info.st_dev:
                raise errors.UnsafeMemberTypeError(
                    self.source, f"{name!r} lies on another filesystem than its folder"
                )
        if not stat.S_ISREG(info.st_mode):
            raise errors.UnsafeMemberTypeError(self.source, f"{name!r} is not a regular file")
        if info.st_nlink != 1:
            raise errors.UnsafeMemberTypeError(
                self.source,
                f"{name!r} is a hard link ({info.st_nlink} names for one file); "
                "copy the file into the folder",
            )
        resolved, root = os.path.realpath(path), os.path.realpath(self.root)
        if os.path.commonpath([resolved, root]) != root:
            raise errors.UnsafeMemberError(self.source, f"{name!r} resolves outside the folder")
        return Location(clean, path, 0, info.st_size, (info.st_dev, info.st_ino))

    def names(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir())


def read_range(path: Path, offset: int, size: int) -> bytes:
    """Exactly ``size`` bytes at ``offset``, or :class:`TruncatedArchiveError`."""
    return read_location(Location(path.name, path, offset, size))


def open_checked(location: Location) -> int:
    """A read-only descriptor of ``location``'s file, refused unless it is the file checked.

    The name was checked by :meth:`Folder.locate` or :func:`index_tar`; this checks
    the opened file itself (a regular file with one link, and the same device and
    inode as when it was checked) so that nothing swapped in meanwhile is read.
    """
    fd = os.open(location.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        info = os.fstat(fd)
        problem = ""
        if not stat.S_ISREG(info.st_mode):
            problem = "is not a regular file"
        elif info.st_nlink != 1:
            problem = f"is a hard link ({info.st_nlink} names for one file)"
        elif location.identity is not None and location.identity != (info.st_dev, info.st_ino):
            problem = "was replaced after it was checked"
        if problem:
            raise errors.UnsafeMemberTypeError(location.path, problem)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_at(location: Location, offset: int, size: int) -> bytes:
    """``size`` bytes from ``offset`` within ``location``, through the same checks."""
    return read_location(
        Location(location.name, location.path, location.offset + offset, size, location.identity)
    )


def read_location(location: Location) -> bytes:
    """All ``location.size`` bytes of a checked location, or :class:`TruncatedArchiveError`."""
    fd = open_checked(location)
    try:
        data = os.pread(fd, location.size, location.offset)
    finally:
        os.close(fd)
    if len(data) != location.size:
        raise errors.TruncatedArchiveError(
            location.path, f"wanted {location.size} bytes at {location.offset}, file ends"
        )
    return data


def index_tar(path: Path, limits: Limits = DEFAULT) -> dict[str, Location]:
    """Every regular member of the tar at ``path``, checked; nothing is extracted."""
    info = path.lstat()
    if not stat.S_ISREG(info.st_mode):
        raise errors.UnsafeMemberTypeError(path, "the OVA is not a regular file")
    if info.st_nlink != 1:
        raise errors.UnsafeMemberTypeError(
            path, f"the OVA is a hard link ({info.st_nlink} names for one file); copy it instead"
        )
    file_size = info.st_size
    if read_range(path, 0, min(2, file_size)) == b"\x1f\x8b":
        raise errors.ArchiveFormatError(
            path, "gzip-compressed; an OVA is an uncompressed tar: gunzip it into the directory"
        )
    members: dict[str, Location] = {}
    try:
        with tarfile.open(path, mode="r:") as tar:
            count = 0
            while (member := tar.next()) is not None:
                count += 1
                if count > limits.max_members:
                    raise errors.TooManyMembersError(
                        path, f"more than {limits.max_members} members (setting max_members)"
                    )
                if len(member.name) > limits.max_name_length:
                    raise errors.UnsafeMemberError(
                        path,
                        f"a member name is longer than {limits.max_name_length} characters "
                        "(setting max_name_length)",
                    )
                location = _checked_member(path, member, file_size, (info.st_dev, info.st_ino))
                if location is None:
                    continue
                if location.name in members:
                    raise errors.DuplicateMemberError(path, f"member {location.name!r} twice")
                members[location.name] = location
            end = tar.offset
    except tarfile.ReadError as exc:
        raise errors.ArchiveFormatError(path, f"not a readable tar archive: {exc}") from None
    except (tarfile.HeaderError, ValueError, OverflowError) as exc:
        raise errors.ArchiveFormatError(path, f"bad tar header: {exc}") from None
    _check_end_marker(path, end, file_size)
    return members


def _checked_member(
    path: Path, member: tarfile.TarInfo, file_size: int, identity: tuple[int, int]
) -> Location | None:
    name = safe_name(path, member.name)
    if member.isdir():
        return None
    if member.issym() or member.islnk():
        raise errors.UnsafeMemberTypeError(path, f"member {name!r} is a link")
    if not member.isreg() or member.issparse():
        raise errors.UnsafeMemberTypeError(path, f"member {name!r} is not a regular file")
    if member.size < 0:
        raise errors.ImageSizeError(path, f"member {name!r} has negative size")
    if member.offset_data + member.size > file_size:
        raise errors.TruncatedArchiveError(
            path,
            f"member {name!r} ({member.size} bytes at offset {member.offset_data}) "
            f"runs past the end of the file ({file_size} bytes)",
        )
    return Location(name, path, member.offset_data, member.size, identity)


def _check_end_marker(path: Path, end: int, file_size: int) -> None:
    """A tar ends with a zero block; without it the archive was cut or corrupted.

    ``tarfile`` stops silently at a damaged header after the first member, so this
    is where a truncated or garbled tail shows.
    """
    tail = read_range(path, end, min(BLOCK, max(file_size - end, 0)))
    if len(tail) < BLOCK or any(tail):
        raise errors.TruncatedArchiveError(path, f"no end-of-archive marker at offset {end}")
