"""Real libvirt guests migrated through all four services, as separate processes.

One stack, two plans at once, because each guest costs two boots under TCG and a
conversion costs minutes:

- **cold, flow 2**: the running guest is shut down through its ACPI power button,
  a PVC + populator copies its disk (the prime volume is gone afterwards, the
  claim re-bound to the copy, the checksums those of the source disk), virt-v2v
  converts it in place, and it boots on the target;
- **warm, flow 1**: the same guest after virt-v2v (cached by
  ``tests/guest/converted_guest.py``), on virtio, so its itinerary has no
  conversion (the VM's notes say why); it keeps running while a first full round and then
  precopies copy only the blocks written since the previous round (bytes
  reported, far below the disk's size), with files written inside the guest
  between rounds; ``ferry cutover`` ends the precopies, the guest is shut down,
  the last delta copied, and the data written before the cutover is on the
  target, whose disk equals the source's bit for bit.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import libvirt
import pytest
import yaml

from ferry.providers.ova.provider import OvaProvider
from ferry.testing import guestfiles, libvirtd
from ferry.testing.digests import guest_digest
from ferry.testing.libvirt_guest import OsGuest, define_os_guest
from ferry.testing.migration import apply_yaml, finished, guest_ova, of_type, source_objects
from ferry.testing.stack import LocalStack

pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.timeout(1800)]

REPO = Path(__file__).resolve().parents[2]
GUEST_DIR = REPO / "tests" / "guest"
GiB = 1024**3

FLOW2 = [
    "Started",
    "StorePowerState",
    "PowerOffSource",
    "CreateDataVolumes",
    "AllocateDisks",
    "CopyDisks",
    "ConvertGuest",
    "CreateVM",
    "PowerOn",
    "Completed",
]


@pytest.fixture
def conn() -> Iterator[libvirt.virConnect]:
    made = libvirt.open(libvirtd.uri_or_skip())
    yield made
    made.close()


def converted_disk(tmp_path: Path) -> Path:
    """The test guest after virt-v2v-in-place (converted once, cached, shared with
    tests/integration/platform/test_qemu_converted.py): a guest with virtio drivers."""
    guest = guestfiles.load("ferry_test_guest", GUEST_DIR / "build_guest.py").ensure_guest()
    ova_dir = tmp_path / "ova"
    ova_dir.mkdir()
    shutil.copyfile(guest.ova, ova_dir / Path(guest.ova).name)
    (source,) = asyncio.run(OvaProvider(ova_dir).inventory())
    converted = guestfiles.load("ferry_converted_guest", GUEST_DIR / "converted_guest.py")
    done = asyncio.run(converted.ensure_converted(guest, source))
    assert done.inspection.virtio_drivers is True
    disk: Path = done.directory / "disk.raw"
    return disk


@pytest.fixture
def guests(conn: libvirt.virConnect, tmp_path: Path) -> Iterator[dict[str, OsGuest]]:
    # cold: the guest as built (no virtio drivers), on IDE; warm: the same guest after
    # virt-v2v, on virtio (so the itinerary has no conversion)
    raw = Path(guest_ova(REPO)["raw"])
    virtio_raw = converted_disk(tmp_path)
    made: dict[str, OsGuest] = {}
    try:
        made["cold"] = define_os_guest(conn, raw)
        made["warm"] = define_os_guest(conn, virtio_raw, virtio=True)
        yield made
    finally:
        for guest in made.values():
            guest.remove()


def libvirt_objects(guests: dict[str, OsGuest]) -> str:
    """A libvirt Provider, maps (each guest's disk sits in its own directory, which is
    its storage) and a cold and a warm Plan."""
    storage = "\n".join(
        f"    - {{source: {{name: '{g.root}'}}, destination: {{storageClass: standard}}}}"
        for g in guests.values()
    )
    plans = ""
    for role, guest in guests.items():
        warm = role == "warm"
        plans += f"""\
