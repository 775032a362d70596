"""Which accelerator local VMs get: KVM only when it demonstrably runs a guest.

A probe boots the host's Linux kernel under KVM and needs it to get to its end:
there are nested setups where /dev/kvm opens and even SeaBIOS runs, yet Linux
hangs. Otherwise TCG, which is slow but always works. The answer is cached on
disk until the host reboots, so each service start does not pay for the probe.
Split from :mod:`ferry.platform.local.qemu` because it is its own question, asked
once per host, not per VM.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from ferry.platform.settings import QemuSettings as QemuSettings  # what a launch reads

_PROBE_SECONDS = 10.0


def _run_probe(argv: list[str], log: Path, done: bytes | None, seconds: float) -> bool:
    """Run a probe VM; success is ``done`` in its log, or (``None``) a clean exit."""
    with subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as process:
        deadline = time.monotonic() + seconds
        try:
            while time.monotonic() < deadline:
                if process.poll() is not None:
                    return done is None and process.returncode == 0
                if done is not None and log.exists() and done in log.read_bytes():
                    return True
                time.sleep(0.05)
            return False
        finally:
            process.kill()


def _probe_kvm(binary: str) -> bool:
    """True when KVM runs a guest, not just opens: a Linux kernel must boot to its end.

    A host kernel (``/boot/vmlinuz-*``) is booted without a root disk under KVM
    with ``-no-reboot``: it panics at mounting root, and QEMU exits, within a
    second or two on a working KVM. Nested setups exist where KVM opens and
    even runs SeaBIOS, yet Linux hangs forever; this is the probe that tells.
    Without a host kernel, SeaBIOS reaching its boot stage is the fallback test.
    """
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False
    base = [binary, "-machine", "q35,accel=kvm", "-cpu", "host", "-m", "128"]
    base += ["-nodefaults", "-no-user-config", "-display", "none", "-no-reboot"]
    kernels = sorted(Path("/boot").glob("vmlinuz-*"))
    with tempfile.TemporaryDirectory(prefix="ferry-kvm-") as tmp:
        log = Path(tmp) / "probe.log"
        if kernels and os.access(kernels[-1], os.R_OK):
            argv = [*base, "-serial", f"file:{log}", "-kernel", str(kernels[-1])]
            argv += ["-append", "console=ttyS0 panic=-1"]
            return _run_probe(argv, log, None, _PROBE_SECONDS)
        argv = [*base, "-chardev", f"file,id=bios,path={log}"]
        argv += ["-device", "isa-debugcon,iobase=0x402,chardev=bios"]
        return _run_probe(argv, log, b"Booting from", _PROBE_SECONDS)


def _probe_cache(binary: str) -> Path:
    """Where this boot's probe result is kept: the answer holds until the host reboots."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot = str(os.getpid())
    resolved = shutil.which(binary) or binary
    key = hashlib.sha256(f"{boot}:{resolved}:{os.getuid()}".encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"ferry-accel-{key}"


@functools.cache
def _detected(binary: str) -> str:
    cache = _probe_cache(binary)
    with contextlib.suppress(OSError):
        cached = cache.read_text().strip()
        if cached in ("kvm", "tcg"):
            return cached
    accel = "kvm" if _probe_kvm(binary) else "tcg"
    with contextlib.suppress(OSError):
        temporary = cache.with_name(f"{cache.name}.{os.getpid()}")
        temporary.write_text(accel)
        os.replace(temporary, cache)
    return accel


async def accelerator(settings: QemuSettings) -> str:
    """The accelerator to use: the setting, else KVM if the probe boots, else TCG."""
    if settings.accel:
        return settings.accel
    return await asyncio.to_thread(_detected, settings.binary)
