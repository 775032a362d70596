"""The bookkeeping behind the final hole check: what the copy compared, what it did not."""

from __future__ import annotations

from ferry.platform.copy import chunks, holes
from ferry.proto.inventory import Extent

KiB = 1024
MiB = 1024 * KiB


def test_extents_are_rounded_out_to_blocks_and_merged() -> None:
    # Given extents that share a 64 KiB block, and one ending past the disk
    extents = [Extent(100, 10), Extent(60 * KiB, 8 * KiB), Extent(MiB - 5, 100)]
    # When rounded the way the copy reads them
    rounded = list(holes.rounded(iter(extents), MiB + 4 * KiB))
    # Then neighbours in one block merge and the last range stops at the disk's end
    assert rounded == [(0, 128 * KiB), (MiB - 64 * KiB, MiB + 4 * KiB)]


def test_uncovered_parts_of_target_data_are_exactly_the_gaps() -> None:
    # Given target data around, inside and between the ranges the copy compared
    target = [Extent(0, 10 * KiB), Extent(60 * KiB, 200 * KiB), Extent(MiB, KiB)]
    covered = [(0, 64 * KiB), (128 * KiB, 192 * KiB)]
    # When the parts outside them are listed
    left = list(holes.uncovered(iter(target), iter(covered)))
    # Then only the gaps remain, to be read and checked for zeros
    assert left == [Extent(64 * KiB, 64 * KiB), Extent(192 * KiB, 68 * KiB), Extent(MiB, KiB)]


def test_aligned_buffer_is_page_aligned_for_direct_io() -> None:
    # Given a buffer made for the copy's threads
    array, base, view = chunks.aligned_buffer(4 * MiB)
    # Then its window has the size asked for and starts on a 4 KiB boundary
    import ctypes

    address = ctypes.addressof(ctypes.c_char.from_buffer(view))
    assert len(view) == 4 * MiB and address % 4096 == 0
    view[0:1] = b"x"
    assert array[base] == ord("x")
