"""Host helpers of the test-guest builder: required tools, child processes tied to
the builder, the build log runner, the machine's Debian mirror and proxy, KVM."""

from __future__ import annotations

import contextlib
import ctypes
import glob
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from guestkit.recipe import SUITE

_T0 = time.monotonic()


def say(msg: str) -> None:
    print(
        f"[test-guest {time.strftime('%H:%M:%S')} +{time.monotonic() - _T0:5.0f}s] {msg}",
        file=sys.stderr,
        flush=True,
    )


def _mounts_under(path: Path) -> list[str]:
    prefix = str(path.resolve()).rstrip("/") + "/"
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mnt = line.split()[4].replace("\\040", " ")
            if mnt.startswith(prefix) or mnt == prefix[:-1]:
                found.append(mnt)
    return found


def rmtree(path: Path) -> None:
    """rm -rf that never crosses into a mounted file system (a leftover /proc,
    /sys or /dev mount in a half-built chroot must not be descended into)."""
    if not path.exists():
        return
    for mnt in sorted(_mounts_under(path), key=len, reverse=True):
        subprocess.run(["umount", "-l", mnt], check=False)
    if _mounts_under(path):
        raise RuntimeError(f"refusing to delete {path}: file systems still mounted below it")
    subprocess.run(["rm", "-rf", "--one-file-system", "--", str(path)], check=True)


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


def require_tools(names: list[str]) -> None:
    missing = [n for n in names if not shutil.which(n)]
    if missing:
        pkgs = sorted({_TOOLS.get(n, n) for n in missing})
        raise RuntimeError(f"missing tools {missing}; install the Debian packages {pkgs}")


def die_with_parent() -> None:
    """preexec_fn: SIGKILL this child when the builder dies, so that a killed
    build never leaves processes writing into its (deleted) temp directory."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


# Commands that touch the chroot run in their own mount AND pid namespace:
# mounts vanish with them, and killing unshare (via --kill-child) kills every
# process of the namespace (debootstrap, dpkg, maintainer scripts...).
UNSHARE = [
    "unshare",
    "--mount",
    "--propagation",
    "private",
    "--pid",
    "--fork",
    "--kill-child",
    "--",
]


class Runner:
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
                preexec_fn=die_with_parent,
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


def apt_proxy() -> str | None:
    """http proxy configured for apt on this machine, if any."""
    if not shutil.which("apt-config"):
        return None
    out = subprocess.run(
        ["apt-config", "shell", "P", "Acquire::http::Proxy"], capture_output=True, text=True
    ).stdout
    m = re.search(r"P='([^']*)'", out)
    return m.group(1) if m and m.group(1) not in ("", "DIRECT", "false") else None


_ACCEL_CACHE: dict[str, bool] = {}


def kvm_usable(kernel: Path | None = None, log: Callable[[str], None] = say) -> bool:
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
            preexec_fn=die_with_parent,
        )
    try:
        ok = b"Kernel panic" in logfile.read_bytes()
        logfile.unlink()
    except OSError:
        pass
    _ACCEL_CACHE[str(kernel)] = ok
    log(f"KVM {'works' if ok else 'is NOT usable (guest did not boot); using TCG'}")
    return ok


def libguestfs_env(kernel: Path, log: Callable[[str], None]) -> dict:
    env = dict(os.environ)
    env.setdefault("LIBGUESTFS_BACKEND", "direct")
    if "LIBGUESTFS_BACKEND_SETTINGS" not in env and not kvm_usable(kernel, log):
        env["LIBGUESTFS_BACKEND_SETTINGS"] = "force_tcg"
    return env
