"""An appliance that stops booting is killed within its silence limit, not the time limit.

virt-v2v is played by scripts that print what ``virt-v2v -v`` prints around the
appliance's boot (libguestfs's ``launch:`` line, console lines, ``appliance is up``).
"""

from __future__ import annotations

import io
import os
import time
from pathlib import Path

import pytest

from ferry.conversion_service import appliance, v2v
from ferry.conversion_service.settings import ConversionSettings
from ferry.platform.local.processes import LocalWorkloads
from ferry.platform.workloads import Workload
from ferry.proto.conversion import ConversionMode
from ferry.proto.inventory import Disk, ProviderType, Vm, Volume

LAUNCH = "libguestfs: launch: program=virt-v2v"
CONSOLE = "[    0.421337] sched_clock: Marking stable (412345678, 8899)->(43210, -1234)"


def script(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "fake-v2v"
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


async def run(tmp_path: Path, body: str, silence: float) -> int:
    workload = Workload(
        name="fake", argv=[str(script(tmp_path, body))], env={"PATH": os.environ["PATH"]},
        volumes={}, workdir=str(tmp_path), time_limit=60, grace=1.0,
    )  # fmt: skip
    watch = appliance.Watch(silence)

    async def feed(line: str) -> None:
        watch.feed(line)

    return await watch.guard(LocalWorkloads().run_workload(workload, io.BytesIO(), feed))


async def test_a_boot_that_stops_talking_is_killed_with_its_helpers(tmp_path: Path) -> None:
    # Given a run whose appliance prints a few console lines and then nothing, while
    # a helper of its session (qemu, say) runs on
    pids = tmp_path / "pids"
    body = f"echo '{LAUNCH}'\necho '{CONSOLE}'\nsleep 3600 & echo $! > {pids}\nwait\n"
    started = time.monotonic()
    # When the silence lasts longer than the limit
    with pytest.raises(appliance.ApplianceHung) as raised:
        await run(tmp_path, body, silence=1.0)
    # Then the run is ended promptly, its helper too, saying after what it stopped
    assert time.monotonic() - started < 15
    assert "stopped booting" in str(raised.value) and "sched_clock" in str(raised.value)
    assert not alive(int(pids.read_text()))


async def test_a_slow_boot_and_silent_work_after_it_are_left_alone(tmp_path: Path) -> None:
    # Given an appliance that boots slowly but keeps talking, then works in silence
    # for longer than the limit (an initramfs rebuilt under emulation)
    body = (
        f"echo '{LAUNCH}'\n"
        'for i in 1 2 3 4 5; do echo "[    $i.0] console line"; sleep 0.3; done\n'
        "echo 'libguestfs: appliance is up'\nsleep 2.0\nexit 3\n"
    )
    # When it runs with a silence limit longer than its boot's gaps, shorter than its work
    # Then it runs to its own end (its exit status is the outcome)
    assert await run(tmp_path, body, silence=1.5) == 3


async def test_silence_before_the_launch_is_not_a_boot(tmp_path: Path) -> None:
    # Given a run that is quiet before any appliance starts (opening a remote source)
    body = "echo 'opening the source'\nsleep 1.2\nexit 0\n"
    # Then the watch does not fire
    assert await run(tmp_path, body, silence=0.5) == 0


async def test_the_conversion_fails_transient_and_says_so_in_its_log(tmp_path: Path) -> None:
    # Given an in-place conversion whose appliance hangs in boot
    disk = tmp_path / "disk"
    disk.write_bytes(b"\0" * 1024 * 1024)
    vm = Vm(id="vm", name="vm", provider_type=ProviderType.OVA,
            disks=[Disk(id="d1", name="a", capacity=1 << 20)])  # fmt: skip
    volume = Volume(disk_id="d1", name="v", size=1 << 20, capacity=1 << 20, path=str(disk))
    fake = script(tmp_path, f"echo '{LAUNCH}'\necho '{CONSOLE}'\nsleep 3600\n")
    work = tmp_path / "work"
    work.mkdir()
    settings = ConversionSettings(
        virt_v2v_in_place=str(fake), appliance_silence_seconds=1.0, kill_grace_seconds=1.0,
        accel="tcg",
        work_dir=work, large_tmp_dir=tmp_path / "large",
    )  # fmt: skip
    converter = v2v.Converter(settings, tmp_path / "data", LocalWorkloads())
    job = v2v.Job(migration="m", vm_key="vm", mode=ConversionMode.IN_PLACE, inventory=vm,
                  volumes=[volume], timeout_seconds=600)  # fmt: skip
    # When it runs
    with pytest.raises(v2v.ConversionError) as raised:
        await converter.convert(job)
    # Then it fails as the machine's fault (run again later), naming the hang, and the
    # kept log says what happened
    assert raised.value.transient and "stopped booting" in raised.value.reason
    assert raised.value.log is not None
    assert b"ferry: the libguestfs appliance stopped booting" in raised.value.log.read_bytes()
    assert not list(work.iterdir())  # the run's directory is gone
