"""QEMU as the local platform's hypervisor: a VirtualMachine spec becomes a process.

What the local platform promises is that the migrated disks *boot*, so QEMU is
driven the way KubeVirt's virt-launcher would drive it from the same spec: the
disk bus, NIC model and MAC, firmware (SeaBIOS or OVMF, secure boot with SMM)
and CPU topology all come from the VirtualMachine, not from guesses here.

The process is started with ``-daemonize`` so that it is nobody's child: it
survives a restart of the vm-service, which finds it again by pid *and* kernel
start time (a recycled pid is not mistaken for it). Launch errors still arrive
synchronously, because QEMU's parent only exits once the VM is set up.

KVM is used only when it demonstrably runs a guest (:mod:`ferry.platform.local.kvm`);
the serial console is read by :mod:`ferry.platform.local.console`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import struct
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ferry.platform.local import kvm
from ferry.platform.settings import QemuSettings as QemuSettings  # what a launch reads
from ferry.proto.inventory import Volume

_SOCKET_PATH_MAX = 100  # sun_path is 108 bytes; keep a margin
_QUANTITY = re.compile(r"^(\d+)(Ki|Mi|Gi|Ti|k|M|G|T)?$")
_UNITS = {
    None: 1,
    "Ki": 1 << 10,
    "Mi": 1 << 20,
    "Gi": 1 << 30,
    "Ti": 1 << 40,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
}
_DISK_DEVICES = {"virtio": "virtio-blk-pci", "sata": "ide-hd", "scsi": "scsi-hd"}
_NIC_DEVICES = {
    "virtio": "virtio-net-pci",
    "e1000": "e1000",
    "e1000e": "e1000e",
    "rtl8139": "rtl8139",
    "ne2k_pci": "ne2k_pci",
    "pcnet": "pcnet",
    "igb": "e1000e",  # igb needs QEMU 8; e1000e is its closest older relative
}
_AHCI_PORTS = 6  # the q35 chipset's built-in AHCI controller
_COM1 = 0x3F8


class SpecError(ValueError):
    """The VirtualMachine cannot be run locally (missing volume, unknown bus…)."""


class LaunchError(RuntimeError):
    """QEMU refused to start; the message holds its own error text."""


# -- the spec, as QEMU needs it ------------------------------------------------


@dataclass(frozen=True)
class DiskSpec:
    name: str
    path: str
    format: str
    bus: str
    boot_order: int | None = None


@dataclass(frozen=True)
class NicSpec:
    name: str
    model: str
    mac: str = ""


@dataclass(frozen=True)
class MachineSpec:
    """What one VirtualMachine asks of the hypervisor."""

    name: str
    namespace: str
    sockets: int = 1
    cores: int = 1
    threads: int = 1
    memory_mib: int = 1024
    uefi: bool = False
    secure_boot: bool = False
    smm: bool = False
    disks: tuple[DiskSpec, ...] = ()
    nics: tuple[NicSpec, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)


def memory_mib(quantity: str | int) -> int:
    """A Kubernetes memory quantity (``1024Mi``, ``2Gi``, bytes) in MiB, rounded up."""
    match = _QUANTITY.match(str(quantity).strip())
    if not match:
        raise SpecError(f"unsupported memory quantity {quantity!r}")
    size = int(match[1]) * _UNITS[match[2]]
    return max(1, -(-size // (1 << 20)))


def _claim(volume: Mapping[str, Any]) -> str:
    if "persistentVolumeClaim" in volume:
        return str(volume["persistentVolumeClaim"]["claimName"])
    if "dataVolume" in volume:
        return str(volume["dataVolume"]["name"])
    raise SpecError(f"volume {volume.get('name')!r} is neither a PVC nor a DataVolume")


def machine_spec(manifest: Mapping[str, Any], volumes: Sequence[Volume]) -> MachineSpec:
    """Read what QEMU needs from a VirtualMachine and the volumes its claims name."""
    meta = manifest["metadata"]
    template = manifest["spec"]["template"]["spec"]
    domain = template["domain"]
    cpu = domain.get("cpu", {})
    memory = domain.get("memory", {}).get("guest") or (
        domain.get("resources", {}).get("requests", {}).get("memory", "1024Mi")
    )
    efi = domain.get("firmware", {}).get("bootloader", {}).get("efi")
    smm = bool(domain.get("features", {}).get("smm", {}).get("enabled", False))
    # KubeVirt's default for an EFI VM is secure boot on.
    secure = efi is not None and bool(efi.get("secureBoot", True))
    files = {v.name: v for v in volumes}
    claims = {v["name"]: _claim(v) for v in template.get("volumes", [])}
    disks: list[DiskSpec] = []
    for disk in domain["devices"].get("disks", []):
        claim = claims.get(disk["name"])
        if claim is None:
            raise SpecError(f"disk {disk['name']!r} has no volume")
        volume = files.get(claim)
        if volume is None or not volume.path:
            raise SpecError(f"no local file for volume {claim!r} of disk {disk['name']!r}")
        bus = disk.get("disk", {}).get("bus", "virtio")
        if bus not in _DISK_DEVICES:
            raise SpecError(f"disk bus {bus!r} of {disk['name']!r} is not supported locally")
        disks.append(DiskSpec(disk["name"], volume.path, volume.format, bus, disk.get("bootOrder")))
    nics = tuple(
        NicSpec(i["name"], i.get("model", "virtio"), i.get("macAddress", ""))
        for i in domain["devices"].get("interfaces", [])
    )
    return MachineSpec(
        name=meta["name"],
        namespace=meta["namespace"],
        sockets=int(cpu.get("sockets", 1)),
        cores=int(cpu.get("cores", 1)),
        threads=int(cpu.get("threads", 1)),
        memory_mib=memory_mib(memory),
        uefi=efi is not None,
        secure_boot=secure,
        smm=smm or secure,
        disks=tuple(disks),
        nics=nics,
    )


def missing_files(spec: MachineSpec) -> list[str]:
    """Disk files the spec names that are not there (deleted volume, wrong path)."""
    return [disk.path for disk in spec.disks if not Path(disk.path).exists()]


# -- runtime files ---------------------------------------------------------------


@dataclass(frozen=True)
class RuntimeFiles:
    """Where one VM's QEMU keeps its console, pid, QMP socket and UEFI variables."""

    directory: Path

    @property
    def console(self) -> Path:
        return self.directory / "console.log"

    @property
    def pidfile(self) -> Path:
        return self.directory / "qemu.pid"

    @property
    def log(self) -> Path:
        return self.directory / "qemu.log"

    @property
    def vars(self) -> Path:
        return self.directory / "OVMF_VARS.fd"

    @property
    def sercon(self) -> Path:
        return self.directory / "sercon-port"

    @property
    def qmp(self) -> Path:
        """The QMP socket; moved to the temp dir when the path is too long for a socket."""
        path = self.directory / "qmp.sock"
        if len(str(path)) <= _SOCKET_PATH_MAX:
            return path
        digest = hashlib.sha256(str(path).encode()).hexdigest()[:16]
        return Path(tempfile.gettempdir()) / f"ferry-qmp-{digest}.sock"


