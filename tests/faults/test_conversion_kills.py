"""kill -9 the conversion-service at each stage of a conversion: nothing of virt-v2v stays.

virt-v2v runs in a session of its own with helpers (qemu-nbd serving the source
disk, nbdkit, the libguestfs appliance). When the service that started it dies,
the kernel sends virt-v2v SIGTERM (``PR_SET_PDEATHSIG``) and it ends; what is
left of its session (a helper it could not stop) is killed by the next service's
sweep, from the session recorded in the run's work directory, which is then
removed. The test prints what was left before the sweep at each stage. Each
stage is killed in its own run (the redelivered command starts a new one):
opening the source, inspecting the guest, copying the disk.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ferry.providers import lifetime
from ferry.testing.migration import (
    apply_yaml,
    guest_ova,
    of_type,
    ova_objects,
    place_ovas,
    start_migration,
)
from ferry.testing.stack import EventRecorder, LocalStack, v2v_processes

pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.timeout(1500)]

REPO = Path(__file__).resolve().parents[2]
VM = "guest/ferry-test-guest"
STAGES = ["Opening the source", "Inspecting the source", "Copying disk"]


@pytest.fixture
def work() -> Iterator[Path]:
    # short: virt-v2v's sockets live below it (108-byte limit)
    with tempfile.TemporaryDirectory(prefix="fk-", dir="/tmp") as path:
        yield Path(path)


@pytest.fixture
def stack(tmp_path: Path, work: Path) -> Iterator[LocalStack]:
    env = {"FERRY_CONVERSION__WORK_DIR": str(work), "FERRY_CONVERSION__LEASE_SECONDS": "6"}
    stack = LocalStack(tmp_path / "stack", env=env)
    try:
        yield stack.start()
    finally:
        stack.close()


def seen(stage: str, after_run: int) -> Callable[[list[dict[str, Any]]], bool]:
    return lambda ev: any(
        stage in d.get("stage", "") and d.get("run", 0) > after_run
        for d in of_type(ev, "conversion.progress", VM)
    )


def cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "(gone)"
    return raw.replace(b"\0", b" ").decode(errors="replace")[:200]


def left_of(sessions: dict[int, int]) -> list[int]:
    """Live processes of these sessions (leader pid -> its start time)."""
    return sorted(
        pid for sid, born in sessions.items() for pid in lifetime.session_members(sid, born)
    )


def test_each_stage_killed_leaves_no_process_and_no_work_dir(stack: LocalStack, work: Path) -> None:
    # Given the test guest to convert (flow 3) and an audit-stream subscriber
    guest = guest_ova(REPO)
    ova_dir = place_ovas(stack, Path(guest["ova"]), ["guest"])
    apply_yaml(stack, ova_objects(ova_dir, [VM], plan="stages", power="off"))
    recorder: EventRecorder = stack.record_events()
    time.sleep(2)
    start_migration(stack, "stages", "m-stages")
    report = []
    last_run = 0
    for stage in STAGES:
        # When virt-v2v reaches the stage in a new run and the service is killed
        stack.wait_for(stage, seen(stage, last_run), recorder, timeout=900)
        runs = [d["run"] for d in of_type(recorder.events(), "conversion.progress", VM)]
        last_run = max(runs)
        v2v = v2v_processes(str(stack.root))
        # virt-v2v leads its session
        sessions = {pid: born for pid, _ in v2v if (born := lifetime.start_time(pid)) is not None}
        members = left_of(sessions)
        dirs = sorted(work.glob("ferry-v2v-*"))
        stack.kill("conversion-service")
        # Then, with the service still down, virt-v2v ends (the kernel's SIGTERM)
        deadline = time.monotonic() + 60
        while any(lifetime.start_time(pid) == born for pid, born in sessions.items()):
            if time.monotonic() > deadline:
                break
            time.sleep(0.5)
        v2v_left = [pid for pid, born in sessions.items() if lifetime.start_time(pid) == born]
        before_sweep = [f"{pid} {cmdline(pid)}" for pid in left_of(sessions)]
        # And the service's restart kills what is left of the session and sweeps its dir
        stack.restart("conversion-service")
        time.sleep(1.0)
        left = [f"{pid} {cmdline(pid)}" for pid in left_of(sessions)]
        kept = [d for d in dirs if d.exists()]
        report.append(f"{stage}: virt-v2v {sorted(sessions)}, {len(members)} processes; "
                      f"left before the sweep {before_sweep}, after {left}; "
                      f"dirs {len(dirs)} -> kept {len(kept)}")  # fmt: skip
        assert v2v, f"no virt-v2v running at {stage!r}"
        assert len(members) > 1, f"virt-v2v had no helpers at {stage!r}"
        assert v2v_left == [], f"{stage}: virt-v2v outlived its service"
        assert left == [], f"{stage}: processes of the killed run remain"
        assert dirs and kept == [], f"{stage}: work directories of the killed run remain"
    print("\n".join(report))
    cancel = stack.ferry("cancel", "m-stages")
    assert cancel.returncode == 0, cancel.stderr
