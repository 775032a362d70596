"""Hostile disk images, sizes and manifests for the corpus of :mod:`hostile_corpus`."""

from __future__ import annotations

import textwrap

import ovfkit
from hostile_corpus import CANARY_TEXT, QCOW2_URI, RAW_URI, SPARSE_URI, Corpus, case

from ferry.providers.ova import errors

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
