"""virt-v2v's failures said in the user's words, with virt-v2v's own line kept.

A conversion that cannot work (no operating system on the disks, no disk at all,
an unsupported guest) fails deep inside libguestfs, and its last line names an
API call sequence (``you must call guestfs_add_drive before guestfs_launch``)
rather than the problem. The known cases are recognised here by virt-v2v's
stable message texts; the reason becomes what a user can act on and virt-v2v's
line leads the supporting detail, so nothing is lost for the log reader.
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


def in_user_words(reason: str, detail: Sequence[str]) -> tuple[str, list[str]]:
    """The reason to show, and the detail lines with virt-v2v's own reason first."""
    text = " ".join([reason, *detail]).lower()
    for needle, words in _KNOWN:
        if needle in text:
            # As many lines as before: virt-v2v's own reason leads, the oldest goes.
            return words, [reason, *detail][: max(len(detail), 1)]
    return reason, list(detail)
