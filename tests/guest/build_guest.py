#!/usr/bin/env python3
"""Build (and cache) Ferry's test guest: a tiny Debian VM packaged like a vSphere OVA.

What it builds
    A minimal Debian bookworm (amd64) made with ``debootstrap --variant=minbase``
    plus a kernel, systemd, udev and GRUB, on a 2 GiB MBR-partitioned disk with
    one ext4 partition.  The guest prints a getty ``login:`` prompt on the
    serial console (ttyS0); root's password is ``ferry``.

    Like a guest installed on VMware, its initramfs holds the drivers of VMware's
    virtual hardware (LSI Logic / PVSCSI / IDE / SATA) but NOT the virtio
    drivers, so the disk boots on IDE/SATA and does NOT boot on virtio-blk until
    something (virt-v2v) converts it.  The virtio modules are still installed in
    /lib/modules, which is what virt-v2v needs to rebuild the initramfs.

    The disk is packaged as a VMware-style OVA: OVF 1.0 envelope (vmx-13,
    LSI Logic SCSI, E1000 NIC on "VM Network", BIOS firmware), a
    streamOptimized VMDK and a SHA256 manifest, in a ustar archive in the order
    .ovf, .mf, .vmdk.  The raw disk image is kept too, for boot tests.

Cache
    ``$FERRY_CACHE_DIR/test-guest`` or ``~/.cache/ferry/test-guest``, one
    sub-directory per hash of THIS file, so any change to the recipe rebuilds.
    Builds happen in a temporary directory that is renamed into place at the end
    (an interrupted build never leaves a half entry) under a lock file (two
    concurrent callers never build twice).

Use
    python tests/guest/build_guest.py [--cache-dir DIR] [--force] [--verify]
    prints a JSON object with the artifact paths on stdout.

    From Python (tests/ is not a package; load this file by path)::

        import importlib.util, sys
        spec = importlib.util.spec_from_file_location("ferry_test_guest", PATH)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod          # before exec_module (dataclasses)
        spec.loader.exec_module(mod)
        guest = mod.ensure_guest()            # -> GuestArtifacts

Building needs root (debootstrap, chroot, mount namespaces) and the Debian
packages debootstrap, qemu-utils, qemu-system-x86, libguestfs-tools,
e2fsprogs, fdisk and util-linux.  Using a cached guest needs none of that.
Python 3.11 standard library only.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import ctypes
import dataclasses
import fcntl
import glob
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from xml.sax.saxutils import escape as xml_escape

# --------------------------------------------------------------------------
# The recipe.  Every constant here is covered by the cache key (the hash of
# this file), so changing any of them rebuilds the guest.
# --------------------------------------------------------------------------
VM_NAME = "ferry-test-guest"
HOSTNAME = VM_NAME
ROOT_USER = "root"
ROOT_PASSWORD = "ferry"
LOGIN_MARKER = f"{HOSTNAME} login:"

SUITE = "bookworm"
ARCH = "amd64"
# Installed by debootstrap (minbase + what is needed to boot to a getty).
DEBOOTSTRAP_INCLUDE = [
    "systemd-sysv",
    "udev",
    "kmod",
    "initramfs-tools",
    "busybox",
    "iproute2",
]
# Installed afterwards with apt-get inside the chroot, once the initramfs and
# dpkg configuration below is in place (so the very first initramfs is the
# VMware-like one and excluded files are never unpacked).
APT_INSTALL = ["linux-image-amd64", "grub-pc"]

DISK_SIZE = 2 * 1024**3  # virtual size of the disk, bytes
PART_START = 1024**2  # partition 1 starts at 1 MiB
SECTOR = 512
FS_LABEL = "ferry-root"

OVF_OS_TYPE = "debian11_64Guest"  # vmw:osType, like a vSphere export
OVF_OS_CIM_ID = 96  # CIM OS id "Debian 64-Bit"
OVF_OS_DESCRIPTION = "Debian GNU/Linux 11 (64-bit)"
OVF_HW_VERSION = "vmx-13"
VCPUS = 1
MEMORY_MB = 1024
NETWORK_NAME = "VM Network"

OVA_NAME = f"{VM_NAME}.ova"
OVF_NAME = f"{VM_NAME}.ovf"
MF_NAME = f"{VM_NAME}.mf"
VMDK_NAME = f"{VM_NAME}-disk1.vmdk"
RAW_NAME = "disk.raw"
META_NAME = "guest.json"

# The initramfs of a guest installed on VMware with MODULES=dep only carries the
# drivers of VMware's virtual hardware.  We cannot use MODULES=dep here: in a
# chroot, mkinitramfs would look at the *build machine's* root device (which
# may well be virtio, e.g. /dev/vda, and then virtio_blk would be pulled in).
# So we use MODULES=list with an explicit list: VMware's storage controllers
# (LSI Logic SPI/SAS, PVSCSI), IDE and SATA (VMware offers both; QEMU's default
# PC machine gives the boot test an IDE disk), sd_mod and ext4.  virtio_* is
# deliberately absent.  There is deliberately NO hook that strips virtio out of
# every initramfs: virt-v2v converts a Debian guest by appending virtio_blk,
# virtio_pci, ... to /etc/initramfs-tools/modules and running update-initramfs,
# and a stripping hook would sabotage exactly the conversion Ferry must prove.
INITRAMFS_MODULES = [
    "mptspi",
    "mptsas",
    "vmw_pvscsi",  # VMware SCSI controllers
    "ata_piix",
    "ata_generic",
    "ahci",  # IDE / SATA
    "sd_mod",
    "ext4",
    "crc32c_generic",  # disk + root fs (+ metadata_csum)
]
INITRAMFS_REQUIRED = ["ata_piix", "ahci", "sd_mod", "ext4", "mptspi", "vmw_pvscsi"]
VIRTIO_MODULES = ["virtio_blk", "virtio_pci", "virtio_scsi", "virtio_net"]
VIRTIO_CONFIG = ["VIRTIO", "VIRTIO_PCI", "VIRTIO_BLK", "SCSI_VIRTIO", "VIRTIO_NET"]

# Keep the guest small: no docs/man pages/translations, and no kernel modules
# for hardware a VM never has (sound, wifi, bluetooth, media, GPUs and NICs of
# real machines, FC/iSCSI HBAs, ...).  Everything a hypervisor emulates stays:
# virtio (all of it), VMware (vmxnet3, pvscsi, mptspi, vmwgfx), IDE/SATA/AHCI,
# e1000/e1000e, rtl8139, pcnet32, qxl/bochs/virtio-gpu, usb, file systems.
_MODULE_DIRS_EXCLUDED = [
    "sound",
    "drivers/media",
    "drivers/net/wireless",
    "drivers/infiniband",
    "drivers/staging",
    "drivers/iio",
    "drivers/comedi",
    "drivers/isdn",
    "drivers/bluetooth",
    "drivers/gpu/drm/amd",
    "drivers/gpu/drm/nouveau",
    "drivers/gpu/drm/i915",
    "drivers/gpu/drm/radeon",
    "net/wireless",
    "net/mac80211",
    "net/bluetooth",
    "drivers/net/ethernet",
    "drivers/net/can",
    "drivers/net/wwan",
    "drivers/net/ieee802154",
    "drivers/scsi/lpfc",
    "drivers/scsi/qla2xxx",
    "drivers/scsi/qla4xxx",
    "drivers/scsi/bfa",
    "drivers/scsi/cxgbi",
    "drivers/scsi/csiostor",
    "drivers/scsi/qedf",
    "drivers/scsi/qedi",
    "drivers/scsi/bnx2fc",
    "drivers/scsi/bnx2i",
    "drivers/scsi/be2iscsi",
    "drivers/scsi/fnic",
    "fs/ocfs2",
    "fs/gfs2",
]
_MODULE_DIRS_KEPT = [  # re-included below an excluded directory
    "drivers/net/ethernet/intel",
    "drivers/net/ethernet/realtek",
    "drivers/net/ethernet/amd",
]
DPKG_EXCLUDES = (
    "\n".join(
        [
            "# Ferry test guest: keep the image small.",
            "path-exclude=/usr/share/doc/*",
            "path-include=/usr/share/doc/*/copyright",
            "path-exclude=/usr/share/man/*",
            "path-exclude=/usr/share/info/*",
            "path-exclude=/usr/share/locale/*",
            "path-include=/usr/share/locale/locale.alias",
            "path-exclude=/usr/share/lintian/*",
        ]
        + [
            f"path-exclude={prefix}/lib/modules/*/kernel/{d}/*"
            for d in _MODULE_DIRS_EXCLUDED
            for prefix in ("", "/usr")
        ]
        + [
            f"path-include={prefix}/lib/modules/*/kernel/{d}/*"
            for d in _MODULE_DIRS_KEPT
            for prefix in ("", "/usr")
        ]
    )
    + "\n"
)

# Fixed ext4 feature set (independent of the build host's /etc/mke2fs.conf):
# everything here is understood by bookworm's kernel, e2fsprogs and GRUB 2.06
# (which cannot read metadata_csum_seed, enabled by default elsewhere).
MKE2FS_CONF = """\
[defaults]
	base_features = sparse_super,large_file,filetype,resize_inode,dir_index,ext_attr
	default_mntopts = acl,user_xattr
	enable_periodic_fsck = 0
	blocksize = 4096
	inode_size = 256
	inode_ratio = 16384

