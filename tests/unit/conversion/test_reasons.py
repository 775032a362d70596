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
