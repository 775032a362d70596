"""The disk checksum: a two-level BLAKE3 tree over the guest-visible bytes.

Definition (``ferry-blake3-tree-v1``; every digest is BLAKE3, 32 bytes):

* the disk's guest-visible byte stream (holes read as zeros) is cut into 64 KiB
  blocks (the last one may be shorter); each block's digest is BLAKE3 of its bytes;
* blocks are grouped into 4 MiB chunks; a chunk's leaf is BLAKE3 of the
  concatenation of its block digests;
* the root is BLAKE3 of ``b"ferry-blake3-tree-v1"``, the disk size as 8 bytes
  big-endian, and the concatenation of every chunk leaf, in order.

Why BLAKE3: it is a cryptographic hash (a match means the same data, not merely
"no random bit flip"), yet about five times faster than SHA-256 on the same
core here (measured 2.5 GB/s vs 0.5 GB/s on 64 KiB blocks), and the copy hashes
every byte twice (source side, then the read-back). Implementations exist for
every language the consumers of the events might use.

Why a tree and not one hash over the stream: a flat hash forces one thread and
cannot resume without re-reading everything before the checkpoint, and it has to
hash every zero of every hole (the cost would follow the virtual size). Here a
zero block's digest is a constant, so holes cost nothing; chunks are independent
so several threads hash in parallel; and a finished chunk's leaf is stored with
the checkpoint, so a resumed copy still ends with the digest of the whole disk.
Both ends compute it the same way from nothing but the bytes (the target by
reading itself back), whatever the extents layout or image format.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

from blake3 import blake3

ALGORITHM = "ferry-blake3-tree-v1"
BLOCK = 64 * 1024
CHUNK = 4 * 1024 * 1024
BLOCKS_PER_CHUNK = CHUNK // BLOCK
LEAF = 32  # bytes of one digest


def block_digest(data: bytes | memoryview) -> bytes:
    return blake3(data).digest()


@functools.lru_cache(maxsize=8)
def zero_block_digest(length: int = BLOCK) -> bytes:
    """The digest of ``length`` zero bytes: every hole block hashes to this."""
    return block_digest(bytes(length))


def chunk_span(index: int, size: int) -> tuple[int, int]:
    """Offset and length of chunk ``index`` in a disk of ``size`` bytes."""
    start = index * CHUNK
    return start, min(CHUNK, size - start)


def chunk_count(size: int) -> int:
    return (size + CHUNK - 1) // CHUNK


@functools.lru_cache(maxsize=8)
def zero_chunk_leaf(length: int = CHUNK) -> bytes:
    """The leaf of a chunk of ``length`` bytes that is all hole."""
    return leaf(block_digests_of_zeros(length))


def block_digests_of_zeros(length: int) -> list[bytes]:
    full, rest = divmod(length, BLOCK)
    digests = [zero_block_digest()] * full
    if rest:
        digests.append(zero_block_digest(rest))
    return digests


def leaf(block_digests: Iterable[bytes]) -> bytes:
    return blake3(b"".join(block_digests)).digest()


def root(size: int, leaves: Iterable[bytes]) -> str:
    """The disk digest from every chunk leaf, in order (streamed, constant memory)."""
    digest = blake3(ALGORITHM.encode())
    digest.update(size.to_bytes(8, "big"))
    for one in leaves:
        digest.update(one)
    return digest.hexdigest()


def of_bytes(data: bytes) -> str:
    """The digest of an in-memory disk image: the reference definition, for tests."""
    leaves = []
    for start in range(0, len(data), CHUNK):
        chunk = data[start : start + CHUNK]
        blocks = (chunk[i : i + BLOCK] for i in range(0, len(chunk), BLOCK))
        leaves.append(leaf(block_digest(b) for b in blocks))
    return root(len(data), leaves)
