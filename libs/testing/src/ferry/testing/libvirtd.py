"""A libvirt daemon for tests, and small software-emulated guests defined on it.

No systemd runs here, so the daemons are started by hand when none answers:
``virtlogd`` first (libvirtd hands it every QEMU's console log), then
``libvirtd``, both daemonised. They are the machine's system daemons and are left
running for the next test session; what a test defines on them (domains named
``ferry-test-*``, their checkpoints, their images in the test's directory) it
removes itself.

Guests need no operating system for the data-path tests: QEMU's own ``qemu-io``
(through the monitor, so the write goes through the guest's block backend and
its dirty bitmaps, exactly as a guest's write would) puts bytes where a test
wants them.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import libvirt
import libvirt_qemu

URI = "qemu:///system"
PREFIX = "ferry-test-"

libvirt.registerErrorHandler(lambda _ctx, _err: None, None)


class LibvirtdUnavailable(RuntimeError):
    """The libvirt daemon is not installed or did not come up."""


def _answers(uri: str) -> bool:
    try:
        conn = libvirt.open(uri)
    except libvirt.libvirtError:
        return False
    conn.close()
    return True


def ensure_running(uri: str = URI, timeout: float = 30.0) -> str:
    """Start virtlogd and libvirtd unless a daemon already answers at ``uri``."""
    if _answers(uri):
        return uri
    for daemon in ("virtlogd", "libvirtd"):
        binary = shutil.which(daemon) or shutil.which(f"/usr/sbin/{daemon}")
        if binary is None:
            raise LibvirtdUnavailable(f"{daemon} is not installed (make system-deps)")
        subprocess.run([binary, "--daemon"], check=False, capture_output=True, timeout=30)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _answers(uri):
            return uri
        time.sleep(0.2)
    raise LibvirtdUnavailable(f"libvirtd did not answer at {uri} within {timeout:.0f}s")


def uri_or_skip() -> str:
    """For a test fixture: the running daemon's URI; skipped locally, failed in CI."""
    import pytest

    try:
        return ensure_running()
    except LibvirtdUnavailable as exc:
        if os.environ.get("CI"):
            pytest.fail(f"libvirtd is required in CI: {exc}")
        pytest.skip(str(exc))


@dataclass
class Guest:
    """A defined test domain with qcow2 disks (``vda``, ``vdb``, …) in ``root``."""

    conn: libvirt.virConnect
    name: str
    root: Path
    disks: dict[str, Path] = field(default_factory=dict)
    mac: str = ""

    @property
    def dom(self) -> libvirt.virDomain:
        return self.conn.lookupByName(self.name)

    def write(self, disk: str, offset: int, length: int, pattern: int) -> None:
        """Write ``length`` bytes of ``pattern`` at ``offset`` through the running QEMU."""
        index = sorted(self.disks).index(disk)
        device = f"virtio-disk{index}/virtio-backend"
        cmd = f'qemu-io -d {device} "write -P {pattern:#x} {offset} {length}"'
        out = libvirt_qemu.qemuMonitorCommand(
            self.dom, cmd, libvirt_qemu.VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP
        )
        if out.strip():
            raise RuntimeError(f"qemu-io write failed: {out.strip()}")

    def remove(self) -> None:
        with contextlib.suppress(libvirt.libvirtError):
            dom = self.dom
            with contextlib.suppress(libvirt.libvirtError):
                dom.abortJob()
            if dom.isActive():
                dom.destroy()
            dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA)
        shutil.rmtree(self.root, ignore_errors=True)


def qcow2_sha256(path: Path) -> str:
    """SHA-256 of a qcow2 image's guest bytes, read by qemu-img (``-U``: shared with the
    running QEMU)."""
    raw = path.with_suffix(".raw")
    args = ["qemu-img", "convert", "-U", "-f", "qcow2", "-O", "raw", str(path), str(raw)]
    subprocess.run(args, check=True, capture_output=True)
    try:
        return hashlib.sha256(raw.read_bytes()).hexdigest()
    finally:
        raw.unlink()


def scratch_dir(prefix: str = PREFIX) -> Path:
    """A directory QEMU's own user can reach (pytest's are private to root)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o711)
    return path


def define_guest(
    conn: libvirt.virConnect,
    disk_sizes: list[int],
    *,
    start: bool = True,
    fill: list[tuple[int, int, int]] | None = None,
) -> Guest:
    """A persistent domain (images in a fresh directory) with one qcow2 disk per size,
    ``fill`` (offset, length, pattern) written into the first disk before it boots, a
    CD-ROM and a NIC."""
    name = PREFIX + secrets.token_hex(4)
    root = scratch_dir()
    guest = Guest(
        conn,
        name,
        root,
        mac="52:54:00:" + ":".join(secrets.token_hex(3)[i : i + 2] for i in (0, 2, 4)),
    )
    disks = []
    for index, size in enumerate(disk_sizes):
        target = "vd" + "abcdefgh"[index]
        path = root / f"{target}.qcow2"
        subprocess.run(
            ["qemu-img", "create", "-q", "-f", "qcow2", str(path), str(size)], check=True
        )
        if index == 0:
            for offset, length, pattern in fill or []:
                write = f"write -P {pattern:#x} {offset} {length}"
                subprocess.run(
                    ["qemu-io", "-f", "qcow2", "-c", write, str(path)],
                    check=True,
                    capture_output=True,
                )
        guest.disks[target] = path
        disks.append(
            f"<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
            f"<source file='{path}'/><target dev='{target}' bus='virtio'/></disk>"
        )
    xml = f"""<domain type='qemu'>
  <name>{name}</name><memory unit='MiB'>64</memory><vcpu>2</vcpu>
  <cpu><topology sockets='1' cores='2' threads='1'/></cpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os><features><acpi/></features>
  <devices>{"".join(disks)}
    <disk type='file' device='cdrom'><target dev='hdc' bus='ide'/><readonly/></disk>
    <interface type='user'><mac address='{guest.mac}'/><model type='virtio'/></interface>
  </devices>
</domain>"""
    conn.defineXML(xml)
    if start:
        try:
            guest.dom.create()
        except libvirt.libvirtError:
            guest.remove()  # a guest that cannot start must not outlive the test
            raise
    return guest
