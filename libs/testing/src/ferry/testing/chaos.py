"""A fleet of raw-copy migrations, kill -9s at seeded moments, and the audit of what came out.

Shared by ``bench/chaos/run.py`` (20 migrations, 100 kills, against a run without
kills) and the fault tests (a shorter schedule). The fleet is small OVAs
(:mod:`ferry.testing.smallova`) migrated with ``skipGuestConversion`` and the
target left off, so the run is about the bus, the leases and the copies, not
about virt-v2v or a guest's boot.

What :func:`audit` holds the run to, each read from the thing itself:

- every VM ended Completed, and exactly once: one distinct ``vm_completed``
  result per VM in the publish ledger (:mod:`ferry.bus.ledger`), which sees
  what the audit stream's dedupe hides; and no step's effect twice (one
  distinct ``volumes_created``, ``disks_copied``, ``vm_created`` per VM);
- each target volume holds the source disk's bytes (``qemu-img compare``);
- exactly one volume per disk and one VirtualMachine per source VM on disk;
- nothing in the dead-letter stream;
- no process left that names the stack's directory once it is down (checked by
  the caller after ``ferry down``: :func:`orphans`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ferry.bus import Bus, ledger
from ferry.proto import subjects
from ferry.testing import smallova
from ferry.testing.migration import apply_yaml, of_type, ova_objects, start_migration
from ferry.testing.stack import LocalStack

NATS = "nats-server"
TARGETS = ("migration-controller", "volume-service", "conversion-service", "vm-service", NATS)
PER_VM_EFFECTS = (
    "volume.volumes_created.v1",
    "volume.disks_copied.v1",
    "vm.vm_created.v1",
    "migration.vm_completed.v1",
)
DLQ = subjects.DEAD_LETTER_STREAM
FINAL = ("Succeeded", "Failed", "Canceled")


def settings(ledger_dir: Path, **extra: str) -> dict[str, str]:
    """The services' settings for a chaos run: the ledger on, no raw-copy inspection
    (the small OVAs hold no OS), quick redeliveries."""
    return {
        "FERRY_BUS__LEDGER_DIR": str(ledger_dir),
        "FERRY_CONTROLLER__RAW_COPY_INSPECTION": "off",
        "FERRY_BUS__ACK_WAIT_SECONDS": "10",
        **extra,
    }


@dataclass(frozen=True)
class Fleet:
    vms: list[smallova.SmallOva]
    plan: str

    @property
    def ids(self) -> list[str]:
        return [vm.vm_id for vm in self.vms]


def make_fleet(
    stack: LocalStack, count: int, *, size_mib: int = 32, plan: str = "chaos", in_flight: int = 4
) -> Fleet:
    """``count`` small OVAs in the stack's import area, and their objects applied."""
    folder = stack.data_dir / "ova"
    vms = [smallova.make(folder, f"vm-{n:02d}", size_mib, seed=n) for n in range(count)]
    ids = [vm.vm_id for vm in vms]
    apply_yaml(
        stack,
        ova_objects(folder, ids, plan=plan, max_in_flight=in_flight, power="off", raw_copy=True),
    )
    return Fleet(vms, plan)


@dataclass(frozen=True)
class Kill:
    after: float  # seconds after the previous kill (once the target is up again)
    target: str


def schedule(seed: int, kills: int, gap: tuple[float, float] = (0.5, 3.0)) -> list[Kill]:
    """``kills`` kill -9s of random targets at random gaps, the same for the same seed."""
    rng = random.Random(seed)  # noqa: S311 (a schedule reproducible by seed)
    return [Kill(round(rng.uniform(*gap), 2), rng.choice(TARGETS)) for _ in range(kills)]


