"""The test guest after a real virt-v2v-in-place conversion, converted once and cached.

Why
    Under TCG an in-place conversion of the test guest costs about five minutes, and
    three tests need one: the in-place conversion test (tests/integration/conversion,
    which asserts on it), the converted guest's boot (the platform's) and the libvirt
    e2e's warm guest. It is done here once, by the conversion-service's own
    ``Converter`` (in place, default settings, the test guest's raw disk copied into a
    volume), and kept until something that could change the result changes.

Key
    sha256 over: the test guest's key (``recipe_hash``, so a new guest means a
    new conversion), ``virt-v2v-in-place --version``, the mode and converter
    settings that reach its command line or its inspection, the libvirt XML
    virt-v2v-in-place reads (with the volume's path replaced, since that varies),
    the syntax trees of every module of the conversion-service and of the local
    platform's workload runner, and the syntax tree of this file. Any change
    rebuilds; reformatting or a comment does not. (The in-place conversion test
    asserts on the entry, so it must stand for the code as it is.)

Cache
    ``$FERRY_CACHE_DIR/converted-guest`` or ``~/.cache/ferry/converted-guest``,
    next to ``test-guest``, one entry per key (the newest two kept). An entry
    holds ``disk.raw`` (the converted disk, mode 0444), ``converted.json`` (the
    key's inputs, the inspection, the progress stages, the conversion time, the
    disk's size and mtime) and ``conversion.log``. Conversions run in ``.tmp-*`` under ``.lock``
    (flock) and are renamed into place when they succeed, so an interrupted or
    failed one never leaves an entry and two callers never convert twice. An
    entry whose disk changed (size or mtime) counts as missing and is rebuilt.

Use
    The cached disk is shared: boot it through :meth:`ConvertedGuest.overlay`
    (a qcow2 overlay; QEMU opens the backing file read-only), never directly.

Needs the Ferry workspace (``ferry.conversion_service``), virt-v2v and
libguestfs; tests/ is not a package, so load this file by path.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec

from ferry.conversion_service import domain, v2v
from ferry.conversion_service.settings import ConversionSettings
from ferry.platform import workloads
from ferry.platform.local.processes import LocalWorkloads
from ferry.proto.conversion import ConversionMode
from ferry.proto.inventory import Inspection, Vm, Volume

DISK_NAME = "disk.raw"
META_NAME = "converted.json"
LOG_NAME = "conversion.log"
# The conversion the boot test has always run: the guest's raw disk copied into a
# volume as an importer would, then virt-v2v-in-place through the Converter.
MODE = ConversionMode.IN_PLACE
VOLUME_NAME = "ferry-test-guest-disk-0"
PATH_PLACEHOLDER = "/converted-guest/" + DISK_NAME
TIMEOUT_SECONDS = 2400
# Code whose change could change the conversion: every module of the conversion-service
# (command lines, domain XML, inspection, progress, pacing...) and the local platform's
# way of running a workload. The in-place conversion test asserts on this cache's entry,
# so an entry must stand for the code as it is.
CONVERTER_PACKAGE_GLOB = "*.py"
PLATFORM_MODULES = ("workloads.py", "local/processes.py")
# The settings that reach virt-v2v's command line or decide where the inspection
# comes from (the rest, time limits and paths, do not change the result).
KEYED_SETTINGS = ("virt_v2v_in_place", "virt_inspector", "verbose", "verify_with_inspector")
_KEEP_ENTRIES = 2


@dataclasses.dataclass(frozen=True)
class ConvertedGuest:
    disk: Path  # the converted raw disk: shared, read-only; boot an overlay of it
    inspection: Inspection  # what the Converter reported for it
    seconds: float  # how long the conversion took when the entry was built
    stages: list[str]  # the progress stages the Converter reported, in order
    key: str
    directory: Path
    built_now: bool  # converted by this call (False: taken from the cache)

    def overlay(self, path: Path) -> Path:
        """A qcow2 overlay at ``path`` backed by the cached disk; writes stay in it."""
        subprocess.run(
            ["qemu-img", "create", "-f", "qcow2", "-b", str(self.disk), "-F", "raw", str(path)],
            check=True,
            capture_output=True,
        )
        return path

    def unchanged(self) -> bool:
        """The cached disk is still the one the conversion wrote (size and mtime)."""
        meta = json.loads((self.directory / META_NAME).read_text())
        return _disk_matches(self.disk, meta)


def default_cache_dir() -> Path:
    base = os.environ.get("FERRY_CACHE_DIR")
    root = Path(base) if base else Path.home() / ".cache" / "ferry"
    return root / "converted-guest"


def _progress(message: str) -> None:
    print(f"[converted-guest {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _tree_hash(path: Path) -> str:
    tree = ast.dump(ast.parse(path.read_text()), include_attributes=False)
    return hashlib.sha256(tree.encode()).hexdigest()


def virt_v2v_version(settings: ConversionSettings) -> str:
    done = subprocess.run(
        [settings.virt_v2v_in_place, "--version"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return done.stdout.strip()


def conversion_volume(source: Vm, path: str) -> Volume:
    (disk,) = source.disks
    return Volume(
        disk_id=disk.id, name=VOLUME_NAME, size=disk.capacity, path=path, phase="Succeeded"
    )


def key_inputs(guest: Any, source: Vm, settings: ConversionSettings) -> dict[str, Any]:
    """Everything the converted disk and its inspection depend on."""
    package = Path(v2v.__file__).parent
    platform = Path(workloads.__file__).parent
    code = {p.name: _tree_hash(p) for p in sorted(package.glob(CONVERTER_PACKAGE_GLOB))}
    code.update({f"platform/{m}": _tree_hash(platform / m) for m in PLATFORM_MODULES})
    xml = domain.domain_xml(source, [conversion_volume(source, PATH_PLACEHOLDER)])
    return {
        "recipe": _tree_hash(Path(__file__).resolve()),
        "guest": guest.recipe_hash,
        "virt_v2v": virt_v2v_version(settings),
        "mode": MODE.value,
        "settings": settings.model_dump(mode="json", include=set(KEYED_SETTINGS)),
        "domain_xml": xml.decode(),
        "converter": code,
    }


def cache_key(inputs: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


async def ensure_converted(
    guest: Any,
    source: Vm,
    cache_dir: Path | None = None,
    *,
    settings: ConversionSettings | None = None,
    progress: Callable[[str], None] = _progress,
) -> ConvertedGuest:
    """The cached conversion of ``guest`` (a build_guest GuestArtifacts) whose
    OVA inventory is ``source``; converts it first if the entry is missing."""
    settings = settings or ConversionSettings()
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    inputs = key_inputs(guest, source, settings)
    key = cache_key(inputs)
    entry = cache_dir / key[:16]
    found = _load(entry, key, built_now=False)
    if found:
        return found
    cache_dir.mkdir(parents=True, exist_ok=True)
    with _locked(cache_dir / ".lock", progress):
        found = _load(entry, key, built_now=False)  # converted meanwhile by another process
        if found:
            return found
        for leftover in [*cache_dir.glob(".tmp-*"), *cache_dir.glob(".old-*")]:
            progress(f"removing leftover of an interrupted conversion: {leftover}")
            shutil.rmtree(leftover, ignore_errors=True)
        tmp = cache_dir / f".tmp-{key[:16]}-{os.getpid()}"
        try:
            progress(f"converting the test guest with virt-v2v-in-place into {tmp}")
            await _convert(tmp, guest, source, settings, inputs, key)
            if entry.exists():  # a damaged entry (its disk changed): replace it
                old = cache_dir / f".old-{key[:16]}-{os.getpid()}"
                os.rename(entry, old)
                os.rename(tmp, entry)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.rename(tmp, entry)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        _prune(cache_dir, entry, progress)
    found = _load(entry, key, built_now=True)
    if not found:
        raise RuntimeError(f"converted the test guest but {entry} does not look complete")
    progress(f"converted guest ready: {entry} ({found.seconds:.0f} s)")
    return found


async def _convert(
    work: Path,
    guest: Any,
    source: Vm,
    settings: ConversionSettings,
    inputs: dict[str, Any],
    key: str,
) -> None:
    work.mkdir()
    disk = work / DISK_NAME
    subprocess.run(["cp", "--sparse=always", str(guest.raw), str(disk)], check=True)
    converter = v2v.Converter(settings, work / "data", LocalWorkloads())
    job = v2v.Job(
        migration="converted-guest",
        vm_key="test-guest",
        mode=MODE,
        inventory=source,
        volumes=[conversion_volume(source, str(disk))],
        timeout_seconds=TIMEOUT_SECONDS,
    )
    stages: list[str] = []

    async def progress(update: Any) -> None:
        stages.append(update.stage)

    result = await converter.convert(job, progress)
    os.replace(result.log, work / LOG_NAME)
    shutil.rmtree(work / "data")
    disk.chmod(0o444)
    done = disk.stat()
    meta = {
        "key": key,
        "inputs": inputs,
        "inspection": msgspec.to_builtins(result.inspection),
        "seconds": result.seconds,
        "stages": list(dict.fromkeys(stages)),  # virt-v2v's progress, as the service saw it
        "disk_size": done.st_size,
        "disk_mtime_ns": done.st_mtime_ns,
        "converted_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (work / META_NAME).write_text(json.dumps(meta, indent=2) + "\n")


def _disk_matches(disk: Path, meta: dict[str, Any]) -> bool:
    try:
        done = disk.stat()
    except OSError:
        return False
    return bool(done.st_size == meta["disk_size"] and done.st_mtime_ns == meta["disk_mtime_ns"])


def _load(entry: Path, key: str, *, built_now: bool) -> ConvertedGuest | None:
    try:
        meta = json.loads((entry / META_NAME).read_text())
        if meta["key"] != key or not _disk_matches(entry / DISK_NAME, meta):
            return None
        inspection = msgspec.convert(meta["inspection"], Inspection)
        seconds = float(meta["seconds"])
        stages = [str(stage) for stage in meta["stages"]]
    except (OSError, ValueError, KeyError, TypeError, msgspec.ValidationError):
        return None
    return ConvertedGuest(
        disk=entry / DISK_NAME,
        inspection=inspection,
        seconds=seconds,
        stages=stages,
        key=key,
        directory=entry,
        built_now=built_now,
    )


@contextlib.contextmanager
def _locked(path: Path, progress: Callable[[str], None]) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            progress(f"another process is converting the test guest; waiting for {path}")
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _prune(cache_dir: Path, keep: Path, progress: Callable[[str], None]) -> None:
    entries = [
        p
        for p in cache_dir.iterdir()
        if p.is_dir() and not p.name.startswith(".") and p != keep and (p / META_NAME).exists()
    ]
    entries.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    for old in entries[_KEEP_ENTRIES - 1 :]:
        progress(f"pruning old converted guest {old}")
        shutil.rmtree(old, ignore_errors=True)
