"""The provider seam without I/O: factory choice, names, manifest lines, qemu handles."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ferry.proto import objects
from ferry.proto.inventory import Extent, ProviderType
from ferry.proto.volume import SourceRef
from ferry.providers import factory
from ferry.providers.base import Provider, ProviderError, ProviderNotSupported, QemuSource
from ferry.providers.ova import errors, manifest
from ferry.providers.ova.package import safe_name
from ferry.providers.ova.provider import OvaProvider
from ferry.providers.ova.reader import merged


@pytest.mark.parametrize(
    "kind",
    [
        ProviderType.OPENSTACK,
        ProviderType.KUBEVIRT,
    ],
)
def test_unbuilt_provider_types_say_so(kind: ProviderType) -> None:
    # Given a provider type without an implementation yet
    ref = SourceRef(provider="src", type=kind, url="https://example.invalid")

    # When the factory is asked / Then it refuses clearly, naming the type
    with pytest.raises(ProviderNotSupported, match=kind.value):
        factory.create(ref, {"user": "u", "password": "p"})


def test_ova_provider_from_plain_path_and_file_url() -> None:
    # Given the two ways a user writes a local directory
    plain = factory.create(SourceRef(provider="a", type=ProviderType.OVA, url="/srv/ova"))
    url = factory.create(SourceRef(provider="b", type=ProviderType.OVA, url="file:///srv/o%20va"))

    # Then both are OVA providers over that directory, and satisfy the protocol
    assert isinstance(plain, OvaProvider) and plain.root == Path("/srv/ova")
    assert isinstance(url, OvaProvider) and url.root == Path("/srv/o va")
    provider: Provider = plain
    assert provider is plain


def test_ova_directory_from_a_provider_objects_settings() -> None:
    # Given a user's Provider spec that names the directory in settings
    spec = objects.ProviderSpec(type=ProviderType.OVA, settings={"path": "/srv/exports"})

    # When built / Then the provider reads that directory
    provider = factory.create(spec)
    assert isinstance(provider, OvaProvider) and provider.root == Path("/srv/exports")


def test_an_ova_share_is_read_at_its_mount_and_named_for_conversion_pods() -> None:
    # Given a Provider on an NFS share, mounted here where settings.path says
    spec = objects.ProviderSpec(
        type=ProviderType.OVA, url="nfs://nfs.example/exports/ova", settings={"path": "/mnt/ova"}
    )
    # When built / Then it reads the mount, and knows the export a pod mounts there
    provider = factory.create(spec)
    assert isinstance(provider, OvaProvider) and provider.root == Path("/mnt/ova")
    assert provider.share == "nfs://nfs.example/exports/ova"
    # And without the mount point (or with a relative one) it is refused, saying so
    for settings in ({}, {"path": "mnt/ova"}):
        bad = objects.ProviderSpec(type=ProviderType.OVA, url=spec.url, settings=settings)
        with pytest.raises(ProviderError, match=r"settings\.path must name the absolute"):
            factory.create(bad)


@pytest.mark.parametrize("url", ["", "relative/dir", "nfs://server/export", "https://x/y.ova"])
def test_ova_urls_that_are_not_local_directories_are_refused(url: str) -> None:
    # Given a URL that is not an absolute local path / When built / Then a clear error
    with pytest.raises(ProviderError):
        factory.create(SourceRef(provider="a", type=ProviderType.OVA, url=url))


@pytest.mark.parametrize(
    ("name", "clean"),
    [("disk.vmdk", "disk.vmdk"), ("./disk.vmdk", "disk.vmdk"), ("a/./b/c.img", "a/b/c.img")],
)
def test_safe_names_are_normalised(name: str, clean: str) -> None:
    # Given a harmless spelling / When cleaned / Then one canonical relative name
    assert safe_name(Path("x.ova"), name) == clean


@pytest.mark.parametrize(
    "name", ["", "/etc/passwd", "../x", "a/../../x", "..", "a\\..\\x", "c:/x", "x\x00y", "."]
)
def test_unsafe_names_are_refused(name: str) -> None:
    # Given a name that could leave the package / When cleaned / Then refused
    with pytest.raises(errors.UnsafeMemberError):
        safe_name(Path("x.ova"), name)


def test_manifest_lines_of_vmware_and_virtualbox() -> None:
    # Given VMware's and VirtualBox's spellings, SHA256 and SHA1
    text = (
        "SHA256(vm.ovf)= " + "a" * 64 + "\nSHA1 (vm-disk1.vmdk) = " + "B" * 40 + "\n\n"
    ).encode()

    # When parsed
    entries = manifest.parse(Path("vm.ova"), "vm.mf", text)

    # Then both entries are there with lowercase digests
    assert entries["vm.ovf"].algorithm == "sha256"
    assert entries["vm-disk1.vmdk"] == manifest.Entry("vm-disk1.vmdk", "sha1", "b" * 40)


@pytest.mark.parametrize(
    "line",
    [
        "SHA256(vm.ovf)= abc",  # wrong length
        "MD5(vm.ovf)= d41d8cd98f00b204e9800998ecf8427e",  # unknown digest
        "garbage",
        "SHA256(../x)= " + "a" * 64,
    ],
)
def test_bad_manifest_lines_are_refused(line: str) -> None:
    # Given a malformed manifest line / When parsed / Then refused, not skipped
    with pytest.raises((errors.ManifestError, errors.UnsafeMemberError)):
        manifest.parse(Path("vm.ova"), "vm.mf", line.encode())


def test_qemu_source_names_the_format_and_serialises_the_tree() -> None:
    # Given a VMDK window inside an archive
    node = {"driver": "vmdk", "file": {"driver": "raw", "offset": 1536, "size": 1024}}
    source = QemuSource(format="vmdk", options=node)

    # When turned into qemu-img arguments
    args = source.qemu_img_args()

    # Then -f comes first and the json: tree round-trips
    assert args[:2] == ["-f", "vmdk"]
    assert json.loads(args[2].removeprefix("json:")) == node


def test_adjacent_extents_are_merged() -> None:
    # Given touching and separate extents / When merged / Then touching ones join
    extents = [Extent(0, 10), Extent(10, 5), Extent(20, 1), Extent(21, 4)]
    assert merged(extents) == [Extent(0, 15), Extent(20, 5)]
