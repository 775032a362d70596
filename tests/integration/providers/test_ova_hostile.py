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

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hostile_images  # noqa: F401 - importing it registers its cases in CASES
import ovfkit
import pytest
from hostile_corpus import CANARY_TEXT, CASES, RAW_URI, Corpus

from ferry.proto.inventory import DiskFormat, ProviderType, Vm
from ferry.providers.base import QemuSource, VmNotFound
from ferry.providers.ova import errors, image
from ferry.providers.ova.package import Folder, Location
from ferry.providers.ova.provider import OvaProvider

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
    # (a qemu tool is named only private links to descriptors checked here: /dev/fd/N)
    named = [p for argv in _AUDIT.spawned for p in OpenAudit.named_paths(argv)]
    pins = os.path.join(tempfile.gettempdir(), "ferry-pin-")
    assert all(p.startswith(pins) for p in named), (key, named)
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
    unchecked = image.Image(
        DiskFormat.QCOW2,
        QemuSource(format="qcow2", options=node),
        0,
        None,
        files=(Location("d.qcow2", image_path, 0, image_path.stat().st_size),),
    )

    # When only the qemu-img confirmation runs
    with pytest.raises(errors.UnsafeImageError):
        await image.confirm(Folder(root / "x.ovf"), "d.qcow2", unchecked)

    # Then qemu-img read the image but neither the backing file nor the data file
    traces = "".join(p.read_text() for p in tmp_path.glob("trace.*"))
    # (through its private link to the descriptor checked for it, never by its name)
    assert "/ferry-pin-" in traces and str(image_path) not in traces
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