---
apiVersion: ferry.dev/v1alpha1
kind: Plan
metadata: {{name: kvm-{role}}}
spec:
  provider: {{source: {{name: kvm}}, destination: {{name: local}}}}
  map: {{network: {{name: nets}}, storage: {{name: disks}}}}
  targetNamespace: kvm
  targetPowerState: "on"
  warm: {str(warm).lower()}
  precopyIntervalSeconds: 15
  vms:
    - {{name: {guest.name}, targetName: "{role}"}}
"""
    objects = source_objects(
        "kvm", f' {{type: libvirt, url: "{libvirtd.URI}"}}', "default", f"\n{storage}"
    )
    return f"{objects}{plans}"


def contains(path: Path, needles: list[bytes]) -> list[str]:
    """Which of ``needles`` occur in the file (read in chunks that overlap)."""
    found: set[bytes] = set()
    keep = max(len(n) for n in needles)
    tail = b""
    with path.open("rb") as f:
        while chunk := f.read(8 << 20):
            window = tail + chunk
            found.update(n for n in needles if n in window)
            tail = window[-keep:]
    return [n.split(b"\n")[0].decode() for n in needles if n in found]


def copies(events: list[dict[str, Any]], vm: str) -> list[dict[str, Any]]:
    return of_type(events, "volume.disks_copied", vm)


def test_libvirt_guests_cold_through_flow_two_and_warm_through_flow_one(
    stack: LocalStack, guests: dict[str, OsGuest]
) -> None:
    t0 = time.monotonic()
    cold, warm = guests["cold"], guests["warm"]
    cold_id, warm_id = cold.dom.UUIDString(), warm.dom.UUIDString()
    # Given two running test guests, logged in at their serial consoles
    consoles = {role: g.console() for role, g in guests.items()}
    for console in consoles.values():
        console.login("root", "ferry", timeout=900)
    print(f"\nguests up after {time.monotonic() - t0:.0f} s")
    apply_yaml(stack, libvirt_objects(guests))
    recorder = stack.record_events()
    time.sleep(2)

    # When both plans start: cold, and warm without a cutover time yet
    for role in ("cold", "warm"):
        started = stack.ferry("migrate", f"kvm-{role}", "--name", f"m-{role}")
        assert started.returncode == 0, started.stdout + started.stderr

    # And a file is written inside the warm guest after its full copy, and another once a
    # precopy copied the first (a round that began before a write cannot carry it: each
    # wait is for a round this test had not seen yet)
    marks: list[str] = []
    stack.wait_for("warm round 0", lambda ev: copies(ev, warm_id), recorder, timeout=900)
    for _ in range(2):
        seen = len(copies(recorder.events(), warm_id))
        mark = f"ferry-mark-{len(marks)}-{time.monotonic_ns()}"
        consoles["warm"].run(
            f"yes {mark} | head -c 1048576 > /root/{mark}; sync; sha256sum /root/{mark}"
        )
        marks.append(mark)

        def carried(ev: list[dict[str, Any]], seen: int = seen) -> bool:
            return any(r["changed"] >= 1 << 20 for r in copies(ev, warm_id)[seen:])

        stack.wait_for(f"the precopy that copies {mark}", carried, recorder, timeout=900)
    print(f"two precopies done after {time.monotonic() - t0:.0f} s")
    cut = stack.ferry("cutover", "m-warm", "--at", "now")
    assert cut.returncode == 0, cut.stdout + cut.stderr

    for role in ("cold", "warm"):
        done = stack.wait_for(
            f"migration m-{role}",
            lambda ev, r=role: finished(ev, f"m-{r}"),
            recorder,
            timeout=1500,
        )
        assert (done["succeeded"], done["failed"]) == (1, 0), done
    print(f"both migrations done after {time.monotonic() - t0:.0f} s")
    time.sleep(2)
    events = recorder.events()

    # Then the cold guest went through flow 2, in order
    started_steps = [d["step"] for d in of_type(events, "migration.step_started", cold_id)]
    assert started_steps == FLOW2
    # and its source was shut down by the guest itself (ACPI), not destroyed
    assert cold.dom.info()[0] == libvirt.VIR_DOMAIN_SHUTOFF
    # and the populator's prime volume is gone, the claim bound to the verified copy
    [cold_copy] = copies(events, cold_id)
    [disk] = cold_copy["disks"]
    assert disk["source"] == disk["target"]
    assert disk["source"]["digest"] == guest_digest(cold.disk)
    # (the copy filled the prime claim's volume; the claim the VM uses is now bound to it)
    [bound] = cold_copy["volumes"]
    assert disk["volume"] == f"{bound['name']}-prime"
    claims = [p.name for p in (stack.data_dir / "storage/volumes/claims/kvm").iterdir()]
    assert [n for n in claims if n.startswith(cold.name)] == [f"{bound['name']}.json"]
    assert not [n for n in claims if "prime" in n]
    # and it was converted in place, and booted on the target
    converted = of_type(events, "conversion.guest_converted", cold_id)
    assert [c["mode"] for c in converted] == ["in-place"]
    [running] = of_type(events, "vm.vm_running", cold_id)
    assert "ferry-test-guest login:" in Path(running["console"]).read_text(errors="replace")

    # And the warm guest had a full round, at least two precopies of only changed
    # blocks, and a last delta after its shutdown
    rounds = copies(events, warm_id)
    assert [r["precopy"] for r in rounds[:3]] == [0, 1, 2]
    full = sum(d["bytes_copied"] for d in rounds[0]["disks"])
    for r in rounds[1:]:
        copied = sum(d["bytes_copied"] for d in r["disks"])
        print(f"round {r['precopy']}: {r['changed']} B changed, {copied} B copied")
        assert copied < 2 * GiB // 20 and copied < full // 4
    carrying = [r for r in rounds[1:] if r["changed"] >= 1 << 20]  # a 1 MiB file each
    assert len(carrying) >= 2
    assert all(sum(d["bytes_copied"] for d in r["disks"]) >= 1 << 20 for r in carrying)
    last = rounds[-1]
    [final] = last["disks"]
    # and its disk equals the source's after the cutover, bit for bit
    assert final["source"] == final["target"]
    assert final["source"]["digest"] == guest_digest(warm.disk)
    assert warm.dom.info()[0] == libvirt.VIR_DOMAIN_SHUTOFF
    # and nothing of Ferry's is left at the source
    assert warm.dom.listAllCheckpoints(0) == []
    # and the files written inside the guest before the cutover are on the target
    [volume] = last["volumes"]
    assert contains(Path(volume["path"]), [(m + "\n").encode() * 50 for m in marks]) == marks
    # and, its guest having virtio drivers, it was not converted and boots on virtio
    warm_steps = [d["step"] for d in of_type(events, "migration.step_started", warm_id)]
    assert "ConvertGuest" not in warm_steps and warm_steps[-3:] == [
        "CreateVM",
        "PowerOn",
        "Completed",
    ]
    [running] = of_type(events, "vm.vm_running", warm_id)
    assert "ferry-test-guest login:" in Path(running["console"]).read_text(errors="replace")
    manifest = yaml.safe_load((stack.data_dir / "vms" / "kvm" / "warm.yaml").read_text())
    [boot] = manifest["spec"]["template"]["spec"]["domain"]["devices"]["disks"]
    assert boot["disk"] == {"bus": "virtio"}
    # and `ferry describe` shows the rounds, and why each guest was converted or not
    described = stack.ferry("describe", "migration", "m-warm")
    assert described.returncode == 0, described.stderr
    assert "round 1 (precopy)" in described.stdout
    assert "no guest conversion: the guest already runs on virtio" in described.stdout
    described = stack.ferry("describe", "migration", "m-cold")
    assert described.returncode == 0, described.stderr
    assert "ConvertGuest (in place) added" in described.stdout
    print(f"total {time.monotonic() - t0:.0f} s")