def _firmware_files(spec: MachineSpec, settings: QemuSettings) -> tuple[Path, Path]:
    """(code, vars template) of OVMF: the secure-boot build with Microsoft keys enrolled."""
    if spec.secure_boot:
        code, template = "OVMF_CODE_4M.secboot.fd", "OVMF_VARS_4M.ms.fd"
    else:
        code, template = "OVMF_CODE_4M.fd", "OVMF_VARS_4M.fd"
    paths = (settings.ovmf_dir / code, settings.ovmf_dir / template)
    for path in paths:
        if not path.exists():
            raise SpecError(f"UEFI firmware {path} is missing (install OVMF)")
    return paths


def prepare_firmware(spec: MachineSpec, files: RuntimeFiles, settings: QemuSettings) -> None:
    """Give each UEFI VM its own variable store, kept across power cycles like NVRAM.

    SeaBIOS is told (by a fw_cfg file holding the COM1 port) to mirror its
    screen on the serial port, so that "not a bootable disk" reaches the console
    log, and hence the failure report, instead of an invisible screen.
    """
    if not spec.uefi:
        files.sercon.write_bytes(struct.pack("<Q", _COM1))
    elif not files.vars.exists():
        _, template = _firmware_files(spec, settings)
        shutil.copyfile(template, files.vars)


