"""The data path's failures on real files and a real NBD server: a source that goes
away, shrinks or fails with EIO, a full target, and images that point outside
themselves, each refused or reported with its own error."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from localkit import MiB, make_raw, new_target, wait_for

from ferry.platform import errors, images
from ferry.platform.copy import engine, source
from ferry.proto.inventory import DiskFormat


def test_source_missing_is_source_gone(tmp_path: Path) -> None:
    with pytest.raises(errors.SourceGoneError, match="does not exist"):
        source.open_source(images.ImageRef(path=str(tmp_path / "nope.raw")))


def test_source_shrinking_mid_copy_is_source_gone(tmp_path: Path) -> None:
    # Given a copy whose source is truncated as soon as the copy reports progress
    image = make_raw(tmp_path / "s.raw", 64 * MiB, [(i * 4 * MiB, 2 * MiB) for i in range(16)])
    src = source.RawFileSource(str(image))

    def vanish(_: engine.Progress) -> None:
        os.truncate(image, 0)

    # When copied
    with pytest.raises(errors.SourceGoneError, match="shrank"):
        engine.copy(
            src,
            new_target(tmp_path / "o.raw", "raw", src.size),
            tmp_path / "st",
            engine.Options(workers=1),
            vanish,
        )
    src.close()


@contextlib.contextmanager
def nbdkit_failing(tmp_path: Path, image: Path) -> Iterator[str]:
    """A real NBD export whose every read fails with EIO (nbdkit's error filter)."""
    sock = tmp_path / "eio.sock"
    proc = subprocess.Popen(
        [
            "nbdkit",
            "-f",
            "-U",
            str(sock),
            "--filter=error",
            "file",
            str(image),
            "error=EIO",
            "error-pread-rate=100%",
        ],
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(sock.exists, 10)
        yield str(sock)
    finally:
        proc.terminate()
        proc.wait()


def test_eio_from_the_source_is_a_source_io_error(tmp_path: Path) -> None:
    # Given an NBD source that answers every read with EIO
    image = make_raw(tmp_path / "e.raw", 8 * MiB, [(0, MiB)])
    with nbdkit_failing(tmp_path, image) as sock:
        src = source.open_source(images.ImageRef(path="eio-disk", nbd_socket=sock))
        # When copied
        with pytest.raises(errors.SourceIOError, match="EIO"):
            engine.copy(src, new_target(tmp_path / "o.raw", "raw", src.size), tmp_path / "st")


def test_full_target_is_no_space(tmp_path: Path, tiny_storage: Path) -> None:
    # Given 8 MiB of data and a target on a 4 MiB tmpfs
    image = make_raw(tmp_path / "n.raw", 16 * MiB, [(0, 8 * MiB)])
    src = source.RawFileSource(str(image))
    # When copied
    with pytest.raises(errors.NoSpaceError, match="ENOSPC"):
        engine.copy(src, new_target(tiny_storage / "o.raw", "raw", src.size), tiny_storage / "st")
    src.close()


FSIZE_SCRIPT = """
import resource, sys, pathlib
from ferry.platform import errors, images
from ferry.platform.copy import engine, sink, source
src = source.RawFileSource(sys.argv[1])
pathlib.Path(sys.argv[2]).touch()
resource.setrlimit(resource.RLIMIT_FSIZE, (2 * 1024 * 1024, 2 * 1024 * 1024))
try:
    engine.copy(src, sink.open_sink(sys.argv[2], "raw", src.size), pathlib.Path(sys.argv[3]))
except errors.NoSpaceError as exc:
    print("NoSpaceError:", exc.reason)
"""


def test_file_size_limit_is_no_space_too(tmp_path: Path) -> None:
    # Given a process limited to 2 MiB files (EFBIG), copying 8 MiB of data
    image = make_raw(tmp_path / "f.raw", 8 * MiB, [(0, 8 * MiB)])
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            FSIZE_SCRIPT,
            str(image),
            str(tmp_path / "o.raw"),
            str(tmp_path / "s"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    # Then it fails as NoSpaceError naming the limit
    assert "NoSpaceError: file size limit reached" in out.stdout, out.stderr


def test_qcow2_with_a_backing_file_is_refused_before_reading(tmp_path: Path) -> None:
    # Given a qcow2 overlay whose backing file is a "secret" beside it
    secret = make_raw(tmp_path / "secret.raw", MiB, [(0, MiB)])
    overlay = tmp_path / "overlay.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(secret), str(overlay)],
        check=True,
    )
    before = os.stat(secret).st_atime_ns
    # When opened as a source
    with pytest.raises(errors.InvalidSourceError, match="backing file"):
        source.open_source(images.ImageRef(path=str(overlay), format=DiskFormat.QCOW2))
    # Then the backing file was never read
    assert os.stat(secret).st_atime_ns == before


def test_vmdk_extent_outside_its_directory_is_refused(tmp_path: Path) -> None:
    # Given a flat VMDK whose descriptor names an extent in another directory
    outside = tmp_path / "outside"
    outside.mkdir()
    make_raw(outside / "data-flat.vmdk", MiB, [(0, MiB)])
    inside = tmp_path / "import"
    inside.mkdir()
    descriptor = inside / "disk.vmdk"
    descriptor.write_text(
        "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n"
        'createType="monolithicFlat"\n\n'
        'RW 2048 FLAT "../outside/data-flat.vmdk" 0\n\n'
        'ddb.virtualHWVersion = "4"\nddb.geometry.cylinders = "2"\n'
        'ddb.geometry.heads = "16"\nddb.geometry.sectors = "63"\nddb.adapterType = "ide"\n'
    )
    # When opened as a source, it is refused
    with pytest.raises(errors.InvalidSourceError, match="outside its directory"):
        source.open_source(images.ImageRef(path=str(descriptor), format=DiskFormat.VMDK_FLAT))
