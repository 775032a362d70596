"""The data path on real files, real qemu-img/qemu-nbd and a real NBD server.

Every digest is checked against an independent reference: the tree digest of
``qemu-img convert -O raw`` output computed by the pure-Python definition
(``checksum.of_bytes``), and ``qemu-img compare`` between source and target.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
from localkit import (
    LAYOUT,
    SIZE,
    KiB,
    MiB,
    allocated_bytes,
    make_raw,
    new_target,
    reference_digest,
    source_in,
    wait_for,
)

from ferry.platform import errors, images
from ferry.platform.copy import checksum, engine, sink, source
from ferry.proto.inventory import DiskFormat


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


class Refused(Exception):
    pass


def test_a_shared_rate_grants_each_chunk_before_it_is_read(tmp_path: Path) -> None:
    # Given 32 MiB of data and a budget that grants the first two chunks, then no more
    src_path = make_raw(tmp_path / "in.raw", 32 * MiB, [(0, 32 * MiB)])
    granted: list[int] = []

    def throttle(nbytes: int) -> None:
        if len(granted) == 2:
            raise Refused
        granted.append(nbytes)

    # When the copy runs with 4 threads (16 chunks in flight would be allowed)
    src = source.RawFileSource(str(src_path))
    with pytest.raises(Refused):
        engine.copy(
            src,
            new_target(tmp_path / "o.raw", "raw", src.size),
            tmp_path / "st",
            engine.Options(workers=4, verify=False, throttle=throttle),
        )
    src.close()
    # Then only what was granted was written: no chunk moved ahead of its grant
    assert granted == [4 * MiB, 4 * MiB]
    assert allocated_bytes(tmp_path / "o.raw") <= sum(granted)


RESUME_SCRIPT = """
import sys, pathlib
from ferry.platform import images
from ferry.platform.copy import engine, sink, source
src = source.RawFileSource(sys.argv[1])
out = sink.open_sink(sys.argv[2], sys.argv[4], src.size)
engine.copy(src, out, pathlib.Path(sys.argv[3]),
            engine.Options(checkpoint_seconds=0.05, max_rate=24 * 1024 * 1024))
"""


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
        [sys.executable, "-c", RESUME_SCRIPT, str(image), str(target), str(state), fmt_out]
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