def _disk_args(spec: MachineSpec) -> list[str]:
    args: list[str] = []
    sata = 0
    if any(d.bus == "scsi" for d in spec.disks):
        args += ["-device", "virtio-scsi-pci,id=scsi0"]
    for index, disk in enumerate(spec.disks):
        drive = f"drive{index}"
        path = disk.path.replace(",", ",,")
        args += ["-drive", f"file={path},format={disk.format},if=none,id={drive},cache=writeback"]
        device = f"{_DISK_DEVICES[disk.bus]},drive={drive}"
        if disk.bus == "sata":
            if sata >= _AHCI_PORTS:
                raise SpecError(f"more than {_AHCI_PORTS} SATA disks")
            device += f",bus=ide.{sata}"
            sata += 1
        elif disk.bus == "scsi":
            device += ",bus=scsi0.0"
        if disk.boot_order is not None:
            device += f",bootindex={disk.boot_order}"
        args += ["-device", device]
    return args


def _nic_args(spec: MachineSpec) -> list[str]:
    """User-mode networking per NIC: pod and Multus networks alike become a NAT here."""
    args: list[str] = []
    for index, nic in enumerate(spec.nics):
        netdev = f"net{index}"
        device = f"{_NIC_DEVICES.get(nic.model, 'virtio-net-pci')},netdev={netdev}"
        if nic.mac:
            device += f",mac={nic.mac}"
        args += ["-netdev", f"user,id={netdev}", "-device", device]
    return args


def command(
    spec: MachineSpec, files: RuntimeFiles, accel: str, settings: QemuSettings
) -> list[str]:
    """The QEMU command line for a spec. No secret ever goes here."""
    machine = f"q35,accel={accel}" + (",smm=on" if spec.smm else ",smm=off")
    vcpus = spec.sockets * spec.cores * spec.threads
    args = [
        settings.binary,
        "-name",
        f"{spec.namespace}/{spec.name}",
        "-machine",
        machine,
        "-smp",
        f"{vcpus},sockets={spec.sockets},cores={spec.cores},threads={spec.threads}",
        "-m",
        f"{spec.memory_mib}M",
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-rtc",
        "base=utc",
        "-serial",
        f"file:{files.console}",
        "-qmp",
        f"unix:{files.qmp},server=on,wait=off",
        "-pidfile",
        str(files.pidfile),
        "-D",
        str(files.log),
        "-daemonize",
    ]
    if accel == "kvm":
        args += ["-cpu", "host"]
    if not spec.uefi:
        args += ["-fw_cfg", f"name=etc/sercon-port,file={files.sercon}"]
    else:
        code, _ = _firmware_files(spec, settings)
        args += [
            "-drive",
            f"if=pflash,format=raw,unit=0,readonly=on,file={code}",
            "-drive",
            f"if=pflash,format=raw,unit=1,file={files.vars}",
        ]
        if spec.secure_boot:
            args += ["-global", "driver=cfi.pflash01,property=secure,value=on"]
    return args + _disk_args(spec) + _nic_args(spec)


# -- processes -----------------------------------------------------------------------


@dataclass(frozen=True)
class ProcessRef:
    """A process known by pid and kernel start time, so a reused pid never matches."""

    pid: int
    start_ticks: int


def _stat(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) may contain spaces; fields after it are plain.
    return raw[raw.rindex(")") + 2 :].split()


def start_ticks(pid: int) -> int | None:
    fields = _stat(pid)
    return int(fields[19]) if fields else None


