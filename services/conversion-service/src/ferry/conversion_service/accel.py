"""Whether the libguestfs appliance can use KVM here, decided by trying it.

``/dev/kvm`` existing, or QEMU starting with ``-accel kvm``, proves little: on
some nested hosts QEMU opens KVM, SeaBIOS even runs, and then the kernel hangs
forever. libguestfs would wait its full launch timeout before failing. So the
probe boots a real Linux kernel under KVM with no root device and ``panic=-1``:
a working KVM reaches the "Kernel panic" line (and QEMU exits, ``-no-reboot``)
within a second or two; a broken one says nothing. The answer is cached for the
life of the process.

When KVM does not work, libguestfs is told to use software emulation:
``LIBGUESTFS_BACKEND=direct`` and ``LIBGUESTFS_BACKEND_SETTINGS=force_tcg``.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from ferry.conversion_service.settings import ConversionSettings

log = logging.getLogger(__name__)

_PANIC = b"Kernel panic"


@dataclass(frozen=True)
class Acceleration:
    """The probe's verdict and why, for the start-up log and /readyz."""

    kvm: bool
    reason: str

    def environment(self) -> dict[str, str]:
        """Variables that make libguestfs use what works."""
        if self.kvm:
            return {"LIBGUESTFS_BACKEND": "direct"}
        return {"LIBGUESTFS_BACKEND": "direct", "LIBGUESTFS_BACKEND_SETTINGS": "force_tcg"}


def probe_kernel() -> Path | None:
    """A readable host kernel to boot (the one supermin builds the appliance from)."""
    for candidate in sorted(glob.glob("/boot/vmlinuz-*"), reverse=True):
        if os.access(candidate, os.R_OK):
            return Path(candidate)
    return None


def probe_command(qemu: str, kernel: Path, accelerator: str = "kvm") -> list[str]:
    return [
        qemu,
        "-accel",
        accelerator,
        "-machine",
        "pc",
        "-m",
        "128",
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
        "-serial",
        "stdio",
        "-kernel",
        str(kernel),
        "-append",
        "console=ttyS0 panic=-1 quiet",
    ]


async def probe(
    qemu: str, seconds: float, kernel: Path | None = None, accelerator: str = "kvm"
) -> Acceleration:
    """Boot ``kernel`` under KVM and report whether it got as far as panicking.

    ``accelerator`` is for testing the probe itself (``tcg`` always works).
    """
    if accelerator == "kvm" and not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return Acceleration(False, "/dev/kvm is missing or not read-writable")
    kernel = kernel or probe_kernel()
    if kernel is None:
        return Acceleration(False, "no readable /boot/vmlinuz-* to probe KVM with")
    try:
        process = await asyncio.create_subprocess_exec(
            *probe_command(qemu, kernel, accelerator),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
    except OSError as error:
        return Acceleration(False, f"cannot run {qemu}: {error}")
    assert process.stdout is not None
    seen = b""
    try:
        async with asyncio.timeout(seconds):
            while chunk := await process.stdout.read(4096):
                seen = (seen + chunk)[-8192:]
                if _PANIC in seen:
                    return Acceleration(
                        True, f"a kernel booted under {accelerator} ({kernel.name})"
                    )
            await process.wait()
    except TimeoutError:
        return Acceleration(False, f"a kernel did not boot under {accelerator} within {seconds:g}s")
    finally:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
    last = seen.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
    return Acceleration(False, f"QEMU could not use KVM: {last[0]}")


_decided: Acceleration | None = None
_lock = asyncio.Lock()


async def acceleration(settings: ConversionSettings) -> Acceleration:
    """The setting when forced, else the (cached) probe's verdict."""
    global _decided
    if settings.accel == "kvm":
        return Acceleration(True, "FERRY_CONVERSION__ACCEL=kvm")
    if settings.accel == "tcg":
        return Acceleration(False, "FERRY_CONVERSION__ACCEL=tcg")
    async with _lock:
        if _decided is None:
            _decided = await probe(settings.qemu, settings.kvm_probe_seconds)
            log.info(
                "libguestfs acceleration: %s (%s)",
                "kvm" if _decided.kvm else "tcg",
                _decided.reason,
            )
        return _decided
