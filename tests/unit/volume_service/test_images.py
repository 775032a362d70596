"""A provider's qemu description becomes the platform's ImageRef."""

from __future__ import annotations

from ferry.proto.inventory import DiskFormat
from ferry.providers.base import QemuSource
from ferry.volume_service.images import file_of, image_ref

OVA = "/import/web01.ova"


def test_raw_window_in_an_archive_is_read_in_place() -> None:
    # Given a raw disk at an offset inside an OVA, as the OVA provider describes it
    qemu = QemuSource(
        format="raw",
        options={
            "driver": "raw",
            "offset": 1536,
            "size": 8 << 20,
            "file": {"driver": "file", "filename": OVA},
        },
    )
    # When it is described for the platform
    ref = image_ref(qemu)
    # Then it is a raw file window, read with pread, not through qemu
    assert (ref.path, ref.format, ref.offset, ref.size) == (OVA, DiskFormat.RAW, 1536, 8 << 20)
    assert ref.qemu_options is None


def test_a_whole_raw_file_is_read_directly() -> None:
    ref = image_ref(QemuSource(format="raw", options={"driver": "file", "filename": "/d/a.img"}))
    assert (ref.path, ref.format, ref.offset, ref.size) == ("/d/a.img", DiskFormat.RAW, 0, None)


def test_stream_optimized_vmdk_keeps_its_option_tree_and_names_its_file() -> None:
    # Given a streamOptimized VMDK inside an OVA (backing pinned to null)
    options = {
        "driver": "vmdk",
        "backing": None,
        "file": {
            "driver": "raw",
            "offset": 2048,
            "size": 4096,
            "file": {"driver": "file", "filename": OVA},
        },
    }
    ref = image_ref(QemuSource(format="vmdk", options=options))
    # Then qemu decodes it from the same tree, and the archive is its identity
    assert ref.format == DiskFormat.VMDK and ref.qemu_options == options
    assert ref.path == OVA


def test_raw_with_more_than_a_window_goes_through_qemu() -> None:
    # A raw node with options we do not interpret ourselves is left to qemu
    options = {
        "driver": "raw",
        "offset": 0,
        "file": {"driver": "file", "filename": OVA, "locking": "off"},
    }
    ref = image_ref(QemuSource(format="raw", options=options))
    assert ref.qemu_options == options and ref.path == OVA


def test_file_of_a_tree_without_a_file_is_empty() -> None:
    assert file_of({"driver": "nbd", "server": {"type": "unix", "path": "/s"}}) == ""
