"""Fixtures of the local platform's volume tests; the helpers live in ``localkit``
beside this file."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ferry.platform.local.volumes import LocalVolumes

sys.path.insert(0, str(Path(__file__).parent))

from localkit import LAYOUT, SIZE, MiB, make_raw, settings


@pytest.fixture
def platform(tmp_path: Path) -> LocalVolumes:
    return LocalVolumes(settings(tmp_path))


@pytest.fixture
def disk(tmp_path: Path) -> Path:
    return make_raw(tmp_path / "src.raw", 24 * MiB, [(MiB, 3 * MiB), (17 * MiB, 2 * MiB + 5)])


@pytest.fixture
def tiny_storage(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs (real ENOSPC): a storage class directory, a copy's target; needs
    root (the copy engine's RLIMIT_FSIZE test covers a full target without it)."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip("cannot mount a tmpfs (not root)")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.fixture
def raw_image(tmp_path: Path) -> Path:
    return make_raw(tmp_path / "disk.raw", SIZE, LAYOUT, seed=7)
