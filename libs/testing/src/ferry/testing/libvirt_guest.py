"""The test guest (``tests/guest``: Debian, no virtio drivers) as a libvirt domain.

The end-to-end tests need a source that is a real operating system: one that
answers the ACPI power button (the warm cutover's graceful shutdown), writes
files of its own between precopies, and boots again on the target. The domain
takes a qcow2 copy of the guest's raw disk (QEMU keeps persistent dirty bitmaps
only in qcow2), on an IDE disk and an e1000 NIC as the guest was built for (or,
for the guest after virt-v2v, on virtio-blk and virtio-net), and
its first serial port on a loopback TCP socket: :class:`Console` logs in there
as a person at the console would and runs shell commands.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import libvirt

from ferry.testing.libvirtd import PREFIX, scratch_dir

_ANSI = re.compile(rb"\x1b\[[0-9;?]*[a-zA-Z]")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Console:
    """The guest's serial console over TCP: read continuously, written on demand."""

    def __init__(self, port: int, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._sock = socket.create_connection(("127.0.0.1", port), timeout=5)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        self._sock.settimeout(None)
        self.buf = bytearray()
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                chunk = self._sock.recv(65536)
            except OSError:
                chunk = b""
            with self._cond:
                if chunk:
                    self.buf += _ANSI.sub(b"", chunk).replace(b"\r", b"")
                self._cond.notify_all()
                if not chunk:
                    return

    def send(self, text: str) -> None:
        self._sock.sendall(text.encode())

    def expect(self, pattern: bytes, timeout: float, start: int = 0) -> re.Match[bytes]:
        rx = re.compile(pattern, re.S)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = rx.search(bytes(self.buf), start)
                if found:
                    return found
                left = deadline - time.monotonic()
                if left <= 0 or not self._reader.is_alive():
                    tail = bytes(self.buf[-500:]).decode(errors="replace")
                    raise TimeoutError(f"no {pattern!r} on the console; last output: {tail}")
                self._cond.wait(min(left, 1.0))

    def login(self, user: str, password: str, timeout: float = 600) -> None:
        """Log in at the getty (waiting for the guest to boot that far)."""
        deadline = time.monotonic() + timeout
        while True:  # the prompt printed before we connected is gone: ask for a new one
            mark = len(self.buf)
            self.send("\n")
            try:  # anywhere after our newline: services may print behind the prompt
                self.expect(rb"login: ?", 10, mark)
                break
            except TimeoutError:
                if time.monotonic() > deadline:
                    raise
        mark = len(self.buf)
        self.send(user + "\n")
        self.expect(rb"[Pp]assword: ?", 60, mark)
        self.send(password + "\n")
        self.expect(rb"@[^\n]*# ?", 120, mark)

    def run(self, command: str, timeout: float = 120) -> str:
        """Run a shell command; its output. The markers are computed by the shell,
        so the echoed command line never matches them."""
        mark = len(self.buf)
        self.send(f"echo FERRY_BEGIN_$((6*6)); {command}; echo FERRY_END_$((6*7))\n")
        found = self.expect(rb"FERRY_BEGIN_36\n(.*?)FERRY_END_42", timeout, mark)
        return found.group(1).decode(errors="replace").strip()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()


@dataclass
class OsGuest:
    """A defined domain running the test guest from a qcow2 copy of its disk."""

    conn: libvirt.virConnect
    name: str
    root: Path
    disk: Path
    port: int
    consoles: list[Console] = field(default_factory=list)

    @property
    def dom(self) -> libvirt.virDomain:
        return self.conn.lookupByName(self.name)

    def console(self) -> Console:
        made = Console(self.port)
        self.consoles.append(made)
        return made

    def remove(self) -> None:
        for console in self.consoles:
            console.close()
        with contextlib.suppress(libvirt.libvirtError):
            dom = self.dom
            with contextlib.suppress(libvirt.libvirtError):
                dom.abortJob()
            if dom.isActive():
                dom.destroy()
            dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA)
        shutil.rmtree(self.root, ignore_errors=True)


FIRSTBOOT = "/etc/systemd/system/multi-user.target.wants/guestfs-firstboot.service"


def _booted_before(disk: Path) -> None:
    """A guest converted by virt-v2v carries first-boot scripts (wait for the network,
    install qemu-guest-agent with apt). A source that runs on virtio has booted since
    its conversion, so they are done: drop their unit from this copy (guestfish), or
    every test would wait for apt under TCG."""
    env = dict(os.environ, LIBGUESTFS_BACKEND="direct")
    env.setdefault("LIBGUESTFS_BACKEND_SETTINGS", "force_tcg")
    subprocess.run(
        ["guestfish", "--rw", "-a", str(disk), "-m", "/dev/sda1", "rm-f", FIRSTBOOT],
        check=True,
        capture_output=True,
        timeout=600,
        env=env,
    )


def define_os_guest(
    conn: libvirt.virConnect,
    raw: Path,
    *,
    mac: str = "",
    memory_mib: int = 512,
    start: bool = True,
    virtio: bool = False,
) -> OsGuest:
    """A persistent domain booting a qcow2 copy of ``raw`` (the test guest's disk): on
    IDE with an e1000 NIC, or with ``virtio`` (a guest that has the drivers) on
    virtio-blk and virtio-net."""
    name = PREFIX + secrets.token_hex(4)
    root = scratch_dir()
    dev, bus, model = ("vda", "virtio", "virtio") if virtio else ("hda", "ide", "e1000")
    disk = root / f"{dev}.qcow2"
    subprocess.run(
        ["qemu-img", "convert", "-q", "-O", "qcow2", str(raw), str(disk)], check=True, timeout=300
    )
    if virtio:
        _booted_before(disk)
    port = _free_port()
    mac = mac or "52:54:00:" + ":".join(secrets.token_hex(3)[i : i + 2] for i in (0, 2, 4))
    xml = f"""<domain type='qemu'>
  <name>{name}</name><memory unit='MiB'>{memory_mib}</memory><vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>
  <features><acpi/><apic/></features>
  <on_poweroff>destroy</on_poweroff>
  <devices>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
      <source file='{disk}'/><target dev='{dev}' bus='{bus}'/></disk>
    <interface type='user'><mac address='{mac}'/><model type='{model}'/></interface>
    <serial type='tcp'><source mode='bind' host='127.0.0.1' service='{port}'/>
      <protocol type='raw'/><target port='0'/></serial>
  </devices>
</domain>"""
    conn.defineXML(xml)
    guest = OsGuest(conn, name, root, disk, port)
    if start:
        try:
            guest.dom.create()
        except libvirt.libvirtError:
            guest.remove()
            raise
    return guest