[fs_types]
	ext4 = {
		features = has_journal,extent,huge_file,flex_bg,metadata_csum,64bit,dir_nlink,extra_isize
	}
"""

GRUB_DEFAULTS = """\
# Ferry test guest: serial console, boot quickly, no recovery entries.
GRUB_TIMEOUT=1
GRUB_CMDLINE_LINUX_DEFAULT=""
GRUB_CMDLINE_LINUX="console=tty0 console=ttyS0,115200n8"
GRUB_TERMINAL="console serial"
GRUB_SERIAL_COMMAND="serial --unit=0 --speed=115200"
GRUB_DISABLE_RECOVERY=true
GRUB_DISABLE_OS_PROBER=true
"""

NETWORKD_DHCP = """\
# Ferry test guest: DHCP on the (first) ethernet NIC.
[Match]
Name=en* eth*

[Network]
DHCP=yes
"""

_SCRIPT = Path(__file__).resolve()
_KEEP_ENTRIES = 2  # cache entries (recipe versions) to keep


# --------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------
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
    """Hash of this build script's syntax tree: the cache key.

    Hashing the tree rather than the bytes means reformatting or editing a
    comment does not throw away a guest that takes minutes to build.
    """
    tree = ast.dump(ast.parse(_SCRIPT.read_text()), include_attributes=False)
    return hashlib.sha256(tree.encode()).hexdigest()


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
    log = progress or _progress
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
            _build(tmp, key, log)
            if entry.exists():  # --force, or a broken entry
                old = cache_dir / f".old-{key[:16]}-{os.getpid()}"
                os.rename(entry, old)
                os.rename(tmp, entry)
                _rmtree(old)
            else:
                os.rename(tmp, entry)
        finally:
            if tmp.exists():
                log(f"removing unfinished build {tmp}")
                try:
                    _rmtree(tmp)
                except Exception as e:  # the next builder cleans it up (under the lock)
                    log(f"could not remove {tmp}: {e}")
        _prune(cache_dir, entry, log)
    found = _load_entry(entry)
    if not found:
        raise RuntimeError(f"built the test guest but {entry} does not look complete")
    log(f"test guest ready: {entry}")
    return found


# --------------------------------------------------------------------------
# Cache plumbing
# --------------------------------------------------------------------------
_T0 = time.monotonic()


def _progress(msg: str) -> None:
    print(
        f"[test-guest {time.strftime('%H:%M:%S')} +{time.monotonic() - _T0:5.0f}s] {msg}",
        file=sys.stderr,
        flush=True,
    )


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


def _mounts_under(path: Path) -> list[str]:
    prefix = str(path.resolve()).rstrip("/") + "/"
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mnt = line.split()[4].replace("\\040", " ")
            if mnt.startswith(prefix) or mnt == prefix[:-1]:
                found.append(mnt)
    return found


def _rmtree(path: Path) -> None:
    """rm -rf that never crosses into a mounted file system (a leftover /proc,
    /sys or /dev mount in a half-built chroot must not be descended into)."""
    if not path.exists():
        return
    for mnt in sorted(_mounts_under(path), key=len, reverse=True):
        subprocess.run(["umount", "-l", mnt], check=False)
    if _mounts_under(path):
        raise RuntimeError(f"refusing to delete {path}: file systems still mounted below it")
    subprocess.run(["rm", "-rf", "--one-file-system", "--", str(path)], check=True)


def _clean_stale(cache_dir: Path, log: Callable[[str], None]) -> None:
    """Remove leftovers of interrupted builds.  Only called with the lock held,
    so no other build can be in progress."""
    for p in sorted(cache_dir.glob(".tmp-*")) + sorted(cache_dir.glob(".old-*")):
        log(f"removing leftover of an interrupted build: {p}")
        _rmtree(p)


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
        _rmtree(old)


# --------------------------------------------------------------------------
# Host helpers
# --------------------------------------------------------------------------
_TOOLS = {  # command -> Debian package
    "debootstrap": "debootstrap",
    "qemu-img": "qemu-utils",
    "qemu-system-x86_64": "qemu-system-x86",
    "guestfish": "libguestfs-tools",
    "mkfs.ext4": "e2fsprogs",
    "sfdisk": "fdisk",
    "unshare": "util-linux",
    "chroot": "coreutils",
}


def _require_tools(names: list[str]) -> None:
    missing = [n for n in names if not shutil.which(n)]
    if missing:
        pkgs = sorted({_TOOLS.get(n, n) for n in missing})
        raise RuntimeError(f"missing tools {missing}; install the Debian packages {pkgs}")


def _die_with_parent() -> None:
    """preexec_fn: SIGKILL this child when the builder dies, so that a killed
    build never leaves processes writing into its (deleted) temp directory."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


