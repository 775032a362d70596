"""A pinned source file is opened only if it is still the file its provider checked."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from ferry.platform import errors
from ferry.platform.copy import pins
from ferry.platform.copy.source import open_source
from ferry.platform.images import ImageRef
from ferry.providers.base import FilePin


def pin_of(path: Path, name: str = "disk.img") -> FilePin:
    info = os.stat(path)
    return FilePin(path=str(path), name=name, device=info.st_dev, inode=info.st_ino)


def test_the_checked_file_opens_and_reads_through_its_descriptor(tmp_path: Path) -> None:
    # Given a file pinned as it is now
    disk = tmp_path / "disk.img"
    disk.write_bytes(b"guest" * 100)
    # When opened through its pin / Then it is that file
    fd = pins.open_pinned(pin_of(disk))
    try:
        assert os.pread(fd, 5, 0) == b"guest"
    finally:
        os.close(fd)


def test_a_fifo_swapped_in_is_refused_without_blocking(tmp_path: Path) -> None:
    # Given a pinned file replaced by a FIFO (an open for reading would wait for a writer)
    disk = tmp_path / "disk.img"
    disk.write_bytes(b"x")
    pin = pin_of(disk)
    disk.unlink()
    os.mkfifo(disk)
    # When opened / Then it is refused at once as not a regular file
    with pytest.raises(errors.InvalidSourceError, match="no longer a regular file"):
        pins.open_pinned(pin)


def test_a_second_name_for_the_same_file_is_refused(tmp_path: Path) -> None:
    # Given the very file checked, which has since got a second name (a hard link)
    disk = tmp_path / "disk.img"
    disk.write_bytes(b"x")
    pin = pin_of(disk)
    os.link(disk, tmp_path / "elsewhere")
    # When opened / Then the second name is noticed
    with pytest.raises(errors.InvalidSourceError, match="2 names"):
        pins.open_pinned(pin)


def test_a_source_reading_a_file_that_was_not_pinned_is_refused(tmp_path: Path) -> None:
    # Given a raw ImageRef whose pins do not name the file it reads
    disk, other = tmp_path / "disk.img", tmp_path / "other.img"
    disk.write_bytes(b"x" * 512)
    other.write_bytes(b"y" * 512)
    ref = ImageRef(path=str(other), pins=(pin_of(disk),))
    # When opened / Then the workload refuses it: every file read must be pinned
    with pytest.raises(errors.InvalidSourceError, match="did not check"):
        open_source(ref)


def test_a_pin_name_that_leaves_the_private_directory_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a qemu tree pinned under a name with '..' (links are made by that name),
    # its private directory made inside tmp_path/private
    (tmp_path / "private").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "private"))
    disk = tmp_path / "disk.qcow2"
    disk.write_bytes(b"x" * 512)
    tree = {"driver": "qcow2", "file": {"driver": "file", "filename": str(disk)}}
    # When the tree is pinned / Then no link is made outside the private directory
    with pytest.raises(errors.InvalidSourceError, match="unsafe name"):
        pins.PinnedTree(tree, (pin_of(disk, name="../../escape"),))
    assert not (tmp_path / "escape").exists()
    assert list((tmp_path / "private").iterdir()) == []  # and the private directory is gone
