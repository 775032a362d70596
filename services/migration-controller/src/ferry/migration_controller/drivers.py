"""Whether a guest can boot on virtio as it is: the raw-copy preflight's inspection.

A raw copy (``spec.skipGuestConversion``) moves the disks unchanged: nothing
installs virtio drivers, so the guest keeps whatever it booted with at the
source. Preflight therefore looks into the source's boot disk, read-only through
the provider's own NBD export of it, with libguestfs (``guestfish --ro -i``):

- Linux: a virtio block driver (``virtio_blk`` or ``virtio_scsi``) in an
  initramfs under ``/boot``, or built into a kernel (``modules.builtin``). A
  module installed under ``/lib/modules`` but absent from the initramfs does not
  count: the guest cannot load it before its root file system is found.
- Windows: ``viostor.sys`` or ``vioscsi.sys`` among the system's drivers.

The answer is a warning, never a rejection: without drivers the VirtualMachine
gets SATA disks and an e1000 NIC (``ferry.platform.kubevirt``), which every x86
guest can drive. An inspection that cannot run is a warning too, saying why.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import urllib.parse
from dataclasses import dataclass

from ferry.proto.inventory import Vm
from ferry.providers import lifetime
from ferry.providers.base import Provider

# One guestfish session: -glob runs a command per match, a leading '-' ignores its
# error (no initramfs, no modules.builtin, no Windows directory), '--' marks sections.
SCRIPT = """\
-glob initrd-list /boot/initrd*
echo --builtin--
-glob grep virtio /lib/modules/*/modules.builtin
echo --windows--
-glob ls /[Ww][Ii][Nn][Dd][Oo][Ww][Ss]/[Ss][Yy][Ss][Tt][Ee][Mm]32/[Dd][Rr][Ii][Vv][Ee][Rr][Ss]
"""
_LINUX_MODULE = re.compile(r"/(virtio_blk|virtio_scsi)\.ko(\.(gz|xz|zst))?$")
_BUILTIN = re.compile(r"/(virtio_blk|virtio_scsi)\.ko$")
_WINDOWS = frozenset({"viostor.sys", "vioscsi.sys"})


@dataclass(frozen=True)
class Finding:
    """What the inspection found: drivers (True/False), or None with why not."""

    virtio: bool | None
    detail: str


def read_listing(output: str) -> Finding:
    """The verdict from guestfish's output of :data:`SCRIPT`."""
    initrd, _, rest = output.partition("--builtin--")
    builtin, _, windows = rest.partition("--windows--")
    lines = [line.strip() for line in initrd.splitlines() if line.strip()]
    if any(_LINUX_MODULE.search("/" + line) for line in lines):
        return Finding(True, "virtio block driver in the initramfs")
    if any(_BUILTIN.search(line.strip()) for line in builtin.splitlines()):
        return Finding(True, "virtio block driver built into the kernel")
    names = {line.strip().lower() for line in windows.splitlines() if line.strip()}
    if names & _WINDOWS:
        return Finding(True, "virtio storage driver among the Windows drivers")
    if lines:
        return Finding(False, "no virtio block driver in the guest's initramfs")
    if names:
        return Finding(False, "no virtio storage driver (viostor/vioscsi) in Windows")
    return Finding(None, "no initramfs and no Windows drivers directory found")


def guestfish_uri(uri: str) -> str:
    """``uri`` as libguestfs spells it: it reads ``nbd+unix://`` as a file name, and a
    Unix socket as ``nbd:///<export>?socket=<path>``."""
    parts = urllib.parse.urlsplit(uri)
    if parts.scheme != "nbd+unix":
        return uri
    return f"nbd://{parts.path or '/'}?{parts.query}"


def environment(accel: str) -> dict[str, str]:
    """A small environment for guestfish: no variable of the controller's own."""
    env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")}
    env["HOME"] = os.environ.get("HOME", "/root")
    env["LIBGUESTFS_BACKEND"] = "direct"
    if accel != "kvm":
        env["LIBGUESTFS_BACKEND_SETTINGS"] = "force_tcg"
    for name in ("LIBGUESTFS_CACHEDIR", "TMPDIR"):
        if name in os.environ:
            env[name] = os.environ[name]
    return env


async def run_guestfish(uri: str, accel: str, seconds: float) -> tuple[int, str]:
    """guestfish over ``uri`` with :data:`SCRIPT`; killed with its session on time-out."""
    process = await asyncio.create_subprocess_exec(
        "guestfish", "--ro", "--format=raw", "-a", guestfish_uri(uri), "-i",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=environment(accel),
        start_new_session=True,
        preexec_fn=lifetime.die_with_parent(),  # libguestfs's recovery process stops QEMU
    )  # fmt: skip
    try:
        async with asyncio.timeout(seconds):
            out, _ = await process.communicate(SCRIPT.encode())
    finally:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, 9)  # guestfish and the appliance's QEMU with it
            await process.wait()
    return process.returncode or 0, out.decode(errors="replace")


async def inspect(provider: Provider, vm: Vm, accel: str, seconds: float) -> Finding:
    """Look into ``vm``'s first disk (its boot disk) for virtio drivers."""
    if not vm.disks:
        return Finding(None, "the VM has no disks")
    try:
        async with provider.open_disk(vm, vm.disks[0].id) as disk:
            code, out = await run_guestfish(await disk.nbd_uri(), accel, seconds)
    except TimeoutError:
        return Finding(None, f"the inspection took longer than {seconds:g}s")
    except Exception as error:  # any failure to look is a warning, not a rejection
        return Finding(None, f"the disk could not be inspected: {error}")
    if code != 0:
        last = out.strip().splitlines()[-1:] or ["no output"]
        return Finding(None, f"libguestfs could not inspect the disk: {last[0]}")
    return read_listing(out)


def warning(finding: Finding) -> str | None:
    """The preflight warning for a raw copy, if any."""
    if finding.virtio is True:
        return None
    if finding.virtio is False:
        return (
            f"raw copy: {finding.detail}; the guest is not converted, so it gets SATA "
            "disks and an e1000 NIC (slower than virtio); convert it to use virtio"
        )
    return f"raw copy: whether the guest has virtio drivers is unknown ({finding.detail})"