# Commands that touch the chroot run in their own mount AND pid namespace:
# mounts vanish with them, and killing unshare (via --kill-child) kills every
# process of the namespace (debootstrap, dpkg, maintainer scripts...).
_UNSHARE = [
    "unshare",
    "--mount",
    "--propagation",
    "private",
    "--pid",
    "--fork",
    "--kill-child",
    "--",
]


class _Runner:
    """Runs commands, appending their output to the build log."""

    def __init__(self, logfile: Path):
        self.logfile = logfile

    def __call__(
        self,
        cmd: list[str],
        *,
        capture: bool = False,
        env: dict | None = None,
        input: str | None = None,
        check: bool = True,
        timeout: float | None = None,
    ) -> str:
        with open(self.logfile, "a") as log:
            log.write(f"\n$ {' '.join(cmd)}\n")
            log.flush()
            proc = subprocess.run(
                cmd,
                stdout=subprocess.PIPE if capture else log,
                stderr=log,
                text=True,
                env=env,
                input=input,
                timeout=timeout,
                stdin=None if input is not None else subprocess.DEVNULL,
                preexec_fn=_die_with_parent,
            )
            if capture:
                log.write(proc.stdout)
        if check and proc.returncode != 0:
            raise RuntimeError(
                f"command failed (exit {proc.returncode}): {' '.join(cmd)}\n"
                f"--- last lines of {self.logfile} ---\n{_tail(self.logfile)}"
            )
        return proc.stdout if capture else ""


def _tail(path: Path, n: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def _apt_source_stanzas() -> Iterator[dict]:
    """Yield the machine's apt sources as dicts (types, uris, suites,
    components, signed_by), from deb822 *.sources and one-line *.list files."""
    for path in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):
        try:
            text = Path(path).read_text()
        except OSError:
            continue
        for block in re.split(r"\n\s*\n", text):
            fields: dict[str, str] = {}
            last = None
            for line in block.splitlines():
                if not line.strip() or line.lstrip().startswith("#"):
                    continue
                if line[0].isspace() and last:  # continuation line
                    fields[last] += " " + line.strip()
                    continue
                k, _, v = line.partition(":")
                last = k.strip().lower()
                fields[last] = v.strip()
            if not fields or fields.get("enabled", "yes").lower() == "no":
                continue
            yield {
                "types": fields.get("types", "").split(),
                "uris": fields.get("uris", "").split(),
                "suites": fields.get("suites", "").split(),
                "components": fields.get("components", "").split(),
                "signed_by": fields.get("signed-by", ""),
            }
    lists = ["/etc/apt/sources.list", *sorted(glob.glob("/etc/apt/sources.list.d/*.list"))]
    for path in lists:
        try:
            lines = Path(path).read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            line = line.split("#", 1)[0].strip()
            m = re.match(r"^(deb)\s+(?:\[([^\]]*)\]\s+)?(\S+)\s+(\S+)\s*(.*)$", line)
            if not m:
                continue
            opts = dict(o.split("=", 1) for o in (m.group(2) or "").split() if "=" in o)
            yield {
                "types": ["deb"],
                "uris": [m.group(3)],
                "suites": [m.group(4)],
                "components": m.group(5).split(),
                "signed_by": opts.get("signed-by", ""),
            }


def detect_mirror() -> tuple[str, str | None]:
    """The Debian mirror this machine's apt uses, and its keyring (or None).

    Never hard-coded: $FERRY_DEBIAN_MIRROR, else the first enabled ``deb``
    source of a base suite (no -updates/-security) with component main.  A
    source for the suite we build (bookworm) wins over other suites."""
    env = os.environ.get("FERRY_DEBIAN_MIRROR")
    if env:
        return env, None
    best = None
    for s in _apt_source_stanzas():
        if "deb" not in s["types"] or "main" not in s["components"] or not s["uris"]:
            continue
        base = [x for x in s["suites"] if "-" not in x and "/" not in x]
        if not base:
            continue
        keyring = (
            s["signed_by"]
            if s["signed_by"].startswith("/") and os.path.exists(s["signed_by"])
            else None
        )
        cand = (s["uris"][0], keyring)
        if SUITE in base:
            return cand
        best = best or cand
    if best:
        return best
    raise RuntimeError(
        "could not find a Debian mirror in /etc/apt/sources.list(.d); set FERRY_DEBIAN_MIRROR"
    )


def _apt_proxy() -> str | None:
    """http proxy configured for apt on this machine, if any."""
    if not shutil.which("apt-config"):
        return None
    out = subprocess.run(
        ["apt-config", "shell", "P", "Acquire::http::Proxy"], capture_output=True, text=True
    ).stdout
    m = re.search(r"P='([^']*)'", out)
    return m.group(1) if m and m.group(1) not in ("", "DIRECT", "false") else None


_ACCEL_CACHE: dict[str, bool] = {}


def kvm_usable(kernel: Path | None = None, log: Callable[[str], None] = _progress) -> bool:
    """Can QEMU actually run a guest with KVM here?  /dev/kvm existing is not
    enough (nested/sandboxed hosts expose a /dev/kvm on which guests hang), so
    boot ``kernel`` with no root device and check it gets as far as its
    "VFS: Unable to mount root fs" panic.  FERRY_QEMU_ACCEL=kvm|tcg overrides."""
    forced = os.environ.get("FERRY_QEMU_ACCEL", "").lower()
    if forced in ("kvm", "tcg"):
        return forced == "kvm"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False
    if kernel is None:
        cands = sorted(glob.glob("/boot/vmlinuz-*"))
        if not cands:
            return False
        kernel = Path(cands[-1])
    if str(kernel) in _ACCEL_CACHE:
        return _ACCEL_CACHE[str(kernel)]
    logfile = Path(f"/tmp/ferry-kvm-probe-{os.getpid()}.log")
    cmd = [
        "qemu-system-x86_64",
        "-accel",
        "kvm",
        "-cpu",
        "host",
        "-m",
        "256",
        "-nodefaults",
        "-display",
        "none",
        "-no-reboot",
        "-serial",
        f"file:{logfile}",
        "-kernel",
        str(kernel),
        "-append",
        "console=ttyS0 panic=-1",
    ]
    ok = False
    with contextlib.suppress(subprocess.TimeoutExpired):
        subprocess.run(
            cmd,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
            timeout=15,
            preexec_fn=_die_with_parent,
        )
    try:
        ok = b"Kernel panic" in logfile.read_bytes()
        logfile.unlink()
    except OSError:
        pass
    _ACCEL_CACHE[str(kernel)] = ok
    log(f"KVM {'works' if ok else 'is NOT usable (guest did not boot); using TCG'}")
    return ok


