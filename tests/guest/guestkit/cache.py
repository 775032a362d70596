"""The test guest's cache: entries keyed by the recipe hash, built under a lock,
renamed into place, the newest two kept; the public ``ensure_guest``."""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

from guestkit.build import build
from guestkit.host import rmtree, say
from guestkit.recipe import DISK_SIZE, HOSTNAME, META_NAME, OVA_NAME, RAW_NAME, ROOT_USER, VM_NAME

_PACKAGE = Path(__file__).resolve().parent
_KEEP_ENTRIES = 2  # cache entries (recipe versions) to keep


@dataclasses.dataclass(frozen=True)
class GuestArtifacts:
    ova: Path  # the VMware-style OVA (ovf, mf, streamOptimized vmdk)
    raw: Path  # raw disk image the VMDK was made from (boot tests)
    login_marker: str  # printed on the serial console when the guest is up
    root_password: str
    os_name: str  # PRETTY_NAME from the guest's /etc/os-release
    kernel_version: str  # uname -r of the guest
    root_user: str = ROOT_USER
    hostname: str = HOSTNAME
    vm_name: str = VM_NAME
    mac_address: str = ""  # MAC of the NIC in the OVF
    kernel: Path | None = None  # copy of the guest's vmlinuz
    initrd: Path | None = None  # copy of the guest's initrd (no virtio inside)
    disk_virtual_size: int = DISK_SIZE
    root_fs_uuid: str = ""
    directory: Path | None = None  # the cache entry holding all of the above
    recipe_hash: str = ""

    def to_json(self) -> dict:
        return {
            k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(self).items()
        }


def default_cache_dir() -> Path:
    base = os.environ.get("FERRY_CACHE_DIR")
    root = Path(base) if base else Path.home() / ".cache" / "ferry"
    return root / "test-guest"


def recipe_hash() -> str:
    """Hash of the builder's syntax trees (every module of this package and the
    ``build_guest.py`` entry point, in name order): the cache key.

    Hashing the trees rather than the bytes means reformatting or editing a
    comment does not throw away a guest that takes minutes to build.
    """
    digest = hashlib.sha256()
    for source in [*sorted(_PACKAGE.glob("*.py")), _PACKAGE.parent / "build_guest.py"]:
        digest.update(source.name.encode() + b"\0")
        tree = ast.dump(ast.parse(source.read_text()), include_attributes=False)
        digest.update(tree.encode() + b"\0")
    return digest.hexdigest()


def ensure_guest(
    cache_dir: Path | None = None,
    *,
    force: bool = False,
    progress: Callable[[str], None] | None = None,
) -> GuestArtifacts:
    """Return the cached test guest, building it first if it is missing.

    Safe to call from several processes at once: one builds, the others wait
    on the lock and then use its result.
    """
    log = progress or say
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    key = recipe_hash()
    entry = cache_dir / key[:16]
    if not force:
        found = _load_entry(entry)
        if found:
            _clean_stale_if_idle(cache_dir, log)
            return found
    cache_dir.mkdir(parents=True, exist_ok=True)
    with _locked(cache_dir / ".lock", log):
        if not force:
            found = _load_entry(entry)  # someone built it while we waited
            if found:
                log(f"using guest built meanwhile by another process: {entry}")
                return found
        _clean_stale(cache_dir, log)
        tmp = cache_dir / f".tmp-{key[:16]}-{os.getpid()}"
        try:
            build(tmp, key, log)
            if entry.exists():  # --force, or a broken entry
                old = cache_dir / f".old-{key[:16]}-{os.getpid()}"
                os.rename(entry, old)
                os.rename(tmp, entry)
                rmtree(old)
            else:
                os.rename(tmp, entry)
        finally:
            if tmp.exists():
                log(f"removing unfinished build {tmp}")
                try:
                    rmtree(tmp)
                except Exception as e:  # the next builder cleans it up (under the lock)
                    log(f"could not remove {tmp}: {e}")
        _prune(cache_dir, entry, log)
    found = _load_entry(entry)
    if not found:
        raise RuntimeError(f"built the test guest but {entry} does not look complete")
    log(f"test guest ready: {entry}")
    return found


def _load_entry(entry: Path) -> GuestArtifacts | None:
    try:
        meta = json.loads((entry / META_NAME).read_text())
    except (OSError, ValueError):
        return None
    ova, raw = entry / OVA_NAME, entry / RAW_NAME
    try:
        if ova.stat().st_size != meta["ova_size"] or raw.stat().st_size != DISK_SIZE:
            return None
    except (OSError, KeyError):
        return None
    return GuestArtifacts(
        ova=ova,
        raw=raw,
        login_marker=meta["login_marker"],
        root_password=meta["root_password"],
        os_name=meta["os_name"],
        kernel_version=meta["kernel_version"],
        root_user=meta["root_user"],
        hostname=meta["hostname"],
        vm_name=meta["vm_name"],
        mac_address=meta["mac_address"],
        kernel=entry / meta["kernel"],
        initrd=entry / meta["initrd"],
        disk_virtual_size=meta["disk_virtual_size"],
        root_fs_uuid=meta["root_fs_uuid"],
        directory=entry,
        recipe_hash=meta["recipe_hash"],
    )


@contextlib.contextmanager
def _locked(path: Path, log: Callable[[str], None]) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"another process is building the test guest; waiting for {path}")
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _clean_stale(cache_dir: Path, log: Callable[[str], None]) -> None:
    """Remove leftovers of interrupted builds.  Only called with the lock held,
    so no other build can be in progress."""
    for p in sorted(cache_dir.glob(".tmp-*")) + sorted(cache_dir.glob(".old-*")):
        log(f"removing leftover of an interrupted build: {p}")
        rmtree(p)


def _clean_stale_if_idle(cache_dir: Path, log: Callable[[str], None]) -> None:
    """On a cache hit: remove leftovers of killed builds if nobody is building."""
    if not any(cache_dir.glob(".tmp-*")) and not any(cache_dir.glob(".old-*")):
        return
    try:
        fd = os.open(cache_dir / ".lock", os.O_RDWR)
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return  # a build is running: leave it be
    try:
        _clean_stale(cache_dir, log)
    except Exception as e:  # best effort only
        log(f"could not clean leftovers in {cache_dir}: {e}")
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _prune(cache_dir: Path, keep: Path, log: Callable[[str], None]) -> None:
    entries = [
        p
        for p in cache_dir.iterdir()
        if p.is_dir() and not p.name.startswith(".") and p != keep and (p / META_NAME).exists()
    ]
    entries.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    for old in entries[_KEEP_ENTRIES - 1 :]:
        log(f"pruning old test guest {old}")
        rmtree(old)
