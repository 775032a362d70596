"""virt-v2v's failures said in the user's words, with virt-v2v's own line kept.

A conversion that cannot work (no operating system on the disks, no disk at all,
an unsupported guest) fails deep inside libguestfs, and its last line names an
API call sequence (``you must call guestfs_add_drive before guestfs_launch``)
rather than the problem. The known cases are recognised here by virt-v2v's
stable message texts; the reason becomes what a user can act on and virt-v2v's
line leads the supporting detail, so nothing is lost for the log reader.

Not every failure is the guest's fault. A run killed by a signal (the kernel's
out-of-memory killer), an appliance that could not start or died, a full or
unavailable work disk, a source that stopped answering: the same command may well
succeed later, so :func:`transient` says so and the service retries it (with the
router's backoff, up to its delivery limit) instead of failing the VM at once.
Everything not known to be transient stays permanent: retrying a guest that
cannot be converted only wastes the time of every other VM waiting.
"""

from __future__ import annotations

from collections.abc import Sequence

# (text virt-v2v or libguestfs prints, the reason a user can act on); first match wins.
_KNOWN: tuple[tuple[str, str], ...] = (
    (
        "guestfs_add_drive before guestfs_launch",
        "virt-v2v found no disk to convert in the source VM",
    ),
    ("this guest has no non-removable disks", "virt-v2v found no disk to convert in the source VM"),
    (
        "inspection could not detect the source guest",
        "no operating system was found on the source disks; an empty or data-only disk "
        "cannot be converted",
    ),
    (
        "no root device found",
        "no operating system was found on the source disks; an empty or data-only disk "
        "cannot be converted",
    ),
    (
        "multi-boot operating systems are not supported",
        "the source disks hold more than one operating system; virt-v2v converts a guest "
        "with exactly one",
    ),
    (
        "is not supported",
        "the guest operating system cannot be converted by virt-v2v",
    ),
)


RETRY_SECONDS = 30.0
"""Pause before a transient failure's run is tried again."""

# Texts of failures of the machine, not of the guest; the same run may succeed later.
_TRANSIENT: tuple[str, ...] = (
    # the libguestfs appliance could not start, or died under the conversion
    "child process died unexpectedly",
    "guestfs_launch failed",
    "could not create appliance through libvirt",
    "failed to connect to the hypervisor",
    "cannot allocate memory",
    "out of memory",
    "no space left on device",
    "resource temporarily unavailable",
    "disk quota exceeded",
    # the source (or the NBD server serving it) stopped answering
    "connection refused",
    "connection reset by peer",
    "connection timed out",
    "broken pipe",
    "nbd: server disconnected",
    "unexpected end of file",
    "input/output error",
)


def transient(status: int, reason: str, detail: Sequence[str]) -> bool:
    """Whether a failed run (exit ``status``; negative: killed by that signal) may
    succeed if run again. A known guest problem (see :func:`in_user_words`) never is."""
    text = " ".join([reason, *detail]).lower()
    if any(needle in text for needle, _ in _KNOWN):
        return False
    if status < 0:  # killed by a signal it did not choose: OOM killer, an admin
        return True
    return any(needle in text for needle in _TRANSIENT)


def in_user_words(reason: str, detail: Sequence[str]) -> tuple[str, list[str]]:
    """The reason to show, and the detail lines with virt-v2v's own reason first."""
    text = " ".join([reason, *detail]).lower()
    for needle, words in _KNOWN:
        if needle in text:
            # As many lines as before: virt-v2v's own reason leads, the oldest goes.
            return words, [reason, *detail][: max(len(detail), 1)]
    return reason, list(detail)