def _pid_of(stack: LocalStack, name: str) -> int | None:
    state = json.loads((stack.data_dir / "stack.json").read_text())
    for proc in [state["nats"], *state.get("nats_peers", []), *state["services"]]:
        if proc["name"] == name:
            return int(proc["pid"])
    return None


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def _live_pid(stack: LocalStack, name: str, seconds: float) -> int | None:
    """The target's current process, waiting while the supervisor restarts it."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        pid = _pid_of(stack, name)
        if pid is not None and _alive(pid):
            return pid
        time.sleep(0.1)
    return None


@dataclass
class Run:
    kills: list[tuple[float, str, int]] = field(default_factory=list)  # (t, target, pid)
    seconds: float = 0.0


class _Watch:
    """Asks ``done`` every few seconds in a thread, so kills keep to their moments."""

    def __init__(self, done: Callable[[], bool], every: float = 2.0) -> None:
        self.ended = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, args=(done, every), daemon=True)
        self._thread.start()

    def _loop(self, done: Callable[[], bool], every: float) -> None:
        while not self._stop.is_set():
            if done():
                self.ended.set()
                return
            self._stop.wait(every)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def run(
    stack: LocalStack,
    fleet: Fleet,
    migration: str,
    plan: Sequence[Kill],
    *,
    done: Callable[[], bool],
    timeout: float,
    say: Callable[[str], None] = print,
) -> Run:
    """Start the migration and carry out ``plan`` under the supervisor until ``done()``.

    Each kill comes its gap after the previous one and hits the target's current
    process, whatever it is doing, a restart still starting up included (it waits
    only while the supervisor has no process for it yet). Kills left when the
    migration ends are not carried out.
    """
    out = Run()
    started = time.monotonic()
    start_migration(stack, fleet.plan, migration)
    watch = _Watch(done)
    try:
        for kill in plan:
            if watch.ended.wait(kill.after) or time.monotonic() - started > timeout:
                break
            pid = _live_pid(stack, kill.target, 30.0)
            if pid is None:
                say(f"  no live {kill.target} to kill within 30s")
                continue
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                at = time.monotonic() - started
                out.kills.append((round(at, 2), kill.target, pid))
                say(f"  kill {len(out.kills):3d} at {at:7.2f}s: {kill.target} (pid {pid})")
        if not watch.ended.wait(max(0.0, timeout - (time.monotonic() - started))):
            raise TimeoutError(f"the migration did not end within {timeout:.0f}s")
    finally:
        watch.stop()
    out.seconds = time.monotonic() - started
    return out


def migration_done(stack: LocalStack, migration: str) -> Callable[[], bool]:
    """Whether the Migration reached a final phase (read with ``ferry get``)."""

    def check() -> bool:
        got = stack.ferry("get", "migrations", migration, "-o", "json", timeout=60)
        if got.returncode != 0:
            return False
        try:
            found = json.loads(got.stdout)
        except json.JSONDecodeError:
            return False
        objects = found if isinstance(found, list) else [found]
        return any(o.get("status", {}).get("phase", "") in FINAL for o in objects)

    return check


@dataclass
class Audit:
    completed: int = 0  # VMs with a vm_completed event in the stream
    lost: list[str] = field(default_factory=list)  # VMs that did not end Completed
    duplicated: list[str] = field(default_factory=list)  # (type, vm): more than one effect
    checksum_mismatch: list[str] = field(default_factory=list)
    volumes: int = 0
    vms_on_disk: int = 0
    dead_letters: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.problems


def dead_letters(stack: LocalStack) -> int:
    """Messages in the dead-letter stream: from the monitor of ``ferry up``'s nats-server,
    or, for a test's own stack (no monitor, no identities), asked over the bus."""
    if not (stack.data_dir / "stack.json").exists():
        return asyncio.run(_dead_letters_over_the_bus(stack.nats.url))
    state = json.loads((stack.data_dir / "stack.json").read_text())
    url = f"{state['nats_monitor']}/jsz?streams=true"
    with urllib.request.urlopen(url, timeout=5) as answer:  # noqa: S310 (loopback)
        jsz = json.load(answer)
    for account in jsz.get("account_details", []):
        for stream in account.get("stream_detail", []):
            if stream["name"] == DLQ:
                return int(stream["state"]["messages"])
    return 0


async def _dead_letters_over_the_bus(url: str) -> int:
    async with await Bus.connect(url, name="chaos-audit") as bus:
        info = await bus.js.stream_info(DLQ)
        return int(info.state.messages)


def audit(stack: LocalStack, fleet: Fleet, migration: str, ledger_dir: Path) -> Audit:
    out = Audit()
    events = stack.stored_events(migration)
    completed = {d["vm"] for d in of_type(events, "migration.vm_completed")}
    out.completed = len(completed)
    out.lost = [vm for vm in fleet.ids if vm not in completed]
    effects = ledger.effects(
        line for line in ledger.read(ledger_dir) if line["migration"] == migration
    )
    for (kind, key, _step), ids in sorted(effects.items()):
        if kind in PER_VM_EFFECTS and len(ids) > 1:
            out.duplicated.append(f"{kind} {key}: {len(ids)}")
    copies = {d["vm"]: d for d in of_type(events, "volume.disks_copied")}
    for vm in fleet.vms:
        copy = copies.get(vm.vm_id)
        if copy is None:
            out.checksum_mismatch.append(f"{vm.vm_id}: never copied")
            continue
        for disk in copy["disks"]:
            if disk["source"]["digest"] != disk["target"]["digest"]:
                out.checksum_mismatch.append(f"{vm.vm_id}: digests differ")
        (volume,) = copy["volumes"]
        same = subprocess.run(
            ["qemu-img", "compare", "-f", "raw", str(vm.raw), volume["path"]],
            capture_output=True,
            text=True,
        )
        if same.returncode != 0:
            out.checksum_mismatch.append(f"{vm.vm_id}: {same.stdout.strip()}")
    storage = stack.data_dir / "storage" / "volumes"
    out.volumes = len(list(storage.glob("claims/*/*.json")))
    out.vms_on_disk = len(list((stack.data_dir / "vms").glob("*/*.yaml")))
    out.dead_letters = dead_letters(stack)
    n = len(fleet.vms)
    if out.lost:
        out.problems.append(f"not completed: {out.lost}")
    if out.duplicated:
        out.problems.append(f"effects done twice: {out.duplicated}")
    if out.checksum_mismatch:
        out.problems.append(f"checksums: {out.checksum_mismatch}")
    if out.volumes != n or out.vms_on_disk != n:
        out.problems.append(f"{out.volumes} volumes and {out.vms_on_disk} VMs for {n} source VMs")
    if out.dead_letters:
        out.problems.append(f"{out.dead_letters} message(s) in the dead-letter stream")
    return out


def orphans(root: Path) -> list[str]:
    """Processes still running that name ``root`` (qemu-nbd, copy workloads, services)."""
    mine, found = str(root), []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            environ = (entry / "environ").read_bytes().decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        # a copy workload's command line names nothing; its environment names the data dir
        if (mine in cmdline or mine in environ) and state not in ("Z", "X"):
            found.append(f"{entry.name}: {cmdline[:160]}")
    return found


def down(stack: LocalStack, settle: float = 2.0) -> list[str]:
    """``ferry down``, then what of the stack still runs (before the harness's own
    clean-up kills strays, which would hide them)."""
    stack.ferry("down", "--data-dir", str(stack.data_dir), "--timeout", "20")
    time.sleep(settle)
    return orphans(stack.root)


def summary(**figures: Any) -> str:
    return "\n".join(f"  {name:<22} {value}" for name, value in figures.items())