def alive(ref: ProcessRef) -> bool:
    fields = _stat(ref.pid)
    if fields is None or fields[0] in ("Z", "X"):
        return False
    return int(fields[19]) == ref.start_ticks


def cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return []


def processes_under(directory: Path) -> list[tuple[ProcessRef, Path]]:
    """QEMU processes whose pidfile lies under ``directory`` (ours, by construction)."""
    prefix = str(directory) + os.sep
    found: list[tuple[ProcessRef, Path]] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        args = cmdline(int(entry.name))
        position = args.index("-pidfile") + 1 if "-pidfile" in args else len(args)
        if position >= len(args) or not args[position].startswith(prefix):
            continue
        ref = ProcessRef(int(entry.name), start_ticks(int(entry.name)) or -1)
        if alive(ref):
            found.append((ref, Path(args[position])))
    return found


async def launch(
    spec: MachineSpec, files: RuntimeFiles, settings: QemuSettings
) -> tuple[ProcessRef, str]:
    """Start QEMU daemonized; returns its process and the accelerator used."""
    accel = await kvm.accelerator(settings)
    files.directory.mkdir(parents=True, exist_ok=True)
    if files.console.exists():
        files.console.replace(files.console.with_suffix(".log.1"))
    files.pidfile.unlink(missing_ok=True)
    files.qmp.unlink(missing_ok=True)
    prepare_firmware(spec, files, settings)
    argv = command(spec, files, accel, settings)
    process = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    if process.returncode != 0:
        message = (err or out).decode(errors="replace").strip()
        if not message and files.log.exists():  # with -D, QEMU's own errors go to its log
            message = files.log.read_text(errors="replace").strip()[-2000:]
        raise LaunchError(f"QEMU did not start (exit {process.returncode}): {message}")
    pid = int(files.pidfile.read_text().strip())
    ticks = start_ticks(pid)
    if ticks is None:
        raise LaunchError("QEMU exited right after starting; see " + str(files.log))
    return ProcessRef(pid, ticks), accel


async def _wait_gone(ref: ProcessRef, seconds: float, poll: float) -> bool:
    deadline = time.monotonic() + seconds
    while alive(ref):
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(poll)
    return True


async def qmp(socket: Path, execute: str, time_limit: float = 5.0) -> dict[str, Any]:
    """Run one QMP command and return its reply (``return`` or ``error``)."""

    async def exchange() -> dict[str, Any]:
        reader, writer = await asyncio.open_unix_connection(str(socket))
        try:
            await reader.readline()  # the greeting
            reply: dict[str, Any] = {}
            for name in ("qmp_capabilities", execute):
                writer.write(json.dumps({"execute": name}).encode() + b"\n")
                await writer.drain()
                while True:
                    line = await reader.readline()
                    if not line:
                        return {"error": {"desc": "QMP connection closed"}}
                    reply = json.loads(line)
                    if "return" in reply or "error" in reply:
                        break  # anything else is an asynchronous event
            return reply
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    return await asyncio.wait_for(exchange(), time_limit)


async def terminate(
    ref: ProcessRef, files: RuntimeFiles, settings: QemuSettings, graceful: bool = True
) -> bool:
    """Stop QEMU: ACPI power-off, then ``quit``, then SIGKILL. True if it shut down cleanly."""
    steps: list[tuple[str, float]] = [("quit", settings.quit_seconds)]
    if graceful:
        steps.insert(0, ("system_powerdown", settings.powerdown_seconds))
    for execute, seconds in steps:
        if not alive(ref):
            return True
        with contextlib.suppress(OSError, TimeoutError, ValueError):
            await qmp(files.qmp, execute)
        if await _wait_gone(ref, seconds, settings.poll_seconds):
            return execute == "system_powerdown"
    if alive(ref):
        with contextlib.suppress(ProcessLookupError):
            os.kill(ref.pid, signal.SIGKILL)
        await _wait_gone(ref, 5.0, settings.poll_seconds)
    return False