def _libguestfs_env(kernel: Path, log: Callable[[str], None]) -> dict:
    env = dict(os.environ)
    env.setdefault("LIBGUESTFS_BACKEND", "direct")
    if "LIBGUESTFS_BACKEND_SETTINGS" not in env and not kvm_usable(kernel, log):
        env["LIBGUESTFS_BACKEND_SETTINGS"] = "force_tcg"
    return env


# --------------------------------------------------------------------------
# The build
# --------------------------------------------------------------------------
def _chroot(
    run: _Runner,
    root: Path,
    script: str,
    *,
    pkgcache: Path | None = None,
    capture: bool = False,
    env_extra: dict | None = None,
) -> str:
    """Run a shell script inside the chroot, in a private mount namespace: the
    /proc, /sys (and apt cache) mounts vanish with the process, even if the
    build is killed, so nothing is ever left mounted inside the tree."""
    env = {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "LC_ALL": "C",
        "HOME": "/root",
        "DEBIAN_FRONTEND": "noninteractive",
        "DEBCONF_NONINTERACTIVE_SEEN": "true",
        "R": str(root),
        "SCRIPT": script,
        "PKGCACHE": str(pkgcache or ""),
    }
    for k in ("http_proxy", "https_proxy", "no_proxy"):
        if k in os.environ:
            env[k] = os.environ[k]
    env.update(env_extra or {})
    outer = (
        'mount -t proc proc "$R/proc" && mount -t sysfs sysfs "$R/sys" && '
        '{ [ -z "$PKGCACHE" ] || mount --bind "$PKGCACHE" "$R/var/cache/apt/archives"; } && '
        'exec chroot "$R" /bin/sh -ec "$SCRIPT"'
    )
    return run([*_UNSHARE, "sh", "-ec", outer], env=env, capture=capture)


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    """Write a file inside the chroot.  An existing symlink is replaced, never
    followed (it could point outside the tree, e.g. /etc/resolv.conf)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_symlink() or path.exists():
        path.unlink()
    path.write_text(text)
    path.chmod(mode)


def _build(work: Path, key: str, log: Callable[[str], None]) -> None:
    if os.geteuid() != 0:
        raise RuntimeError(
            "building the test guest needs root (debootstrap, chroot); "
            "run as root once, later runs use the cache"
        )
    _require_tools(
        [
            "debootstrap",
            "qemu-img",
            "qemu-system-x86_64",
            "guestfish",
            "mkfs.ext4",
            "sfdisk",
            "unshare",
            "chroot",
        ]
    )
    t_start = time.monotonic()
    if work.exists():
        _rmtree(work)
    work.mkdir(parents=True)
    run = _Runner(work / "build.log")
    root = work / "rootfs"
    digest = bytes.fromhex(key)
    fs_uuid = str(uuid.UUID(bytes=digest[:16], version=4))
    mac = f"00:50:56:{digest[16] & 0x3F:02x}:{digest[17]:02x}:{digest[18]:02x}"
    log(f"building the test guest in {work} (log: {work / 'build.log'})")

    # 1. debootstrap ------------------------------------------------------
    mirror, keyring = detect_mirror()
    log(f"debootstrap {SUITE}/{ARCH} minbase from {mirror} (a few minutes)")
    proxy = _apt_proxy()
    env = dict(os.environ, LC_ALL="C")
    if proxy:
        env.setdefault("http_proxy", proxy)
        os.environ.setdefault("http_proxy", proxy)  # for apt in the chroot
    pkgcache = work.parent / ".debs"  # survives builds
    (pkgcache / "partial").mkdir(parents=True, exist_ok=True)
    cmd = [
        *_UNSHARE,
        "debootstrap",
        "--variant=minbase",
        f"--arch={ARCH}",
        "--components=main",
        f"--include={','.join(DEBOOTSTRAP_INCLUDE)}",
        f"--cache-dir={pkgcache}",
    ]
    if keyring:
        cmd.append(f"--keyring={keyring}")
    run([*cmd, SUITE, str(root), mirror], env=env)

    # 2. configuration that must exist before the kernel is installed --------
    log("configuring dpkg excludes, initramfs-tools (no virtio), GRUB defaults")
    _write(root / "etc/dpkg/dpkg.cfg.d/01-ferry-small", DPKG_EXCLUDES)
    _write(root / "usr/sbin/policy-rc.d", "#!/bin/sh\nexit 101\n", 0o755)
    _write(
        root / "etc/initramfs-tools/conf.d/ferry-vmware-like.conf",
        "# Ferry test guest: like a VMware guest built with MODULES=dep, only the\n"
        "# drivers listed in /etc/initramfs-tools/modules, and NO virtio drivers.\n"
        "# (MODULES=dep itself cannot be used in a chroot: it would probe the\n"
        "# build machine's root disk.)\nMODULES=list\nCOMPRESS=gzip\n",
    )
    with open(root / "etc/initramfs-tools/modules", "a") as f:
        f.write(
            "# Ferry test guest: VMware SCSI, IDE/SATA, disk and root fs.\n"
            "# No virtio: a converter (virt-v2v) appends those.\n"
        )
        f.write("".join(m + "\n" for m in INITRAMFS_MODULES))
    _write(root / "etc/default/grub.d/ferry.cfg", GRUB_DEFAULTS)
    if os.path.exists("/etc/resolv.conf"):  # name resolution for apt
        _write(root / "etc/resolv.conf", Path("/etc/resolv.conf").read_text())

    # 3. kernel + GRUB -----------------------------------------------------
    log(f"installing {' '.join(APT_INSTALL)} in the chroot")
    _chroot(
        run,
        root,
        f"""
        # what debootstrap unpacked before the dpkg excludes existed
        find /usr/share/doc -depth -type f ! -name copyright -delete || true
        find /usr/share/doc -depth -mindepth 1 -type d -empty -delete || true
        rm -rf /usr/share/man/* /usr/share/info/* /usr/share/lintian/* || true
        find /usr/share/locale -mindepth 1 -maxdepth 1 ! -name locale.alias \
            -exec rm -rf {{}} + || true
        printf '%s\\n' 'grub-pc grub-pc/install_devices multiselect' \
            'grub-pc grub-pc/install_devices_empty boolean true' | debconf-set-selections
        apt-get update
        apt-get install -y --no-install-recommends {" ".join(APT_INSTALL)}
        """,
        pkgcache=pkgcache,
    )
    kernels = sorted((root / "boot").glob("vmlinuz-*"))
    if len(kernels) != 1:
        raise RuntimeError(f"expected one kernel in the guest, found {kernels}")
    kver = kernels[0].name[len("vmlinuz-") :]
    log(f"guest kernel {kver}")

    # 4. system configuration ---------------------------------------------
    log("configuring hostname, fstab, root password, serial getty, network")
    _write(root / "etc/hostname", HOSTNAME + "\n")
    _write(
        root / "etc/hosts",
        f"127.0.0.1\tlocalhost\n127.0.1.1\t{HOSTNAME}\n::1\tlocalhost ip6-localhost ip6-loopback\n",
    )
    _write(
        root / "etc/fstab",
        "# <file system> <mount point> <type> <options> <dump> <pass>\n"
        f"UUID={fs_uuid}\t/\text4\terrors=remount-ro\t0\t1\n",
    )
    _write(root / "etc/systemd/network/20-ferry-dhcp.network", NETWORKD_DHCP)
    _write(root / "etc/resolv.conf", "")
    _write(root / "etc/machine-id", "")  # generated on first boot
    (root / "var/lib/dbus/machine-id").unlink(missing_ok=True)
    _chroot(
        run,
        root,
        f"""
        echo '{ROOT_USER}:{ROOT_PASSWORD}' | chpasswd
        systemctl enable serial-getty@ttyS0.service systemd-networkd.service
        if [ -e /lib/systemd/system/systemd-firstboot.service ]; then
            systemctl mask systemd-firstboot.service; fi
        rm -f /usr/sbin/policy-rc.d
        rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/apt/* \
               /var/cache/apt/archives/*.deb \
               /var/cache/debconf/*-old /var/lib/dpkg/*-old /root/.bash_history
        find /var/log -type f -exec truncate -s 0 {{}} +
        """,
    )

    # 5. checks on the initramfs and the kernel ----------------------------
    log("checking the initramfs: lsinitramfs must list no virtio module")
    listing = _chroot(run, root, f"lsinitramfs /boot/initrd.img-{kver}", capture=True)
    in_initrd = sorted(
        {Path(p).name.split(".ko")[0] for p in listing.split() if ".ko" in Path(p).name}
    )
    virtio_in_initrd = [m for m in in_initrd if "virtio" in m]
    if virtio_in_initrd:
        raise RuntimeError(f"virtio modules in the initramfs: {virtio_in_initrd}")
    missing = [m for m in INITRAMFS_REQUIRED if m not in in_initrd]
    if missing:
        raise RuntimeError(f"initramfs lacks required modules {missing}")
    moddir = root / "lib/modules" / kver
    virtio_on_disk = {
        m: [str(p.relative_to(moddir)) for p in moddir.rglob(m + ".ko*")] for m in VIRTIO_MODULES
    }
    kconfig = {}
    for line in (root / f"boot/config-{kver}").read_text().splitlines():
        m = re.match(r"^CONFIG_(\w+)=(.*)$", line)
        if m and m.group(1) in VIRTIO_CONFIG:
            kconfig[m.group(1)] = m.group(2)
    builtin = sorted(k for k, v in kconfig.items() if v == "y")
    log(f"kernel config: {' '.join(f'{k}={v}' for k, v in sorted(kconfig.items()))}")
    for m, where in virtio_on_disk.items():
        if (
            not where
            and kconfig.get(
                {
                    "virtio_blk": "VIRTIO_BLK",
                    "virtio_pci": "VIRTIO_PCI",
                    "virtio_scsi": "SCSI_VIRTIO",
                    "virtio_net": "VIRTIO_NET",
                }[m]
            )
            != "y"
        ):
            raise RuntimeError(f"{m} is neither a module in /lib/modules nor built in")
    if builtin:
        log(f"WARNING: built into the kernel (cannot be kept out of boot): {builtin}")
    os_release = dict(
        re.findall(r'^(\w+)="?([^"\n]*)"?$', (root / "usr/lib/os-release").read_text(), re.M)
    )
    os_name = os_release.get("PRETTY_NAME", "Debian")
    shutil.copyfile(root / f"boot/vmlinuz-{kver}", work / f"vmlinuz-{kver}")
    shutil.copyfile(root / f"boot/initrd.img-{kver}", work / f"initrd.img-{kver}")
    rootfs_bytes = int(run(["du", "-sxb", str(root)], capture=True).split()[0])

    # 6. disk image: ext4 written straight into the partition, no loop device --
    log("creating the 2 GiB disk: ext4 (mkfs.ext4 -d) at 1 MiB, MBR partition table")
    raw = work / RAW_NAME
    with open(raw, "wb") as f:
        f.truncate(DISK_SIZE)
    conf = work / "mke2fs.conf"
    conf.write_text(MKE2FS_CONF)
    fs_blocks = (DISK_SIZE - PART_START) // 4096
    run(
        [
            "mkfs.ext4",
            "-F",
            "-q",
            "-t",
            "ext4",
            "-L",
            FS_LABEL,
            "-U",
            fs_uuid,
            "-b",
            "4096",
            "-E",
            f"offset={PART_START},nodiscard,root_owner=0:0",
            "-d",
            str(root),
            str(raw),
            str(fs_blocks),
        ],
        env=dict(os.environ, MKE2FS_CONFIG=str(conf)),
    )
    run(
        [
            "sfdisk",
            "--no-reread",
            "--no-tell-kernel",
            "--wipe",
            "never",
            "--wipe-partitions",
            "never",
            str(raw),
        ],
        input=(
            f"label: dos\nlabel-id: 0x{digest[20:24].hex()}\nunit: sectors\n\n"
            f"start={PART_START // SECTOR}, size={(DISK_SIZE - PART_START) // SECTOR}, "
            "type=83, bootable\n"
        ),
    )
    _rmtree(root)  # ~0.5 GB, no longer needed

    # 7. bootloader: GRUB, installed from inside the guest via libguestfs ------
    # GRUB (not extlinux) because virt-v2v only converts guests whose bootloader
    # is GRUB ("no bootloader detected" otherwise).  libguestfs gives us a real
    # /dev/sda with /dev/sda1, so grub-install and update-grub behave exactly as
    # in an installed system, with no loop devices or partition scanning needed.
    log("installing GRUB with guestfish (grub-install /dev/sda, update-grub)")
    gf_env = _libguestfs_env(work / f"vmlinuz-{kver}", log)
    out = run(
        ["guestfish", "--rw", "--format=raw", "-a", str(raw), "-m", "/dev/sda1"],
        env=gf_env,
        capture=True,
        input=(
            'sh "export PATH=/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C; '
            "grub-install --target=i386-pc /dev/sda 2>&1 && update-grub 2>&1 && "
            "echo FERRY_GRUB_OK && grep -E '^[[:space:]]*linux[[:space:]]' "
            '/boot/grub/grub.cfg"\n'
            "statvfs /\n"
            "umount-all\n"
            "e2fsck /dev/sda1 correct:true forceall:false\n"
        ),
    )
    if "FERRY_GRUB_OK" not in out:
        raise RuntimeError(f"GRUB installation failed:\n{out}")
    linux_lines = [
        ln.strip()
        for ln in out.split("FERRY_GRUB_OK", 1)[1].splitlines()
        if ln.strip().startswith("linux")
    ]
    if (
        not linux_lines
        or f"root=UUID={fs_uuid}" not in linux_lines[0]
        or "console=ttyS0" not in linux_lines[0]
    ):
        raise RuntimeError(f"unexpected grub.cfg kernel line(s): {linux_lines}")
    sv = dict(re.findall(r"^(\w+): (\d+)$", out, re.M))
    fs_used = (int(sv["blocks"]) - int(sv["bfree"])) * int(sv["bsize"])
    log(f"root file system: {fs_used / 1e6:.0f} MB used; grub: {linux_lines[0]}")

    # 8. VMDK + OVF + manifest -> OVA --------------------------------------
    log("converting to a streamOptimized VMDK")
    vmdk = work / VMDK_NAME
    run(
        [
            "qemu-img",
            "convert",
            "-f",
            "raw",
            "-O",
            "vmdk",
            "-o",
            "subformat=streamOptimized,adapter_type=lsilogic",
            str(raw),
            str(vmdk),
        ]
    )
    info = json.loads(run(["qemu-img", "info", "--output=json", str(vmdk)], capture=True))
    if info.get("format-specific", {}).get("data", {}).get("create-type") != "streamOptimized":
        raise RuntimeError(f"qemu-img did not write a streamOptimized VMDK: {info}")
    run(["qemu-img", "compare", "-f", "raw", "-F", "vmdk", str(raw), str(vmdk)])
    populated = _allocated_bytes(run, raw)
    ovf = work / OVF_NAME
    ovf.write_text(_ovf(vmdk.stat().st_size, populated, mac))
    mf = work / MF_NAME
    mf.write_text("".join(f"SHA256({p.name})= {_sha256(p)}\n" for p in (ovf, vmdk)))
    ova = work / OVA_NAME
    log("writing the OVA (ustar: .ovf, .mf, .vmdk)")
    with tarfile.open(ova, "w", format=tarfile.USTAR_FORMAT) as tar:
        for p in (ovf, mf, vmdk):
            ti = tar.gettarinfo(str(p), arcname=p.name)
            ti.uid = ti.gid = 64
            ti.uname = ti.gname = "someone"
            ti.mode = 0o644
            with open(p, "rb") as f:
                tar.addfile(ti, f)
    vmdk_size = vmdk.stat().st_size
    for p in (vmdk, conf):
        p.unlink()

    # 9. metadata last: its presence marks the entry complete -----------------
    meta = {
        "recipe_hash": key,
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "build_seconds": round(time.monotonic() - t_start, 1),
        "vm_name": VM_NAME,
        "hostname": HOSTNAME,
        "root_user": ROOT_USER,
        "root_password": ROOT_PASSWORD,
        "login_marker": LOGIN_MARKER,
        "os_name": os_name,
        "os_release": os_release,
        "kernel_version": kver,
        "kernel": f"vmlinuz-{kver}",
        "initrd": f"initrd.img-{kver}",
        "mirror": mirror,
        "mac_address": mac,
        "root_fs_uuid": fs_uuid,
        "fs_label": FS_LABEL,
        "disk_virtual_size": DISK_SIZE,
        "raw_allocated_bytes": populated,
        "rootfs_bytes": rootfs_bytes,
        "fs_used_bytes": fs_used,
        "vmdk_size": vmdk_size,
        "ova_size": ova.stat().st_size,
        "grub_linux_line": linux_lines[0],
        "initramfs_modules": in_initrd,
        "initramfs_virtio_modules": virtio_in_initrd,
        "virtio_modules_on_disk": virtio_on_disk,
        "kernel_config_virtio": kconfig,
        "virtio_builtin": builtin,
    }
    (work / META_NAME).write_text(json.dumps(meta, indent=2) + "\n")
    log(
        f"built in {meta['build_seconds']:.0f}s: OVA {meta['ova_size'] / 1e6:.0f} MB, "
        f"raw {populated / 1e6:.0f} MB allocated of {DISK_SIZE / 2**30:.0f} GiB"
    )


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _allocated_bytes(run: _Runner, raw: Path) -> int:
    """Bytes of the disk that hold data (what vSphere calls populatedSize)."""
    extents = json.loads(
        run(["qemu-img", "map", "--output=json", "-f", "raw", str(raw)], capture=True)
    )
    return sum(e["length"] for e in extents if e.get("data"))


def _ovf(vmdk_size: int, populated: int, mac: str) -> str:
    """An OVF 1.0 envelope shaped like a vSphere (ovftool) export."""
    name = xml_escape(VM_NAME)
    net = xml_escape(NETWORK_NAME)
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<!--Generated by Ferry's test-guest builder, shaped like a VMware vSphere export-->
<Envelope vmw:buildId="build-ferry-test" xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:cim="http://schemas.dmtf.org/wbem/wscim/1/common" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1" xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData" xmlns:vmw="http://www.vmware.com/schema/ovf" xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
  <References>
    <File ovf:href="{VMDK_NAME}" ovf:id="file1" ovf:size="{vmdk_size}"/>
  </References>
  <DiskSection>
    <Info>Virtual disk information</Info>
    <Disk ovf:capacity="{DISK_SIZE}" ovf:capacityAllocationUnits="byte" ovf:diskId="vmdisk1" ovf:fileRef="file1" ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized" ovf:populatedSize="{populated}"/>
  </DiskSection>
  <NetworkSection>
    <Info>The list of logical networks</Info>
    <Network ovf:name="{net}">
      <Description>The {net} network</Description>
    </Network>
  </NetworkSection>
  <VirtualSystem ovf:id="{name}">
    <Info>A virtual machine</Info>
    <Name>{name}</Name>
    <OperatingSystemSection ovf:id="{OVF_OS_CIM_ID}" vmw:osType="{OVF_OS_TYPE}">
      <Info>The kind of installed guest operating system</Info>
      <Description>{xml_escape(OVF_OS_DESCRIPTION)}</Description>
    </OperatingSystemSection>
    <VirtualHardwareSection>
      <Info>Virtual hardware requirements</Info>
      <System>
        <vssd:ElementName>Virtual Hardware Family</vssd:ElementName>
        <vssd:InstanceID>0</vssd:InstanceID>
        <vssd:VirtualSystemIdentifier>{name}</vssd:VirtualSystemIdentifier>
        <vssd:VirtualSystemType>{OVF_HW_VERSION}</vssd:VirtualSystemType>
      </System>
      <Item>
        <rasd:AllocationUnits>hertz * 10^6</rasd:AllocationUnits>
        <rasd:Description>Number of Virtual CPUs</rasd:Description>
        <rasd:ElementName>{VCPUS} virtual CPU(s)</rasd:ElementName>
        <rasd:InstanceID>1</rasd:InstanceID>
        <rasd:ResourceType>3</rasd:ResourceType>
        <rasd:VirtualQuantity>{VCPUS}</rasd:VirtualQuantity>
        <vmw:CoresPerSocket ovf:required="false">1</vmw:CoresPerSocket>
      </Item>
      <Item>
        <rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits>
        <rasd:Description>Memory Size</rasd:Description>
        <rasd:ElementName>{MEMORY_MB}MB of memory</rasd:ElementName>
        <rasd:InstanceID>2</rasd:InstanceID>
        <rasd:ResourceType>4</rasd:ResourceType>
        <rasd:VirtualQuantity>{MEMORY_MB}</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:Address>0</rasd:Address>
        <rasd:Description>SCSI Controller</rasd:Description>
        <rasd:ElementName>SCSI controller 0</rasd:ElementName>
        <rasd:InstanceID>3</rasd:InstanceID>
        <rasd:ResourceSubType>lsilogic</rasd:ResourceSubType>
        <rasd:ResourceType>6</rasd:ResourceType>
        <vmw:Config ovf:required="false" vmw:key="slotInfo.pciSlotNumber" vmw:value="16"/>
      </Item>
      <Item>
        <rasd:Address>1</rasd:Address>
        <rasd:Description>IDE Controller</rasd:Description>
        <rasd:ElementName>IDE 1</rasd:ElementName>
        <rasd:InstanceID>4</rasd:InstanceID>
        <rasd:ResourceType>5</rasd:ResourceType>
      </Item>
      <Item>
        <rasd:Address>0</rasd:Address>
        <rasd:Description>IDE Controller</rasd:Description>
        <rasd:ElementName>IDE 0</rasd:ElementName>
        <rasd:InstanceID>5</rasd:InstanceID>
        <rasd:ResourceType>5</rasd:ResourceType>
      </Item>
      <Item ovf:required="false">
        <rasd:AutomaticAllocation>false</rasd:AutomaticAllocation>
        <rasd:ElementName>Video card</rasd:ElementName>
        <rasd:InstanceID>6</rasd:InstanceID>
        <rasd:ResourceType>24</rasd:ResourceType>
        <vmw:Config ovf:required="false" vmw:key="enable3DSupport" vmw:value="false"/>
        <vmw:Config ovf:required="false" vmw:key="useAutoDetect" vmw:value="false"/>
        <vmw:Config ovf:required="false" vmw:key="videoRamSizeInKB" vmw:value="4096"/>
      </Item>
      <Item ovf:required="false">
        <rasd:AutomaticAllocation>false</rasd:AutomaticAllocation>
        <rasd:ElementName>VMCI device</rasd:ElementName>
        <rasd:InstanceID>7</rasd:InstanceID>
        <rasd:ResourceSubType>vmware.vmci</rasd:ResourceSubType>
        <rasd:ResourceType>1</rasd:ResourceType>
        <vmw:Config ovf:required="false" vmw:key="allowUnrestrictedCommunication" vmw:value="false"/>
      </Item>
      <Item>
        <rasd:AddressOnParent>0</rasd:AddressOnParent>
        <rasd:ElementName>Hard disk 1</rasd:ElementName>
        <rasd:HostResource>ovf:/disk/vmdisk1</rasd:HostResource>
        <rasd:InstanceID>8</rasd:InstanceID>
        <rasd:Parent>3</rasd:Parent>
        <rasd:ResourceType>17</rasd:ResourceType>
        <vmw:Config ovf:required="false" vmw:key="backing.writeThrough" vmw:value="false"/>
      </Item>
      <Item>
        <rasd:Address>{mac}</rasd:Address>
        <rasd:AddressOnParent>7</rasd:AddressOnParent>
        <rasd:AutomaticAllocation>true</rasd:AutomaticAllocation>
        <rasd:Connection>{net}</rasd:Connection>
        <rasd:Description>E1000 ethernet adapter on &quot;{net}&quot;</rasd:Description>
        <rasd:ElementName>Network adapter 1</rasd:ElementName>
        <rasd:InstanceID>9</rasd:InstanceID>
        <rasd:ResourceSubType>E1000</rasd:ResourceSubType>
        <rasd:ResourceType>10</rasd:ResourceType>
        <vmw:Config ovf:required="false" vmw:key="slotInfo.pciSlotNumber" vmw:value="33"/>
        <vmw:Config ovf:required="false" vmw:key="wakeOnLanEnabled" vmw:value="true"/>
        <vmw:Config ovf:required="false" vmw:key="connectable.allowGuestControl" vmw:value="true"/>
      </Item>
      <vmw:Config ovf:required="false" vmw:key="cpuHotAddEnabled" vmw:value="false"/>
      <vmw:Config ovf:required="false" vmw:key="memoryHotAddEnabled" vmw:value="false"/>
      <vmw:Config ovf:required="false" vmw:key="firmware" vmw:value="bios"/>
      <vmw:Config ovf:required="false" vmw:key="powerOpInfo.powerOffType" vmw:value="soft"/>
      <vmw:Config ovf:required="false" vmw:key="powerOpInfo.resetType" vmw:value="soft"/>
      <vmw:Config ovf:required="false" vmw:key="powerOpInfo.suspendType" vmw:value="hard"/>
      <vmw:Config ovf:required="false" vmw:key="tools.syncTimeWithHost" vmw:value="false"/>
      <vmw:ExtraConfig ovf:required="false" vmw:key="ethernet0.addressType" vmw:value="static"/>
      <vmw:ExtraConfig ovf:required="false" vmw:key="ethernet0.address" vmw:value="{mac}"/>
    </VirtualHardwareSection>
  </VirtualSystem>
</Envelope>
"""


# --------------------------------------------------------------------------
# Boot tests (--verify)
# --------------------------------------------------------------------------
class SerialVM:
    """A QEMU VM whose serial console is our stdin/stdout pipe."""

    def __init__(self, cmd: list[str], logfile: Path):
        self.cmd = cmd
        self.buf = bytearray()
        self.cond = threading.Condition()
        self.log = open(logfile, "wb")
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        fd = self.proc.stdout.fileno()
        while True:
            chunk = os.read(fd, 65536)
            with self.cond:
                if not chunk:
                    self.cond.notify_all()
                    return
                self.buf += chunk
                self.log.write(chunk)
                self.log.flush()
                self.cond.notify_all()

    def expect(
        self, patterns: list[bytes], timeout: float, start: int = 0
    ) -> tuple[int, re.Match, int] | None:
        """Wait until one of the regexes matches the output after offset
        ``start``; return (pattern index, match, end offset), None on timeout."""
        deadline = time.monotonic() + timeout
        rx = [re.compile(p, re.S) for p in patterns]
        with self.cond:
            while True:
                text = bytes(self.buf[start:])
                hits = [(m.start(), i, m) for i, r in enumerate(rx) if (m := r.search(text))]
                if hits:
                    _, i, m = min(hits, key=lambda h: h[0])
                    return i, m, start + m.end()
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self.reader.is_alive()):
                    return None
                self.cond.wait(min(left, 1.0))

    def send(self, text: str) -> None:
        self.proc.stdin.write(text.encode())
        self.proc.stdin.flush()

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.reader.join(5)
        self.log.close()


def qemu_command(
    raw: Path, bus: str, kvm: bool, memory_mb: int = MEMORY_MB, mac: str = ""
) -> list[str]:
    """QEMU command line booting ``raw`` (in snapshot mode: the image is never
    modified) with its disk on ``bus`` ("ide" or "virtio"), serial on stdio."""
    accel = ["-accel", "kvm", "-cpu", "host"] if kvm else ["-accel", "tcg"]
    return [
        "qemu-system-x86_64",
        *accel,
        "-machine",
        "pc",
        "-m",
        str(memory_mb),
        "-smp",
        "1",
        "-nodefaults",
        "-vga",
        "std",
        "-display",
        "none",
        "-monitor",
        "none",
        "-serial",
        "stdio",
        "-no-reboot",
        "-nic",
        "user,model=e1000" + (f",mac={mac}" if mac else ""),
        "-drive",
        f"file={raw},format=raw,if={bus},snapshot=on",
    ]


def _shell_output(vm: SerialVM, start: int, command: str, timeout: float = 120) -> str:
    """Run a command in the shell on the serial console, return its output.
    The markers are computed by the shell, so the echoed command line (which the
    tty may wrap) never matches them."""
    vm.send(f"echo FERRY_BEGIN_$((6*6)); {command}; echo FERRY_END_$((6*7))\n")
    hit = vm.expect([rb"FERRY_BEGIN_36\r?\n(.*?)FERRY_END_42"], timeout, start)
    if not hit:
        return "(no answer)"
    text = hit[1].group(1).decode(errors="replace")
    return re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]", "", text).replace("\r", "").strip()


def verify_guest(
    guest: GuestArtifacts,
    *,
    log: Callable[[str], None] = _progress,
    boot_timeout: float = 900,
    virtio_timeout: float = 600,
) -> dict:
    """Boot the raw image (1) on IDE: must reach the login prompt, log in as
    root and run a few commands; (2) on virtio-blk: must NOT reach the login
    prompt (the initramfs has no virtio driver, so it drops to a shell)."""
    _require_tools(["qemu-system-x86_64"])
    kvm = kvm_usable(guest.kernel, log)
    result: dict = {"accel": "kvm" if kvm else "tcg"}
    outdir = guest.directory or guest.raw.parent

    log(f"boot test 1: IDE disk, {result['accel'].upper()}, waiting for {guest.login_marker!r}")
    vm = SerialVM(
        qemu_command(guest.raw, "ide", kvm, mac=guest.mac_address), outdir / "verify-ide-serial.log"
    )
    try:
        hit = vm.expect([re.escape(guest.login_marker.encode())], boot_timeout)
        ide: dict = {"reached_login": bool(hit), "seconds_to_login": None}
        if hit:
            ide["seconds_to_login"] = round(vm.elapsed(), 1)
            log(f"login prompt after {ide['seconds_to_login']}s; logging in as root")
            vm.send(guest.root_user + "\n")
            pw = vm.expect([rb"[Pp]assword:"], 60, hit[2])
            if pw:
                vm.send(guest.root_password + "\n")
                prompt = re.escape(f"{guest.root_user}@{guest.hostname}".encode()) + rb"[^\n]*# "
                sh = vm.expect([prompt, rb"Login incorrect"], 120, pw[2])
                ide["logged_in"] = bool(sh and sh[0] == 0)
                if ide["logged_in"]:
                    ide["shell"] = _shell_output(
                        vm,
                        sh[2],
                        "uname -r; cat /proc/cmdline; findmnt -no SOURCE,FSTYPE /; "
                        "lsblk -dno NAME,TRAN,SIZE 2>/dev/null || cat /proc/partitions; "
                        "lsmod | grep -c '^virtio' || true",
                    )
        result["ide"] = ide
    finally:
        vm.close()
    log(f"boot test 1 result: {json.dumps(result['ide'])}")

    log("boot test 2: the same disk on virtio-blk must NOT reach the login prompt")
    vm = SerialVM(
        qemu_command(guest.raw, "virtio", kvm, mac=guest.mac_address),
        outdir / "verify-virtio-serial.log",
    )
    try:
        hit = vm.expect(
            [re.escape(guest.login_marker.encode()), rb"\(initramfs\) ", rb"Kernel panic"],
            virtio_timeout,
        )
        virtio: dict = {
            "reached_login": bool(hit and hit[0] == 0),
            "seconds": round(vm.elapsed(), 1),
        }
        if hit is None:
            virtio["outcome"] = f"no login prompt within {virtio_timeout}s"
        elif hit[0] == 0:
            virtio["outcome"] = "booted to the login prompt (virtio driver must be built in)"
        else:
            text = bytes(vm.buf).decode(errors="replace")
            virtio["outcome"] = "dropped to the initramfs shell" if hit[0] == 1 else "kernel panic"
            virtio["console"] = [
                ln.strip()
                for ln in text.replace("\r", "").splitlines()
                if re.search(
                    r"Gave up waiting|ALERT!|does not exist|"
                    r"Dropping to a shell",
                    ln,
                )
            ]
            if hit[0] == 1:
                virtio["initramfs_shell"] = _shell_output(
                    vm,
                    hit[2],
                    "echo block devices: $(ls /sys/class/block); "
                    "for d in /sys/bus/pci/devices/*; do "
                    "echo $(basename $d) $(cat $d/vendor):$(cat $d/device) "
                    "driver=$(basename $(readlink $d/driver) 2>/dev/null); done; "
                    "ls /sys/bus/virtio 2>&1; lsmod | grep -c virtio",
                )
        result["virtio"] = virtio
    finally:
        vm.close()
    log(f"boot test 2 result: {virtio['outcome']} after {virtio['seconds']}s")

    result["ok"] = bool(
        result["ide"]["reached_login"]
        and result["ide"].get("logged_in")
        and not result["virtio"]["reached_login"]
    )
    (outdir / "verify.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


# --------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help=f"cache directory (default: {default_cache_dir()})",
    )
    ap.add_argument("--force", action="store_true", help="rebuild even if cached")
    ap.add_argument(
        "--verify",
        action="store_true",
        help="boot-test the guest under QEMU (IDE: must log in; virtio: must not boot)",
    )
    args = ap.parse_args(argv)

    def _term(signum, frame):  # run the finally: clean-ups on SIGTERM
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _term)

    guest = ensure_guest(args.cache_dir, force=args.force)
    out = guest.to_json()
    rc = 0
    if args.verify:
        out["verify"] = verify_guest(guest)
        rc = 0 if out["verify"]["ok"] else 1
    print(json.dumps(out, indent=2))
    return rc


if __name__ == "__main__":
    sys.exit(main())
