"""Why a disk transfer failed, as types a service can turn into a precise reason.

These belong to the platform's interface, not to one implementation: the local
copy engine raises them in its workload processes, and a cluster's importer or
populator pod reports the same codes, so the volume-service judges a failure
the same way on every platform without importing either. Every error carries
``reason``: one short, user-facing sentence. ``permanent`` says whether retrying
the same copy can help (a full disk will not empty itself; a dropped connection
may come back).
"""

from __future__ import annotations

import errno

__all__ = [
    "ERRORS",
    "ChecksumMismatchError",
    "CopyError",
    "InvalidSourceError",
    "NoSpaceError",
    "SourceGoneError",
    "SourceIOError",
    "TargetIOError",
    "WorkloadCrashed",
    "from_code",
    "on_read",
    "on_write",
]


class CopyError(Exception):
    """A disk copy failed; ``reason`` is what the user reads."""

    code = "copy_failed"
    permanent = True

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class NoSpaceError(CopyError):
    """The target ran out of space (ENOSPC, EDQUOT) or hit a file size limit (EFBIG)."""

    code = "no_space"


class SourceIOError(CopyError):
    """Reading the source failed with an I/O error (EIO and friends)."""

    code = "source_io"
    permanent = False


class TargetIOError(CopyError):
    """Writing or flushing the target failed with an I/O error."""

    code = "target_io"
    permanent = False


class SourceGoneError(CopyError):
    """The source disappeared or shrank while it was being read."""

    code = "source_gone"


class ChecksumMismatchError(CopyError):
    """The data read back from the target does not hash to what was read from the source."""

    code = "checksum_mismatch"


class InvalidSourceError(CopyError):
    """The source cannot be copied as described (unknown format, bad size…)."""

    code = "invalid_source"


class WorkloadCrashed(CopyError):
    """The transfer's workload (a child process, a pod) ended without a result: killed,
    out of memory. Worth retrying: the next attempt resumes from the checkpoint."""

    code = "workload_crashed"
    permanent = False


_NO_SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_GONE = {errno.ENOENT, errno.ESTALE, errno.ENXIO, errno.ENODEV, errno.EPIPE, errno.ECONNRESET}

ERRORS: dict[str, type[CopyError]] = {
    cls.code: cls
    for cls in (
        CopyError,
        NoSpaceError,
        SourceIOError,
        TargetIOError,
        SourceGoneError,
        ChecksumMismatchError,
        InvalidSourceError,
        WorkloadCrashed,
    )
}


def from_code(code: str, reason: str) -> CopyError:
    """Rebuild an error reported by a workload process."""
    return ERRORS.get(code, CopyError)(reason)


def on_write(exc: OSError, where: str) -> CopyError:
    """Classify a failed write or flush of the target."""
    name = errno.errorcode.get(exc.errno or 0, "error")
    if exc.errno in _NO_SPACE:
        detail = "file size limit reached" if exc.errno == errno.EFBIG else "no space left"
        return NoSpaceError(f"{detail} on the target volume ({name}) writing {where}")
    return TargetIOError(f"I/O error on the target volume ({name}: {exc.strerror}) at {where}")


def on_read(exc: OSError, where: str) -> CopyError:
    """Classify a failed read of the source."""
    name = errno.errorcode.get(exc.errno or 0, "error")
    if exc.errno in _GONE:
        return SourceGoneError(f"the source disk disappeared ({name}) while reading {where}")
    return SourceIOError(f"I/O error reading the source ({name}: {exc.strerror}) at {where}")
