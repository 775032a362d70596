"""The data path on real files, real qemu-img/qemu-nbd and a real NBD server.

Every digest is checked against an independent reference: the tree digest of
``qemu-img convert -O raw`` output computed by the pure-Python definition
(``checksum.of_bytes``), and ``qemu-img compare`` between source and target.
"""

from __future__ import annotations

import contextlib
import os
import random
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ferry.platform import errors, images
from ferry.platform.copy import checksum, engine, sink, source
from ferry.proto.inventory import DiskFormat

KiB = 1024
MiB = 1024 * KiB


def make_raw(path: Path, size: int, extents: list[tuple[int, int]], seed: int = 7) -> Path:
    """A sparse raw image with random data at ``extents`` and holes elsewhere."""
    rng = random.Random(seed)
    with path.open("wb") as f:
        f.truncate(size)
        for offset, length in extents:
            f.seek(offset)
            f.write(rng.randbytes(length))
    return path


def convert(src: Path, src_fmt: str, dst: Path, dst_fmt: str, *opts: str) -> Path:
    subprocess.run(
        ["qemu-img", "convert", "-q", "-f", src_fmt, "-O", dst_fmt, *opts, str(src), str(dst)],
        check=True,
    )
    return dst


def reference_digest(image: Path, fmt: str, tmp: Path) -> str:
    """The digest by definition, of what qemu-img itself reads from the image."""
    raw = convert(image, fmt, tmp / f"ref-{image.name}.raw", "raw")
    return checksum.of_bytes(raw.read_bytes())


def allocated_bytes(path: Path) -> int:
    return os.stat(path).st_blocks * 512


def new_target(path: Path, fmt: str, size: int) -> sink.DiskSink:
    if fmt == "qcow2":
        subprocess.run(
            ["qemu-img", "create", "-q", "-f", "qcow2", str(path), str(size)], check=True
        )
    return sink.open_sink(str(path), fmt, size)


LAYOUT = [(0, 64 * KiB), (3 * MiB + 4096, 1500 * KiB), (9 * MiB, 3 * MiB), (19 * MiB, 700)]
SIZE = 20 * MiB


@pytest.fixture
def raw_image(tmp_path: Path) -> Path:
    return make_raw(tmp_path / "disk.raw", SIZE, LAYOUT)


def source_in(fmt: DiskFormat, raw: Path, tmp: Path) -> Path:
    if fmt == DiskFormat.RAW:
        return raw
    if fmt == DiskFormat.QCOW2:
        return convert(raw, "raw", tmp / "disk.qcow2", "qcow2")
    if fmt == DiskFormat.VMDK_STREAM:
        return convert(raw, "raw", tmp / "disk.vmdk", "vmdk", "-o", "subformat=streamOptimized")
    if fmt == DiskFormat.VMDK_FLAT:
        return convert(raw, "raw", tmp / "flat.vmdk", "vmdk", "-o", "subformat=monolithicFlat")
    raise AssertionError(fmt)


@pytest.mark.parametrize(
    "fmt_in", [DiskFormat.RAW, DiskFormat.QCOW2, DiskFormat.VMDK_STREAM, DiskFormat.VMDK_FLAT]
)
@pytest.mark.parametrize("fmt_out", ["raw", "qcow2"])
def test_format_matrix_matches_qemu_img_convert(
    tmp_path: Path, raw_image: Path, fmt_in: DiskFormat, fmt_out: str
) -> None:
    # Given a source image in fmt_in, and what qemu-img convert makes of it
    image = source_in(fmt_in, raw_image, tmp_path)
    expected = reference_digest(image, source.qemu_format(fmt_in), tmp_path)
    src = source.open_source(images.ImageRef(path=str(image), format=fmt_in))
    target = tmp_path / f"out.{fmt_out}"
    # When Ferry copies it into a fmt_out target
    try:
        result = engine.copy(src, new_target(target, fmt_out, SIZE), tmp_path / "state")
    finally:
        src.close()
    # Then source and target digests both equal the qemu-img convert reference
    assert result.source.digest == expected
    assert result.target.digest == expected
    assert result.source.algorithm == checksum.ALGORITHM
    # And qemu-img agrees the guest-visible content is identical
    subprocess.run(
        ["qemu-img", "compare", "-q", "-f", "raw", "-F", fmt_out, str(raw_image), str(target)],
        check=True,
    )
    # And only the allocated data was written, and the checkpoint is gone
    assert result.bytes_written <= sum(length for _, length in LAYOUT) + 4 * 64 * KiB
    assert not (tmp_path / "state" / "copy.json").exists()


