"""The hostile corpus: a canary outside the import area, and packages that try to reach it.

Each case registers a builder and the error class its package must be refused with;
this module holds the archive, XML and reference cases, :mod:`hostile_images` the
disk-image, size and manifest ones. The tests are in ``test_ova_hostile``.
"""

from __future__ import annotations

import gzip
import io
import os
import shutil
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ovfkit

from ferry.providers.ova import errors

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
