"""Digests for tests: Ferry's tree digest of a guest's disk, computed from its qcow2 file
independently of any copy (the checksum a copy reports for its target, to compare with),
and a plain file's SHA-256 (a source that must only have been read)."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

from ferry.platform.copy import engine
from ferry.platform.copy.source import open_source
from ferry.platform.images import ImageRef


def guest_digest(qcow2: Path) -> str:
    """The disk as a guest sees it (read by qemu-img, shared with a running QEMU)."""
    flat = qcow2.with_suffix(".flat")
    subprocess.run(
        ["qemu-img", "convert", "-U", "-f", "qcow2", "-O", "raw", str(qcow2), str(flat)],
        check=True,
        timeout=600,
    )
    try:
        src = open_source(ImageRef(path=str(flat)))
        try:
            return engine.digest(src).digest
        finally:
            src.close()
    finally:
        flat.unlink()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
