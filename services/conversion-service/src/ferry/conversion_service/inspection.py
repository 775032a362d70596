"""What the converted guest is, as the vm-service needs to know it.

Two witnesses, each for what it knows best:

- ``virt-inspector`` reads the converted disks (read-only, format named, never
  probed) and reports the operating system: type, distro, product name,
  version, architecture, mount points. Running it is also the check that the
  converted disks still hold an inspectable guest. Its XML is parsed with
  defusedxml, since a guest's hostname or product name ends up in it.
  (``verify_with_inspector=False`` skips it and uses the inspection record in
  virt-v2v's ``-v`` log instead: one appliance launch less, about a minute
  under TCG.)
- virt-v2v's own log says what it decided: whether virtio drivers are installed,
  the block and network bus, the machine type, and whether the guest needs UEFI
  (see :class:`ferry.conversion_service.progress.Decisions`).
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import BinaryIO

from defusedxml import ElementTree as SafeET

from ferry.conversion_service.progress import Decisions, OutputReader
from ferry.platform.workloads import Placed, Workload, WorkloadPlatform
from ferry.proto.inventory import Firmware, Inspection, Vm, Volume


class InspectionFailed(Exception):
    """virt-inspector found no guest (or could not run): the reason says which."""

    def __init__(self, reason: str, detail: list[str] | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = list(detail or [])


@dataclass(frozen=True)
class InspectedOs:
    """One operating system as virt-inspector describes it."""

    type: str = ""
    distro: str = ""
    product_name: str = ""
    major_version: str = ""
    minor_version: str = ""
    arch: str = ""
    osinfo: str = ""
    hostname: str = ""
    root: str = ""
    mountpoints: dict[str, str] = field(default_factory=dict)  # path → device

    @property
    def version(self) -> str:
        if not self.major_version:
            return ""
        return f"{self.major_version}.{self.minor_version or '0'}"

    @property
    def has_esp(self) -> bool:
        return any(path in ("/boot/efi", "/efi") for path in self.mountpoints)


def from_log(decisions: Decisions) -> InspectedOs | None:
    """The OS as virt-v2v's own inspection (``-v``) recorded it, if it did."""
    record = decisions.inspected
    if not record.get("type"):
        return None
    return InspectedOs(
        type=record.get("type", ""),
        distro=record.get("distro", ""),
        product_name=record.get("product_name", ""),
        major_version=record.get("major_version", ""),
        minor_version=record.get("minor_version", ""),
        arch=record.get("arch", ""),
        osinfo=record.get("osinfo", ""),
        root=record.get("root", ""),
    )


def os_name(system: InspectedOs) -> str:
    """A product name people recognise: Debian's is only its version (``12.5``)."""
    name = system.product_name
    if name and any(character.isalpha() for character in name):
        return name
    distro = system.distro.capitalize() if system.distro not in ("", "unknown") else ""
    return " ".join(part for part in (distro, name) if part)


def _text(element: object, tag: str) -> str:
    found = element.find(tag)  # type: ignore[attr-defined]
    return (found.text or "").strip() if found is not None else ""


def parse(document: bytes) -> list[InspectedOs]:
    """Every operating system in virt-inspector's XML, in its order."""
    root = SafeET.fromstring(document)
    systems = []
    for system in root.iter("operatingsystem"):
        mountpoints = {
            (mount.text or "").strip(): mount.get("dev", "") for mount in system.iter("mountpoint")
        }
        systems.append(
            InspectedOs(
                type=_text(system, "name"),
                distro=_text(system, "distro"),
                product_name=_text(system, "product_name"),
                major_version=_text(system, "major_version"),
                minor_version=_text(system, "minor_version"),
                arch=_text(system, "arch"),
                osinfo=_text(system, "osinfo"),
                hostname=_text(system, "hostname"),
                root=_text(system, "root"),
                mountpoints=mountpoints,
            )
        )
    return systems


def inspector_command(
    binary: str, volumes: Sequence[Volume], placed: Mapping[str, Placed] | None = None
) -> list[str]:
    """virt-inspector over ``volumes``, each where the workload sees it (``placed``;
    without it, the volume's own path on this host)."""
    argv = [binary, "--no-applications", "--no-icon"]
    for volume in volumes:
        path = placed[volume.name].disk if placed is not None else volume.path
        argv += [f"--format={volume.format or 'raw'}", "-a", path]
    return argv


async def inspect_disks(
    workloads: WorkloadPlatform,
    binary: str,
    volumes: Sequence[Volume],
    placed: Mapping[str, Placed] | None = None,
    *,
    env: Mapping[str, str],
    log_file: BinaryIO,
    time_limit: float,
    grace: float = 5.0,
    namespace: str = "",
    labels: Mapping[str, str] | None = None,
    workdir: str = "",
) -> InspectedOs:
    """Run virt-inspector on ``volumes`` as a workload (in ``namespace``, owned per
    ``labels``); the guest's (first) operating system."""
    reader = OutputReader()

    async def note(line: str) -> None:
        reader.feed(line)

    argv = inspector_command(binary, volumes, placed)
    log_file.write(f"\n=== {' '.join(argv)}\n".encode())
    mounts = {v.name: placed[v.name].mount if placed else v.path for v in volumes}
    with tempfile.NamedTemporaryFile(prefix="ferry-inspector-") as output:
        workload = Workload(
            name="virt-inspector",
            argv=argv,
            env=dict(env),
            volumes=mounts,
            namespace=namespace,
            labels=dict(labels or {}),
            workdir=workdir,  # TMPDIR is in it: in a pod, an emptyDir of its own
            time_limit=time_limit,
            grace=grace,
            output=output.name,
        )
        status = await workloads.run_workload(workload, log_file, note)
        output.seek(0)  # the workload wrote through its own handle on the same file
        document = output.read()
    log_file.write(document)
    if status != 0:
        reason, detail = reader.failure()
        raise InspectionFailed(f"virt-inspector failed: {reason}", detail)
    try:
        systems = parse(document)
    except SafeET.ParseError as error:
        raise InspectionFailed(f"virt-inspector wrote unreadable XML: {error}") from None
    if not systems:
        raise InspectionFailed("virt-inspector found no operating system on the converted disks")
    return systems[0]


_DISK_BUS = {"virtio-blk": "virtio", "virtio-scsi": "scsi", "ide": "sata"}
_NIC_MODEL = {"virtio-net": "virtio", "e1000": "e1000", "rtl8139": "rtl8139"}


def summary(system: InspectedOs, decisions: Decisions, vm: Vm) -> Inspection:
    """The wire form: OS from virt-inspector, drivers/buses/firmware from virt-v2v."""
    if decisions.uefi is not None:
        firmware = Firmware.UEFI if decisions.uefi else Firmware.BIOS
    elif system.has_esp:
        firmware = Firmware.UEFI
    else:
        firmware = vm.firmware
    arch = system.arch or decisions.arch or ""
    fallback_bus = "virtio" if decisions.virtio_drivers else "sata"
    return Inspection(
        os_type=system.type,
        os_distro=system.distro,
        os_name=os_name(system),
        os_version=system.version,
        arch=arch,
        firmware=firmware,
        virtio_drivers=bool(decisions.virtio_drivers),
        disk_bus=_DISK_BUS.get(decisions.block_bus or "", fallback_bus),
        nic_model=_NIC_MODEL.get(
            decisions.net_bus or "", "virtio" if decisions.virtio_drivers else "e1000"
        ),
        # KubeVirt runs x86 guests on q35 only; virt-v2v's i440fx choice maps there too.
        machine="virt" if decisions.machine == "virt" or arch == "aarch64" else "q35",
    )
