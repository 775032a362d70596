"""Boot tests of the built guest (``--verify``): IDE logs in, virtio-blk does not
boot, the ACPI power button powers it off."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

from guestkit.cache import GuestArtifacts
from guestkit.host import die_with_parent, kvm_usable, require_tools, say
from guestkit.recipe import MEMORY_MB


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
            preexec_fn=die_with_parent,
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
    log: Callable[[str], None] = say,
    boot_timeout: float = 900,
    virtio_timeout: float = 600,
) -> dict:
    """Boot the raw image (1) on IDE: must reach the login prompt, log in as
    root and run a few commands; (2) on virtio-blk: must NOT reach the login
    prompt (the initramfs has no virtio driver, so it drops to a shell)."""
    require_tools(["qemu-system-x86_64"])
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

    result["power_button"] = power_button_test(guest, kvm, outdir, boot_timeout, log)
    log(f"boot test 3 result: {json.dumps(result['power_button'])}")

    result["ok"] = bool(
        result["ide"]["reached_login"]
        and result["ide"].get("logged_in")
        and not result["virtio"]["reached_login"]
        and result["power_button"]["powered_off"]
    )
    (outdir / "verify.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def power_button_test(
    guest: GuestArtifacts,
    kvm: bool,
    outdir: Path,
    boot_timeout: float = 900,
    log: Callable[[str], None] = say,
    off_timeout: float = 120,
) -> dict:
    """Boot on IDE, wait for the login prompt, press the ACPI power button once
    (QEMU's ``system_powerdown``, what libvirt's shutdown does) and wait for the
    guest to power itself off (QEMU exits: ``-no-reboot``, and no ``quit``)."""
    log("boot test 3: the guest must power off when the ACPI power button is pressed")
    sock = outdir / f".monitor-{os.getpid()}.sock"
    sock.unlink(missing_ok=True)
    cmd = qemu_command(guest.raw, "ide", kvm, mac=guest.mac_address)
    cmd[cmd.index("-monitor") + 1] = f"unix:{sock},server=on,wait=off"
    vm = SerialVM(cmd, outdir / "verify-power-button-serial.log")
    out: dict = {"powered_off": False, "seconds_to_off": None}
    try:
        if not vm.expect([re.escape(guest.login_marker.encode())], boot_timeout):
            out["outcome"] = f"no login prompt within {boot_timeout}s"
            return out
        # logind starts before the getty; wait until it is up so the one press counts
        time.sleep(5)
        with socket.socket(socket.AF_UNIX) as mon:
            mon.connect(str(sock))
            mon.sendall(b"system_powerdown\n")
            pressed = time.monotonic()
            try:
                vm.proc.wait(off_timeout)
            except subprocess.TimeoutExpired:
                out["outcome"] = f"still running {off_timeout}s after the power button"
                return out
        out["powered_off"] = True
        out["seconds_to_off"] = round(time.monotonic() - pressed, 1)
        out["outcome"] = "powered off"
        return out
    finally:
        vm.close()
        sock.unlink(missing_ok=True)
