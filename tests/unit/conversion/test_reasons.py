"""virt-v2v's failures become reasons a user can act on; virt-v2v's line is kept."""

from __future__ import annotations

import pytest

from ferry.conversion_service import reasons


@pytest.mark.parametrize(("line", "words"), [
    ("virt-v2v: error: libguestfs error: you must call guestfs_add_drive before guestfs_launch",
     "found no disk to convert"),
    ("virt-v2v: error: this guest has no non-removable disks", "found no disk to convert"),
    ("virt-v2v: error: inspection could not detect the source guest (or physical machine).",
     "no operating system was found"),
    ("virt-v2v: error: multi-boot operating systems are not supported by virt-v2v.",
     "more than one operating system"),
])  # fmt: skip
def test_known_failures_are_said_in_user_words(line: str, words: str) -> None:
    # Given virt-v2v's last error line and two lines of context
    detail = ["context 1", "context 2"]

    # When turned into a reason
    reason, lines = reasons.in_user_words(line, detail)

    # Then the reason names the problem, not libguestfs, and virt-v2v's line leads the detail
    assert words in reason and "guestfs" not in reason
    assert lines == [line, "context 1"]


def test_an_unknown_failure_keeps_virt_v2v_reason() -> None:
    assert reasons.in_user_words("virt-v2v: error: disk full", ["a"]) == (
        "virt-v2v: error: disk full",
        ["a"],
    )


@pytest.mark.parametrize(("status", "line"), [
    (1, "virt-v2v: error: libguestfs error: guestfs_launch failed.\nThis usually means the "
        "libguestfs appliance failed to start or crashed."),
    (1, "libguestfs: error: appliance closed the connection unexpectedly; "
        "child process died unexpectedly"),
    (1, "qemu-img: error while writing at byte 0: No space left on device"),
    (1, "nbdkit: curl[1]: error: problem doing HEAD request: Connection refused"),
    (1, "virt-v2v: error: libguestfs error: could not create appliance through libvirt."),
    (-9, "virt-v2v: converting the guest"),  # killed by SIGKILL: the OOM killer
])  # fmt: skip
def test_failures_of_the_machine_are_transient(status: int, line: str) -> None:
    # Given a run that failed for the machine's sake, not the guest's
    # Then it is worth running again
    assert reasons.transient(status, line, ["context"])


@pytest.mark.parametrize(("status", "line"), [
    (1, "virt-v2v: error: inspection could not detect the source guest (or physical machine)."),
    (1, "virt-v2v: error: multi-boot operating systems are not supported by virt-v2v."),
    (1, "virt-v2v: error: libguestfs error: you must call guestfs_add_drive before "
        "guestfs_launch"),
    (1, "virt-v2v: error: something nobody has seen before"),
    # a known guest problem stays permanent even when its run was then killed
    (-9, "virt-v2v: error: this guest has no non-removable disks"),
])  # fmt: skip
def test_failures_of_the_guest_and_unknown_ones_are_permanent(status: int, line: str) -> None:
    assert not reasons.transient(status, line, ["context"])