def test_holes_stay_holes_and_zero_runs_inside_data_are_not_written(tmp_path: Path) -> None:
    # Given a raw source whose only data extent is 2 MiB, half of it zeros (written, not holes)
    image = tmp_path / "zeros.raw"
    with image.open("wb") as f:
        f.truncate(64 * MiB)
        f.seek(8 * MiB)
        f.write(os.urandom(MiB) + bytes(MiB))
    src = source.RawFileSource(str(image))
    assert sum(e.length for e in src.extents()) >= 2 * MiB  # the zeros are allocated
    target = tmp_path / "out.raw"
    # When copied to raw
    result = engine.copy(src, new_target(target, "raw", src.size), tmp_path / "state")
    src.close()
    # Then only the 1 MiB of non-zero data is written and allocated in the target
    assert result.bytes_written == MiB
    assert allocated_bytes(target) <= MiB + 64 * KiB
    assert result.target.digest == checksum.of_bytes(image.read_bytes())


def test_progress_is_throttled_and_ends_at_total(tmp_path: Path) -> None:
    # Given a source with 24 MiB of data and a tiny report interval
    image = make_raw(tmp_path / "p.raw", 64 * MiB, [(i * 8 * MiB, 3 * MiB) for i in range(8)])
    reports: list[engine.Progress] = []
    src = source.RawFileSource(str(image))
    # When copied at a capped rate
    engine.copy(
        src,
        new_target(tmp_path / "o.raw", "raw", src.size),
        tmp_path / "st",
        engine.Options(progress_seconds=0.2, max_rate=48 * MiB),
        reports.append,
    )
    src.close()
    # Then a handful of reports arrive (not one per chunk), monotonic, ending at the total
    assert 2 <= len(reports) <= 8
    assert [r.done for r in reports] == sorted(r.done for r in reports)
    assert reports[-1].done == reports[-1].total == 24 * MiB
    assert any(r.rate > 0 for r in reports)


RESUME_SCRIPT = """
import sys, pathlib
from ferry.platform import images
from ferry.platform.copy import engine, sink, source
src = source.RawFileSource(sys.argv[1])
out = sink.open_sink(sys.argv[2], sys.argv[4], src.size)
engine.copy(src, out, pathlib.Path(sys.argv[3]),
            engine.Options(checkpoint_seconds=0.05, max_rate=24 * 1024 * 1024))
"""


