"""The tree checksum's definition and the chunking that feeds it."""

from __future__ import annotations

import errno

from blake3 import blake3

from ferry.platform import errors
from ferry.platform.copy import checksum, chunks
from ferry.proto.inventory import Extent

KiB = 1024
MiB = 1024 * KiB


def test_zero_constants_equal_hashing_real_zeros() -> None:
    # Given the precomputed digests used to skip holes
    # Then they are exactly what hashing zeros gives (holes cost nothing, change nothing)
    assert checksum.zero_block_digest() == blake3(bytes(64 * KiB)).digest()
    assert checksum.zero_chunk_leaf() == checksum.leaf(
        blake3(bytes(64 * KiB)).digest() for _ in range(64)
    )
    short = 3 * 64 * KiB + 100
    assert checksum.zero_chunk_leaf(short) == checksum.leaf(
        [blake3(bytes(64 * KiB)).digest()] * 3 + [blake3(bytes(100)).digest()]
    )


def test_digest_depends_on_size_and_content() -> None:
    # Given two images that differ in one byte, and one that differs only in size
    base = bytes(5 * MiB)
    flipped = bytearray(base)
    flipped[4 * MiB + 7] = 1
    # Then all three digests differ
    digests = {
        checksum.of_bytes(base),
        checksum.of_bytes(bytes(flipped)),
        checksum.of_bytes(bytes(5 * MiB + 512)),
    }
    assert len(digests) == 3


def test_chunk_groups_clip_extents_at_chunk_edges_and_skip_empty_chunks() -> None:
    # Given one extent spanning chunks 0-1 and one inside chunk 3
    size = 16 * MiB
    extents = [Extent(3 * MiB, 2 * MiB), Extent(13 * MiB, 4096)]
    # When grouped
    groups = list(chunks.chunk_groups(iter(extents), size))
    # Then chunk 0 and 1 each get their part; 2 is skipped; 3 gets its extent
    assert groups == [
        (0, [Extent(3 * MiB, MiB)]),
        (1, [Extent(4 * MiB, MiB)]),
        (3, [Extent(13 * MiB, 4096)]),
    ]


def test_block_ranges_round_out_to_64k_and_merge() -> None:
    # Given two small extents in the same 64 KiB block and one further on
    group = [Extent(100, 10), Extent(200, 10), Extent(70 * KiB, 1)]
    # When rounded to blocks inside a chunk starting at 0
    ranges = chunks.block_ranges(group, 0, 4 * MiB)
    # Then the first two share block 0, and block 1 follows it, so one read covers all
    assert ranges == [(0, 128 * KiB)]
    # And a far extent stays a separate read
    assert chunks.block_ranges([Extent(0, 1), Extent(MiB, 1)], 0, 4 * MiB) == [
        (0, 64 * KiB),
        (MiB, MiB + 64 * KiB),
    ]


def test_os_errors_map_to_precise_copy_errors() -> None:
    assert isinstance(errors.on_write(OSError(errno.ENOSPC, "x"), "t"), errors.NoSpaceError)
    assert isinstance(errors.on_write(OSError(errno.EFBIG, "x"), "t"), errors.NoSpaceError)
    assert isinstance(errors.on_write(OSError(errno.EIO, "x"), "t"), errors.TargetIOError)
    assert isinstance(errors.on_read(OSError(errno.EIO, "x"), "s"), errors.SourceIOError)
    assert isinstance(errors.on_read(OSError(errno.ECONNRESET, "x"), "s"), errors.SourceGoneError)
    rebuilt = errors.from_code("no_space", "full")
    assert isinstance(rebuilt, errors.NoSpaceError)
    assert rebuilt.reason == "full"
