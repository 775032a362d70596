"""A generated corpus of hostile OVA/OVF packages: each is refused with its error class,
and nothing outside the import area is read while refusing them.

What each check proves, honestly:

- The audit hook (``sys.addaudithook``) sees every ``open``/``os.open`` made by this
  Python process, resolved with ``realpath`` so a symlink that leads out is caught;
  and every ``subprocess.Popen`` argv, with every ``filename`` inside ``json:``
  descriptions, so qemu-img is never *told* to open a path outside.
- ``strace -f -e trace=open,openat`` on a separate scan of the same corpus sees every
  open by the process and by qemu-img itself, so a path that qemu derives on its
  own (a VMDK extent, a backing file) would show too. It proves nothing about
  reads through already-open descriptors (there are none to outside files).
- The canary's atime is not used: relatime/noatime mounts make it unreliable.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ovfkit
import pytest

from ferry.proto.inventory import DiskFormat, ProviderType, Vm
from ferry.providers.base import QemuSource, VmNotFound
from ferry.providers.ova import errors, image
from ferry.providers.ova.package import Folder
from ferry.providers.ova.provider import OvaProvider

CANARY_TEXT = b"CANARY-SECRET-must-never-be-read\n"
QCOW2_URI = "http://en.wikipedia.org/wiki/Qcow2"
RAW_URI = "http://en.wikipedia.org/wiki/Byte"
SPARSE_URI = "http://www.vmware.com/interfaces/specifications/vmdk.html#sparse"


@dataclass
class Corpus:
    base: Path  # holds import/, the canary and other outside files
    root: Path  # the import area
    canary: Path
    outside: Path  # a directory of outside files (qcow2 data file, VMDK parent …)
    images: ovfkit.Images
    stream: bytes

    def ovf(self, **disk: object) -> str:
        entry: dict[str, object] = {"href": "d.vmdk", "size": len(self.stream)}
        entry.update(disk)
        return ovfkit.vmware_ovf([entry], name="evil")

    def ova(self, key: str, members: list[tuple[str, bytes]], *, mf: bool = False) -> None:
        if mf:
            members = [members[0], ("evil.mf", ovfkit.manifest(members)), *members[1:]]
        (self.root / f"{key}.ova").write_bytes(ovfkit.tar_bytes(members))

    def good(self) -> list[tuple[str, bytes]]:
        return [("evil.ovf", self.ovf().encode()), ("d.vmdk", self.stream)]

    def with_info(self, key: str, *extra: tuple[tarfile.TarInfo, bytes | None]) -> None:
        """The good package plus hand-made members (links, devices, odd names)."""
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
            for name, data in self.good():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            for info, payload in extra:
                tar.addfile(info, io.BytesIO(payload) if payload is not None else None)
        (self.root / f"{key}.ova").write_bytes(buffer.getvalue())

    def folder(self, key: str, ovf: str, files: dict[str, bytes]) -> Path:
        directory = self.root / key
        directory.mkdir()
        (directory / f"{key}.ovf").write_text(ovf)
        for name, data in files.items():
            (directory / name).write_bytes(data)
        return directory


Builder = Callable[[Corpus], None]
CASES: dict[str, tuple[type[errors.OvaError], Builder]] = {}


def case(key: str, expected: type[errors.OvaError]) -> Callable[[Builder], Builder]:
    def register(build: Builder) -> Builder:
        CASES[key] = (expected, build)
        return build

    return register


def member(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"x", link: str = "") -> Any:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    return info, (data if kind == tarfile.REGTYPE else None)


# -- tar members ------------------------------------------------------------------


@case("member-dotdot", errors.UnsafeMemberError)
def _(c: Corpus) -> None:
    c.with_info("member-dotdot", member("../canary.secret"))


@case("member-nested-dotdot", errors.UnsafeMemberError)
def _(c: Corpus) -> None:
    c.with_info("member-nested-dotdot", member("a/../../canary.secret"))


@case("member-absolute", errors.UnsafeMemberError)
def _(c: Corpus) -> None:
    c.with_info("member-absolute", member(str(c.canary)))


@case("member-backslash", errors.UnsafeMemberError)
def _(c: Corpus) -> None:
    c.with_info("member-backslash", member("..\\canary.secret"))


@case("member-symlink", errors.UnsafeMemberTypeError)
def _(c: Corpus) -> None:
    c.with_info("member-symlink", member("link.vmdk", tarfile.SYMTYPE, link="../canary.secret"))


@case("member-symlink-absolute", errors.UnsafeMemberTypeError)
def _(c: Corpus) -> None:
    c.with_info("member-symlink-absolute", member("l.vmdk", tarfile.SYMTYPE, link=str(c.canary)))


@case("member-hardlink", errors.UnsafeMemberTypeError)
def _(c: Corpus) -> None:
    c.with_info("member-hardlink", member("h.vmdk", tarfile.LNKTYPE, link=str(c.canary)))


@case("member-chardev", errors.UnsafeMemberTypeError)
def _(c: Corpus) -> None:
    c.with_info("member-chardev", member("mem", tarfile.CHRTYPE))


@case("member-blockdev", errors.UnsafeMemberTypeError)
def _(c: Corpus) -> None:
    c.with_info("member-blockdev", member("sda", tarfile.BLKTYPE))


@case("member-fifo", errors.UnsafeMemberTypeError)
def _(c: Corpus) -> None:
    c.with_info("member-fifo", member("pipe", tarfile.FIFOTYPE))


@case("member-duplicate", errors.DuplicateMemberError)
def _(c: Corpus) -> None:
    c.with_info("member-duplicate", member("d.vmdk", data=b"\0" * 512))


@case("member-duplicate-dot-slash", errors.DuplicateMemberError)
def _(c: Corpus) -> None:
    c.with_info("member-duplicate-dot-slash", member("./evil.ovf", data=c.ovf().encode()))


@case("member-count-huge", errors.TooManyMembersError)
def _(c: Corpus) -> None:
    c.with_info("member-count-huge", *(member(f"f{i}", data=b"") for i in range(1100)))


@case("archive-truncated-in-data", errors.TruncatedArchiveError)
def _(c: Corpus) -> None:
    c.ova("archive-truncated-in-data", c.good())
    path = c.root / "archive-truncated-in-data.ova"
    path.write_bytes(path.read_bytes()[: 4096 + len(c.stream) // 2])


@case("archive-without-end-marker", errors.TruncatedArchiveError)
def _(c: Corpus) -> None:
    data = ovfkit.tar_bytes(c.good())
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        last = tar.getmembers()[-1]
    end = last.offset_data + -(-last.size // 512) * 512  # just after the last member
    (c.root / "archive-without-end-marker.ova").write_bytes(data[:end])


@case("archive-size-beyond-file", errors.TruncatedArchiveError)
def _(c: Corpus) -> None:
    data = bytearray(ovfkit.tar_bytes(c.good()))
    header = 512 * (1 + -(-len(c.ovf().encode()) // 512))  # second member's header
    data[header + 124 : header + 136] = b"77777777777\0"
    data[header + 148 : header + 156] = b" " * 8
    data[header + 148 : header + 156] = b"%06o\0 " % sum(data[header : header + 512])
    (c.root / "archive-size-beyond-file.ova").write_bytes(bytes(data))


@case("archive-negative-size", errors.ImageSizeError)
def _(c: Corpus) -> None:
    data = bytearray(ovfkit.tar_bytes(c.good()))
    header = 512 * (1 + -(-len(c.ovf().encode()) // 512))
    data[header + 124 : header + 136] = b"\xff" * 12  # base-256: -1
    data[header + 148 : header + 156] = b" " * 8
    data[header + 148 : header + 156] = b"%06o\0 " % sum(data[header : header + 512])
    (c.root / "archive-negative-size.ova").write_bytes(bytes(data))


@case("archive-gzip", errors.ArchiveFormatError)
def _(c: Corpus) -> None:
    (c.root / "archive-gzip.ova").write_bytes(gzip.compress(ovfkit.tar_bytes(c.good())))


@case("archive-not-tar", errors.ArchiveFormatError)
def _(c: Corpus) -> None:
    (c.root / "archive-not-tar.ova").write_bytes(os.urandom(3000))


@case("archive-is-symlink", errors.UnsafeMemberTypeError)
def _(c: Corpus) -> None:
    (c.root / "archive-is-symlink.ova").symlink_to(c.canary)


# -- XML --------------------------------------------------------------------------


def _xml_case(c: Corpus, key: str, prologue: str, body: str | None = None) -> None:
    text = c.ovf()
    head, rest = text.split("\n", 1)
    ovf = head + "\n" + prologue + "\n" + (body if body is not None else rest)
    c.ova(key, [("evil.ovf", ovf.encode()), ("d.vmdk", c.stream)])


@case("xml-external-entity", errors.UnsafeXmlError)
def _(c: Corpus) -> None:
    prologue = f'<!DOCTYPE Envelope [<!ENTITY x SYSTEM "file://{c.canary}">]>'
    text = c.ovf().split("\n", 1)[1].replace("<Name>evil</Name>", "<Name>&x;</Name>")
    _xml_case(c, "xml-external-entity", prologue, text)


@case("xml-billion-laughs", errors.UnsafeXmlError)
def _(c: Corpus) -> None:
    entities = ['<!ENTITY a0 "lol">'] + [
        f'<!ENTITY a{i} "{f"&a{i - 1};" * 10}">' for i in range(1, 10)
    ]
    prologue = "<!DOCTYPE Envelope [" + "".join(entities) + "]>"
    text = c.ovf().split("\n", 1)[1].replace("<Name>evil</Name>", "<Name>&a9;</Name>")
    _xml_case(c, "xml-billion-laughs", prologue, text)


@case("xml-doctype", errors.UnsafeXmlError)
def _(c: Corpus) -> None:
    _xml_case(c, "xml-doctype", "<!DOCTYPE Envelope>")


@case("xml-parameter-entity", errors.UnsafeXmlError)
def _(c: Corpus) -> None:
    prologue = f'<!DOCTYPE Envelope [<!ENTITY % p SYSTEM "file://{c.canary}"> %p;]>'
    _xml_case(c, "xml-parameter-entity", prologue)


@case("xml-external-dtd", errors.UnsafeXmlError)
def _(c: Corpus) -> None:
    _xml_case(c, "xml-external-dtd", f'<!DOCTYPE Envelope SYSTEM "file://{c.canary}">')


@case("xml-malformed", errors.OvfFormatError)
def _(c: Corpus) -> None:
    c.ova("xml-malformed", [("evil.ovf", c.ovf().encode()[:-40]), ("d.vmdk", c.stream)])


@case("xml-wrong-root", errors.OvfFormatError)
def _(c: Corpus) -> None:
    c.ova("xml-wrong-root", [("evil.ovf", b"<html><body/></html>"), ("d.vmdk", c.stream)])


@case("ova-without-descriptor", errors.OvfFormatError)
def _(c: Corpus) -> None:
    c.ova("ova-without-descriptor", [("d.vmdk", c.stream)])


# -- references -------------------------------------------------------------------


@case("href-dotdot", errors.UnsafeMemberError)
def _(c: Corpus) -> None:
    c.ova("href-dotdot", [("evil.ovf", c.ovf(href="../canary.secret").encode())])


@case("href-absolute", errors.UnsafeMemberError)
def _(c: Corpus) -> None:
    c.ova("href-absolute", [("evil.ovf", c.ovf(href=str(c.canary)).encode())])


@case("href-url", errors.UnsafeMemberError)
def _(c: Corpus) -> None:
    c.ova("href-url", [("evil.ovf", c.ovf(href=f"file://{c.canary}").encode())])


@case("href-missing", errors.MissingFileError)
def _(c: Corpus) -> None:
    c.ova("href-missing", [("evil.ovf", c.ovf(href="nothere.vmdk").encode())])


@case("folder-href-dotdot", errors.UnsafeMemberError)
def _(c: Corpus) -> None:
    c.folder("folder-href-dotdot", c.ovf(href="../../canary.secret"), {})


@case("folder-disk-symlink", errors.UnsafeMemberTypeError)
def _(c: Corpus) -> None:
    directory = c.folder("folder-disk-symlink", c.ovf(size=len(CANARY_TEXT)), {})
    (directory / "d.vmdk").symlink_to(c.canary)


@case("folder-dir-symlink", errors.UnsafeMemberTypeError)
def _(c: Corpus) -> None:
    shutil.copy(c.images.stream, c.outside / "d.vmdk")
    directory = c.folder("folder-dir-symlink", c.ovf(href="sub/d.vmdk"), {})
    (directory / "sub").symlink_to(c.outside)


@case("root-dir-symlink", errors.UnsafeMemberTypeError)
def _(c: Corpus) -> None:
    elsewhere = c.outside / "ovf-elsewhere"
    elsewhere.mkdir()
    (elsewhere / "evil.ovf").write_text(c.ovf())
    (elsewhere / "d.vmdk").write_bytes(c.stream)
    (c.root / "root-dir-symlink").symlink_to(elsewhere)


@case("folder-ovf-symlink", errors.UnsafeMemberTypeError)
def _(c: Corpus) -> None:
    (c.outside / "real.ovf").write_text(c.ovf())
    directory = c.root / "folder-ovf-symlink"
    directory.mkdir()
    (directory / "folder-ovf-symlink.ovf").symlink_to(c.outside / "real.ovf")
    (directory / "d.vmdk").write_bytes(c.stream)


# -- VMDK descriptors and parents -----------------------------------------------------


def _descriptor(extent: str, *, sectors: int = 16384, kind: str = "FLAT", extra: str = "") -> bytes:
    return textwrap.dedent(
        f"""\
        # Disk DescriptorFile
        version=1
        CID=12345678
        parentCID=ffffffff
        createType="monolithicFlat"
        {extra}
        # Extent description
        RW {sectors} {kind} "{extent}" 0

        # The Disk Data Base
        #DDB
        ddb.virtualHWVersion = "4"
        """
    ).encode()


def _descriptor_ova(c: Corpus, key: str, descriptor: bytes, extra: list[tuple[str, bytes]]) -> None:
    ovf = c.ovf(size=len(descriptor), format=SPARSE_URI)
    c.ova(key, [("evil.ovf", ovf.encode()), ("d.vmdk", descriptor), *extra])


@case("vmdk-extent-dotdot-folder", errors.UnsafeImageError)
def _(c: Corpus) -> None:
    descriptor = _descriptor("../../canary.secret", sectors=1)
    c.folder(
        "vmdk-extent-dotdot-folder",
        c.ovf(size=len(descriptor), format=SPARSE_URI),
        {"d.vmdk": descriptor},
    )


@case("vmdk-extent-absolute", errors.UnsafeImageError)
def _(c: Corpus) -> None:
    _descriptor_ova(c, "vmdk-extent-absolute", _descriptor(str(c.canary), sectors=1), [])


@case("vmdk-extent-dotdot-ova", errors.UnsafeImageError)
def _(c: Corpus) -> None:
    _descriptor_ova(c, "vmdk-extent-dotdot-ova", _descriptor("../canary.secret", sectors=1), [])


@case("vmdk-extent-raw-device", errors.UnsafeImageError)
def _(c: Corpus) -> None:
    _descriptor_ova(c, "vmdk-extent-raw-device", _descriptor("/dev/sda", kind="VMFSRAW"), [])


@case("vmdk-descriptor-parent", errors.UnsafeImageError)
def _(c: Corpus) -> None:
    descriptor = _descriptor("flat.bin", extra='parentFileNameHint="../canary.secret"')
    _descriptor_ova(c, "vmdk-descriptor-parent", descriptor, [("flat.bin", c.images.expected)])


@case("vmdk-extent-smaller-than-stated", errors.ImageSizeError)
def _(c: Corpus) -> None:
    descriptor = _descriptor("flat.bin", sectors=16384 * 4)
    _descriptor_ova(
        c, "vmdk-extent-smaller-than-stated", descriptor, [("flat.bin", c.images.expected)]
    )


@case("vmdk-sparse-with-parent", errors.UnsafeImageError)
def _(c: Corpus) -> None:
    parent = c.outside / "parent.vmdk"
    child = c.outside / "child.vmdk"
    ovfkit.run("qemu-img", "create", "-f", "vmdk", str(parent), "8M")
    ovfkit.run("qemu-img", "create", "-f", "vmdk", "-b", str(parent), "-F", "vmdk", str(child))
    data = child.read_bytes()
    ovf = c.ovf(size=len(data), format=SPARSE_URI)
    c.ova("vmdk-sparse-with-parent", [("evil.ovf", ovf.encode()), ("d.vmdk", data)])


# -- qcow2 ------------------------------------------------------------------------


def _qcow2_ova(c: Corpus, key: str, data: bytes, uri: str = QCOW2_URI) -> None:
    ovf = c.ovf(size=len(data), format=uri)
    c.ova(key, [("evil.ovf", ovf.encode()), ("d.vmdk", data)])


@case("qcow2-backing-file", errors.UnsafeImageError)
def _(c: Corpus) -> None:
    image = c.outside / "backed.qcow2"
    ovfkit.run(
        "qemu-img", "create", "-f", "qcow2", "-b", str(c.canary), "-F", "raw", str(image), "8M"
    )
    _qcow2_ova(c, "qcow2-backing-file", image.read_bytes())


@case("qcow2-data-file", errors.UnsafeImageError)
def _(c: Corpus) -> None:
    image = c.outside / "external.qcow2"
    data_file = c.outside / "external-data.raw"
    ovfkit.run(
        "qemu-img", "create", "-f", "qcow2", "-o", f"data_file={data_file}", str(image), "8M"
    )
    _qcow2_ova(c, "qcow2-data-file", image.read_bytes())


@case("raw-declared-qcow2", errors.DiskFormatError)
def _(c: Corpus) -> None:
    _qcow2_ova(c, "raw-declared-qcow2", c.images.expected, QCOW2_URI)


@case("qcow2-garbage-header", errors.DiskFormatError)
def _(c: Corpus) -> None:
    _qcow2_ova(c, "qcow2-garbage-header", b"QFI\xfb" + b"\x07" * 1020)


# -- sizes ------------------------------------------------------------------------


@case("capacity-smaller-than-image", errors.ImageSizeError)
def _(c: Corpus) -> None:
    c.ova(
        "capacity-smaller-than-image",
        [("evil.ovf", c.ovf(capacity=1).encode()), ("d.vmdk", c.stream)],
    )


@case("capacity-negative", errors.ImageSizeError)
def _(c: Corpus) -> None:
    c.ova("capacity-negative", [("evil.ovf", c.ovf(capacity=-8).encode()), ("d.vmdk", c.stream)])


@case("capacity-overflow", errors.ImageSizeError)
def _(c: Corpus) -> None:
    c.ova(
        "capacity-overflow", [("evil.ovf", c.ovf(capacity=10**30).encode()), ("d.vmdk", c.stream)]
    )


@case("capacity-units-overflow", errors.ImageSizeError)
def _(c: Corpus) -> None:
    ovf = c.ovf(capacity=8, units="byte * 2^80")
    c.ova("capacity-units-overflow", [("evil.ovf", ovf.encode()), ("d.vmdk", c.stream)])


@case("capacity-zero", errors.ImageSizeError)
def _(c: Corpus) -> None:
    c.ova("capacity-zero", [("evil.ovf", c.ovf(capacity=0).encode()), ("d.vmdk", c.stream)])


@case("populated-exceeds-capacity", errors.ImageSizeError)
def _(c: Corpus) -> None:
    ovf = c.ovf(populated=9 * ovfkit.MiB)
    c.ova("populated-exceeds-capacity", [("evil.ovf", ovf.encode()), ("d.vmdk", c.stream)])


@case("file-size-lies", errors.ImageSizeError)
def _(c: Corpus) -> None:
    ovf = c.ovf(size=len(c.stream) + 512)
    c.ova("file-size-lies", [("evil.ovf", ovf.encode()), ("d.vmdk", c.stream)])


@case("raw-not-whole-sectors", errors.DiskFormatError)
def _(c: Corpus) -> None:
    ovf = c.ovf(size=1000, format=RAW_URI)
    c.ova("raw-not-whole-sectors", [("evil.ovf", ovf.encode()), ("d.vmdk", b"\1" * 1000)])


# -- manifest ---------------------------------------------------------------------


@case("manifest-mismatch", errors.ManifestMismatchError)
def _(c: Corpus) -> None:
    members = c.good()
    mf = ovfkit.manifest([("evil.ovf", b"something else"), members[1]])
    c.ova("manifest-mismatch", [members[0], ("evil.mf", mf), members[1]])


@case("manifest-garbage-line", errors.ManifestError)
def _(c: Corpus) -> None:
    members = c.good()
    c.ova("manifest-garbage-line", [members[0], ("evil.mf", b"this is not a digest\n"), members[1]])


@case("manifest-unknown-digest", errors.ManifestError)
def _(c: Corpus) -> None:
    members = c.good()
    mf = b"MD5(evil.ovf)= d41d8cd98f00b204e9800998ecf8427e\n"
    c.ova("manifest-unknown-digest", [members[0], ("evil.mf", mf), members[1]])


@case("manifest-names-missing-file", errors.MissingFileError)
def _(c: Corpus) -> None:
    members = c.good()
    mf = ovfkit.manifest([*members, ("ghost.vmdk", b"boo")])
    c.ova("manifest-names-missing-file", [members[0], ("evil.mf", mf), members[1]])


@case("manifest-names-outside-file", errors.UnsafeMemberError)
def _(c: Corpus) -> None:
    members = c.good()
    mf = ovfkit.manifest([*members, ("../canary.secret", CANARY_TEXT)])
    c.ova("manifest-names-outside-file", [members[0], ("evil.mf", mf), members[1]])


# -- the corpus, built once -------------------------------------------------------


def package_path(key: str, corpus: Corpus) -> Path:
    """Where a case's package lives: an .ova, a folder's .ovf, or a bare symlink."""
    entry = corpus.root / key
    if entry.is_symlink():
        return entry
    return entry / f"{key}.ovf" if entry.is_dir() else corpus.root / f"{key}.ova"


def package_key(key: str, corpus: Corpus) -> str:
    entry = corpus.root / key
    return f"{key}/{key}" if entry.is_dir() and not entry.is_symlink() else key


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory, images: ovfkit.Images) -> Corpus:
    base = tmp_path_factory.mktemp("hostile")
    root, outside = base / "import", base / "outside"
    root.mkdir()
    outside.mkdir()
    canary = base / "canary.secret"
    canary.write_bytes(CANARY_TEXT)
    built = Corpus(base, root, canary, outside, images, images.stream.read_bytes())
    for _, build in CASES.values():
        build(built)
    return built


class OpenAudit:
    """Every path this process opens (resolved) and every path handed to a child."""

    def __init__(self) -> None:
        self.recording = False
        self.opened: list[str] = []
        self.spawned: list[list[str]] = []
        sys.addaudithook(self.hook)

    def hook(self, event: str, args: tuple[Any, ...]) -> None:
        if not self.recording:
            return
        if event == "open" and isinstance(args[0], str | bytes | os.PathLike):
            self.opened.append(os.path.realpath(os.fsdecode(args[0])))
        elif event in ("os.listdir", "os.scandir") and args and args[0] is not None:
            if isinstance(args[0], str | bytes | os.PathLike):
                self.opened.append(os.path.realpath(os.fsdecode(args[0])))
        elif event == "subprocess.Popen":
            self.spawned.append([os.fsdecode(a) for a in args[1]])

    @staticmethod
    def named_paths(argv: list[str]) -> Iterator[str]:
        for arg in argv:
            if arg.startswith("json:"):
                yield from _filenames(json.loads(arg[5:]))
            elif arg.startswith("/"):
                yield arg


def _filenames(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "filename" and isinstance(value, str):
                yield value
            else:
                yield from _filenames(value)


_AUDIT = OpenAudit()


def test_the_corpus_has_at_least_thirty_hostile_packages() -> None:
    # Given the registered cases / When counted / Then there are enough of them
    assert len(CASES) >= 30


@pytest.mark.parametrize("key", sorted(CASES))
async def test_hostile_package_is_refused_with_its_error(key: str, corpus: Corpus) -> None:
    # Given one hostile package in the import area
    expected, _ = CASES[key]
    provider = OvaProvider(corpus.root)
    path = package_path(key, corpus)

    # When it is loaded (opening opens the audit window)
    _AUDIT.recording, _AUDIT.opened, _AUDIT.spawned = True, [], []
    try:
        with pytest.raises(errors.OvaError) as caught:
            await provider.load(path)
    finally:
        _AUDIT.recording = False

    # Then the error is of the expected kind and names the package
    assert type(caught.value) is expected, f"{key}: {caught.value!r}"
    assert str(path) in str(caught.value) or path.name in str(caught.value)
    assert CANARY_TEXT.decode().strip() not in str(caught.value)
    # And nothing outside the import area was opened here or named to a child
    inside = os.path.realpath(corpus.root)
    base = os.path.realpath(corpus.base)
    outside_opens = [p for p in _AUDIT.opened if p.startswith(base) and not p.startswith(inside)]
    assert outside_opens == [], key
    named = [p for argv in _AUDIT.spawned for p in OpenAudit.named_paths(argv)]
    assert all(os.path.realpath(p).startswith(inside) for p in named), (key, named)
    if not key.startswith(("archive-is-symlink", "folder-", "root-dir-symlink")):
        assert any(p.startswith(inside) for p in _AUDIT.opened), "the audit saw no open at all"


async def test_scan_keeps_good_vms_and_reports_every_hostile_package(
    corpus: Corpus, tmp_path: Path
) -> None:
    # Given the hostile corpus plus one good OVA in the same directory
    corpus.ova("zz-good", corpus.good(), mf=True)
    try:
        # When the whole directory is scanned
        found = await OvaProvider(corpus.root).scan()
        vms = await OvaProvider(corpus.root).inventory()
    finally:
        (corpus.root / "zz-good.ova").unlink()

    # Then every hostile package is rejected with its class and the good VM survives
    assert {k: type(e) for k, e in found.rejected.items()} == {
        package_key(k, corpus): expected for k, (expected, _) in CASES.items()
    }
    assert [vm.id for vm in vms] == ["zz-good/evil"]


async def test_a_rejected_package_explains_itself_when_its_vm_is_asked_for(corpus: Corpus) -> None:
    # Given a hostile package
    provider = OvaProvider(corpus.root)

    # When one of its VMs is asked for by id
    with pytest.raises(errors.UnsafeImageError):
        await provider.vm("qcow2-backing-file/evil")


async def test_hostile_vm_ids_cannot_walk_out_of_the_import_area(corpus: Corpus) -> None:
    # Given a VM id as a message could carry it, pointing outside the root
    provider = OvaProvider(corpus.root)
    vm = Vm(id="../canary/evil", name="x", provider_type=ProviderType.OVA)

    # When its disk is opened / its v2v input asked for
    with pytest.raises(errors.UnsafeMemberError):
        async with provider.open_disk(vm, "d"):
            pass
    with pytest.raises(errors.UnsafeMemberError):
        await provider.v2v_input(vm, corpus.base)

    # Then nothing is found by name either
    with pytest.raises(VmNotFound):
        await provider.vm("../canary")


def test_no_process_opens_anything_outside_the_import_area_under_strace(corpus: Corpus) -> None:
    # Given the corpus and strace following every child (qemu-img included)
    if shutil.which("strace") is None:
        pytest.skip("strace is not installed")
    log = corpus.base / "strace.log"
    script = (
        "import asyncio, sys; from pathlib import Path;"
        "from ferry.providers.ova.provider import OvaProvider;"
        "found = asyncio.run(OvaProvider(Path(sys.argv[1])).scan());"
        "print(len(found.rejected))"
    )

    # When the whole directory is scanned under strace
    result = subprocess.run(
        [
            "strace",
            "-f",
            "-qq",
            "-e",
            "trace=open,openat,openat2,execve",
            "-o",
            str(log),
            sys.executable,
            "-c",
            script,
            str(corpus.root),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    if result.returncode != 0 and "ptrace" in result.stderr:
        pytest.skip(f"strace cannot trace here: {result.stderr.strip()}")

    # Then every package was rejected and no open names the canary or outside dirs
    assert result.returncode == 0, result.stderr
    assert int(result.stdout.strip()) == len(CASES)
    trace = log.read_text()
    assert "openat" in trace  # the trace really recorded opens
    assert 'execve("/usr/bin/qemu-img"' in trace  # and followed qemu-img children
    assert "canary.secret" not in trace
    assert str(corpus.outside) not in trace


@pytest.mark.parametrize("kind", ["backing", "data-file"])
async def test_qemu_img_check_alone_refuses_without_opening_the_target(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a qcow2 in an import folder that points outside (header checks bypassed),
    # and qemu-img on PATH wrapped by strace so its own opens are recorded
    root = tmp_path / "import"
    root.mkdir()
    (root / "x.ovf").write_text("<Envelope/>")
    canary = tmp_path / "canary.secret"
    canary.write_bytes(CANARY_TEXT)
    image_path = root / "d.qcow2"
    if kind == "backing":
        options = ["-b", str(canary), "-F", "raw"]
    else:
        options = ["-o", f"data_file={tmp_path / 'outside-data.raw'}"]
    ovfkit.run("qemu-img", "create", "-f", "qcow2", *options, str(image_path), "8M")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    wrapper = bindir / "qemu-img"
    wrapper.write_text(
        "#!/bin/sh\n"
        f'exec strace -f -qq -e trace=open,openat,openat2 -o "{tmp_path}/trace.$$" '
        '/usr/bin/qemu-img "$@"\n'
    )
    wrapper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    node = {
        "driver": "qcow2",
        "backing": None,
        "file": {"driver": "file", "filename": str(image_path)},
    }
    unchecked = image.Image(DiskFormat.QCOW2, QemuSource(format="qcow2", options=node), 0, None)

    # When only the qemu-img confirmation runs
    with pytest.raises(errors.UnsafeImageError):
        await image.confirm(Folder(root / "x.ovf"), "d.qcow2", unchecked)

    # Then qemu-img read the image but neither the backing file nor the data file
    traces = "".join(p.read_text() for p in tmp_path.glob("trace.*"))
    assert str(image_path) in traces
    assert "canary.secret" not in traces
    assert "outside-data.raw" not in traces


async def test_a_qcow2_declared_raw_is_read_as_raw_and_never_follows_its_backing(
    tmp_path: Path, images: ovfkit.Images
) -> None:
    # Given a qcow2 whose backing file is a canary outside, in an OVA that declares it raw
    root = tmp_path / "import"
    root.mkdir()
    canary = tmp_path / "canary.secret"
    canary.write_bytes(CANARY_TEXT * 1000)
    backed = tmp_path / "backed.qcow2"
    ovfkit.run(
        "qemu-img", "create", "-f", "qcow2", "-b", str(canary), "-F", "raw", str(backed), "8M"
    )
    data = backed.read_bytes()
    data += b"\0" * (-len(data) % 512)  # a raw disk is whole sectors
    ovf = ovfkit.vmware_ovf([{"href": "d.img", "size": len(data), "format": RAW_URI}], name="r")
    ovfkit.write_ova(root / "declared-raw.ova", "r.ovf", ovf, [("d.img", data)])
    provider = OvaProvider(root)

    # When it is listed and its disk read whole
    _AUDIT.recording, _AUDIT.opened, _AUDIT.spawned = True, [], []
    try:
        vm = await provider.vm("declared-raw/r")
        [disk] = vm.disks
        async with provider.open_disk(vm, disk.id) as reader:
            got = await reader.read(0, reader.size)
    finally:
        _AUDIT.recording = False

    # Then it is raw, as declared, with a warning; its bytes are the file's own
    assert disk.format is DiskFormat.RAW
    assert any("declared raw but begins like a qcow2 image" in w for w in vm.warnings)
    assert got == data
    # And the canary it names as backing file was never opened nor named to a child
    assert str(canary) not in _AUDIT.opened
    named = [p for argv in _AUDIT.spawned for p in OpenAudit.named_paths(argv)]
    assert str(canary) not in named