def wait_for(predicate, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        time.sleep(0.02)


def watermark(state: Path) -> int:
    import msgspec

    with contextlib.suppress(FileNotFoundError, msgspec.DecodeError):
        return int(msgspec.json.decode((state / "copy.json").read_bytes())["watermark"])
    return 0


@pytest.mark.parametrize("fmt_out", ["raw", "qcow2"])
def test_killed_copy_resumes_from_checkpoint_and_digest_matches(
    tmp_path: Path, fmt_out: str
) -> None:
    # Given a copy running in its own process, slowed down so it can be caught mid-way
    image = make_raw(tmp_path / "big.raw", 96 * MiB, [(i * 4 * MiB, 3 * MiB) for i in range(24)])
    target, state = tmp_path / f"t.{fmt_out}", tmp_path / "state"
    new_target(target, fmt_out, 96 * MiB).close()
    proc = subprocess.Popen(
        [_python(), "-c", RESUME_SCRIPT, str(image), str(target), str(state), fmt_out]
    )
    # When it is killed -9 after its first checkpoints
    try:
        wait_for(lambda: watermark(state) >= 4)
    finally:
        proc.kill()
        proc.wait()
    done_chunks = watermark(state)
    assert 4 <= done_chunks < 24
    # And a garbage write lands past the watermark, as a dying writer could leave
    stale = sink.open_sink(str(target), fmt_out, 96 * MiB)
    stale.writer().write(95 * MiB, memoryview(b"stale" * 1000))
    stale.flush()
    stale.close()
    # Then the next run starts at the checkpoint, not at zero…
    src = source.RawFileSource(str(image))
    result = engine.copy(src, sink.open_sink(str(target), fmt_out, src.size), state)
    src.close()
    assert result.resumed_at == done_chunks * checksum.CHUNK
    # …and the whole-disk digest still matches the source, stale bytes gone
    assert result.source.digest == result.target.digest == checksum.of_bytes(image.read_bytes())


def _python() -> str:
    import sys

    return sys.executable


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


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs (real ENOSPC), when this test may mount; skipped otherwise."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root); see the RLIMIT_FSIZE test")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_full_target_is_no_space(tmp_path: Path, small_tmpfs: Path) -> None:
    # Given 8 MiB of data and a target on a 4 MiB tmpfs
    image = make_raw(tmp_path / "n.raw", 16 * MiB, [(0, 8 * MiB)])
    src = source.RawFileSource(str(image))
    # When copied
    with pytest.raises(errors.NoSpaceError, match="ENOSPC"):
        engine.copy(src, new_target(small_tmpfs / "o.raw", "raw", src.size), small_tmpfs / "st")
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
        [_python(), "-c", FSIZE_SCRIPT, str(image), str(tmp_path / "o.raw"), str(tmp_path / "s")],
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


def test_raw_disk_inside_a_bigger_file_is_read_in_place(tmp_path: Path, raw_image: Path) -> None:
    # Given a raw disk stored at offset 1536 inside an archive-like file
    archive = tmp_path / "bundle.ova"
    with archive.open("wb") as f:
        f.write(b"H" * 1536)
        f.write(raw_image.read_bytes())
        f.write(b"T" * 4096)
    ref = images.ImageRef(path=str(archive), offset=1536, size=SIZE)
    # When copied
    src = source.open_source(ref)
    result = engine.copy(src, new_target(tmp_path / "o.raw", "raw", SIZE), tmp_path / "st")
    src.close()
    # Then exactly the disk's bytes arrive, neither header nor trailer
    assert result.target.digest == checksum.of_bytes(raw_image.read_bytes())


def test_provider_qemu_source_option_tree_is_copied(tmp_path: Path, raw_image: Path) -> None:
    # Given a provider's QemuSource for a streamOptimized VMDK (a qemu option tree)
    from ferry.providers.base import QemuSource

    vmdk = source_in(DiskFormat.VMDK_STREAM, raw_image, tmp_path)
    qemu = QemuSource(
        format="vmdk", options={"driver": "vmdk", "file": {"driver": "file", "filename": str(vmdk)}}
    )
    # When turned into an ImageRef and copied to qcow2
    src = source.open_source(images.from_qemu_source(qemu, path=str(vmdk)))
    result = engine.copy(src, new_target(tmp_path / "o.qcow2", "qcow2", SIZE), tmp_path / "st")
    src.close()
    # Then the digest is the disk's
    assert result.target.digest == checksum.of_bytes(raw_image.read_bytes())


def test_provider_raw_window_is_read_directly(tmp_path: Path, raw_image: Path) -> None:
    # Given a provider's QemuSource for a raw disk at an offset inside an archive
    from ferry.providers.base import QemuSource

    archive = tmp_path / "vm.ova"
    archive.write_bytes(b"\0" * 512 + raw_image.read_bytes() + b"\1" * 512)
    qemu = QemuSource(
        format="raw",
        options={
            "driver": "raw",
            "offset": 512,
            "size": SIZE,
            "file": {"driver": "file", "filename": str(archive)},
        },
    )
    # When turned into an ImageRef
    ref = images.from_qemu_source(qemu)
    # Then it is a plain file window (pread, no qemu-nbd), and copies the disk exactly
    assert (ref.path, ref.offset, ref.size, ref.qemu_options) == (str(archive), 512, SIZE, None)
    src = source.open_source(ref)
    result = engine.copy(src, new_target(tmp_path / "o.raw", "raw", SIZE), tmp_path / "st")
    src.close()
    assert result.target.digest == checksum.of_bytes(raw_image.read_bytes())


