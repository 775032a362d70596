"""The test guest as an oVirt VM, and a cold raw-copy plan of it: what the oVirt e2e
tests share, on the local platform and on the kubernetes one."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ferry.testing.migration import apply_yaml, guest_ova, of_type, plant_secret, source_objects
from ferry.testing.ovirt.engine import Disk, Engine, Nic, VmRecord
from ferry.testing.ovirt.imageio import Imageio
from ferry.testing.stack import EventRecorder, LocalStack

if TYPE_CHECKING:
    from ferry.testing import libvirtd

NAMESPACE = "rhv"
# Flow 2 of a raw copy left off: no conversion, no power-on.
RAW_COPY_FLOW2 = [
    "Started",
    "StorePowerState",
    "PowerOffSource",
    "CreateDataVolumes",
    "AllocateDisks",
    "CopyDisks",
    "CreateVM",
    "Completed",
]


@contextmanager
def guest_vm(root: Path, repo: Path) -> Iterator[tuple[Engine, VmRecord]]:
    """A running VM whose one disk is the test guest's, served by the real imageio daemon."""
    raw = Path(guest_ova(repo)["raw"])
    with Imageio(root / "imageio") as daemon, Engine(daemon) as eng:
        disk = Disk(name="guest-root", image=raw, format="raw", size=raw.stat().st_size)
        vm = eng.add_vm(
            VmRecord(name="guest", disks=[disk], nics=[Nic(name="nic1", mac="56:6f:aa:00:00:01")])
        )
        yield eng, vm


@contextmanager
def domain_vm(root: Path, guest: libvirtd.Guest, size: int) -> Iterator[tuple[Engine, VmRecord]]:
    """VM ``db`` backed by a running libvirt ``guest``: its ``vda`` a qcow2 disk whose
    changes incremental backups track, served by the real imageio daemon."""
    with Imageio(root / "imageio") as daemon, Engine(daemon) as eng:
        disk = Disk(name="root", image=guest.disks["vda"], format="cow", size=size,
                    backup="incremental", target="vda")  # fmt: skip
        yield eng, eng.add_vm(VmRecord(name="db", disks=[disk], domain=guest.name))


def apply_plan(stack: LocalStack, eng: Engine, vm: VmRecord, *, warm: bool = False,
               precopy_seconds: int = 3600) -> None:  # fmt: skip
    """The engine's Provider (credentials and CA in a Secret), maps and Plan ``rhv``: the VM
    copied raw into namespace ``rhv``, its target left off; ``warm`` with a precopy every
    ``precopy_seconds`` until a cutover."""
    plant_secret(
        stack,
        "ovirt-creds",
        {
            "username": eng.username,
            "password": eng.password,
            "cacert": eng.imageio.ca_file.read_text(),
        },
    )
    spec = f' {{type: ovirt, url: "{eng.url}", secret: {{name: ovirt-creds}}}}'
    storage = "\n    - {source: {name: data}, destination: {storageClass: standard}}"
    plan = f"""\
---
apiVersion: ferry.dev/v1alpha1
kind: Plan
metadata: {{name: rhv}}
spec:
  provider: {{source: {{name: engine}}, destination: {{name: local}}}}
  map: {{network: {{name: nets}}, storage: {{name: disks}}}}
  targetNamespace: {NAMESPACE}
  targetPowerState: "off"
  skipGuestConversion: true
  warm: {str(warm).lower()}
  precopyIntervalSeconds: {precopy_seconds}
  vms:
    - {{id: {vm.id}}}
"""
    apply_yaml(stack, source_objects("engine", spec, "ovirtmgmt", storage) + plan)


def migrate(stack: LocalStack, name: str = "m1") -> None:
    """``ferry migrate rhv``, once the controller has read the objects the plan names."""
    time.sleep(2)
    started = stack.ferry("migrate", "rhv", "--name", name)
    assert started.returncode == 0, started.stdout + started.stderr


def start(stack: LocalStack, eng: Engine, vm: VmRecord, *, warm: bool = False,
          precopy_seconds: int = 3600) -> EventRecorder:  # fmt: skip
    """The plan applied (:func:`apply_plan`), the audit stream recorded, ``m1`` started."""
    apply_plan(stack, eng, vm, warm=warm, precopy_seconds=precopy_seconds)
    recorder = stack.record_events()
    migrate(stack)
    return recorder


def write_between_rounds(
    stack: LocalStack,
    recorder: EventRecorder,
    vm: VmRecord,
    guest: libvirtd.Guest,
    writes: list[tuple[int, int]],
    timeout: float,
) -> None:
    """After the full round, each ``(offset, pattern)`` MiB written into ``vda``, the next
    one only once a round has carried it (reported a change): so each write is exactly one
    precopy's change, however late this test sees a round end. (A write lands in the
    first round whose backup begins after it; a round that began before reports 0.)"""
    mib = 1 << 20

    def rounds(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return of_type(events, "volume.disks_copied", vm.id)

    stack.wait_for("the full round", lambda ev: rounds(ev)[:1], recorder, timeout)
    for offset, pattern in writes:
        seen = len(rounds(recorder.events()))
        guest.write("vda", offset, mib, pattern)

        def carried(ev: list[dict[str, Any]], seen: int = seen) -> bool:
            return any(r["changed"] for r in rounds(ev)[seen:])

        stack.wait_for(f"the round that copies the write at {offset}", carried, recorder, timeout)