class _LosingWriter:
    """A writer that acknowledges one write without doing it (a lost write)."""

    def __init__(self, inner: sink.RangeWriter, lose_at: int) -> None:
        self._inner = inner
        self._lose_at = lose_at

    def write(self, offset: int, view: memoryview) -> None:
        if offset <= self._lose_at < offset + len(view):
            return
        self._inner.write(offset, view)

    def close(self) -> None:
        self._inner.close()


class _LosingSink(sink.RawFileSink):
    def __init__(self, path: str, size: int, lose_at: int) -> None:
        super().__init__(path, size)
        self._lose_at = lose_at

    def writer(self) -> sink.RangeWriter:
        return _LosingWriter(super().writer(), self._lose_at)


def test_a_write_that_does_not_land_fails_the_read_back(tmp_path: Path, raw_image: Path) -> None:
    # Given a target that silently drops the write covering offset 9 MiB + 1
    src = source.RawFileSource(str(raw_image))
    target = _LosingSink(str(tmp_path / "o.raw"), SIZE, 9 * MiB + 1)
    # When copied, the read-back of that range does not match what was hashed
    with pytest.raises(errors.ChecksumMismatchError, match="reads back different bytes"):
        engine.copy(src, target, tmp_path / "st")
    src.close()


def test_stray_data_where_the_source_has_a_hole_is_found(tmp_path: Path, raw_image: Path) -> None:
    # Given a target that already holds data at 16 MiB, where the source is a hole
    out = tmp_path / "o.raw"
    make_raw(out, SIZE, [(16 * MiB, 4096)], seed=3)
    src = source.RawFileSource(str(raw_image))
    # When copied (nothing is ever written there), the final check still finds it
    with pytest.raises(errors.ChecksumMismatchError, match="where the source is a hole"):
        engine.copy(src, sink.open_sink(str(out), "raw", SIZE), tmp_path / "st")
    src.close()


@pytest.mark.parametrize("fmt_out", ["raw", "qcow2"])
def test_independent_rehash_of_the_target_agrees(
    tmp_path: Path, raw_image: Path, fmt_out: str
) -> None:
    # Given a copy asked to re-read and re-hash the whole target after its flush
    src = source.RawFileSource(str(raw_image))
    target = new_target(tmp_path / f"o.{fmt_out}", fmt_out, SIZE)
    # When copied
    result = engine.copy(src, target, tmp_path / "st", engine.Options(rehash=True))
    src.close()
    # Then the target's own digest, computed from nothing but its bytes, is the source's
    assert result.target.digest == result.source.digest == checksum.of_bytes(raw_image.read_bytes())


@pytest.mark.parametrize("buffered", [False, True])
def test_direct_and_buffered_targets_hold_the_same_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, buffered: bool
) -> None:
    # Given a disk whose size is not a multiple of the direct-I/O alignment
    size = 9 * MiB + 1000
    image = make_raw(tmp_path / "odd.raw", size, [(0, 3 * MiB), (9 * MiB - 100, 1100)])
    if buffered:
        monkeypatch.setenv(sink.BUFFERED_ENV, "1")
    out = sink.open_sink(str(tmp_path / "o.raw"), "raw", size)
    assert isinstance(out, sink.RawFileSink) and out.direct is not buffered
    # When copied (the unaligned tail goes through the page cache either way)
    src = source.RawFileSource(str(image))
    result = engine.copy(src, out, tmp_path / "st")
    src.close()
    # Then the target is byte-for-byte the source, holes still holes
    assert (tmp_path / "o.raw").read_bytes() == image.read_bytes()
    assert result.target.digest == checksum.of_bytes(image.read_bytes())
    assert allocated_bytes(tmp_path / "o.raw") <= 3 * MiB + 2 * 64 * KiB
