"""Run a workload as a child process tree that can always be stopped completely.

Built for virt-v2v, the hardest case: virt-v2v starts nbdkit and qemu-nbd for its
disks, and libguestfs starts a QEMU appliance in a process group of its own (plus
a "recovery" process meant to kill QEMU if virt-v2v dies). Killing virt-v2v's process group alone
can therefore leave QEMU running. The child is started as the leader of a new
session; every helper stays in that session (setpgid does not change it), so
"everything whose session id is the leader's pid", plus anything that
descended from the leader, is exactly what must go. Stopping is: SIGTERM to
virt-v2v so it can remove its temporary files, a grace period, then SIGKILL to
whatever remains, then a check that nothing does.

The same sweep runs after a normal exit, so a helper that outlives virt-v2v
never lingers either. If the service itself is killed, virt-v2v gets SIGTERM
from the kernel (``PR_SET_PDEATHSIG``) and stops its helpers, and the session
is recorded in the work directory (``.ferry-session``) for the owner's sweep.

:class:`LocalWorkloads` is the platform's workload seam on top
of this: the workload runs with its own environment only (nothing of the service's
is inherited) in its work directory; its volumes are the local platform's files or
devices, already at the paths it is given, so they are checked, not mounted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import stat as file_stat
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from ferry.platform.workloads import (
    LineHandler,
    Placed,
    Workload,
    WorkloadError,
    WorkloadTimedOut,
    link_problems,
    split_lines,
)
from ferry.proto.inventory import Volume
from ferry.providers import lifetime

log = logging.getLogger(__name__)

_DRAIN_SECONDS = 2.0  # output still buffered in the pipe after the child exits


@dataclass(frozen=True)
class _Stat:
    pid: int
    state: str
    ppid: int
    session: int


def _stat(pid: int) -> _Stat | None:
    """``/proc/<pid>/stat``: the fields after the command name, which may hold spaces."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    return _Stat(pid, fields[0], int(fields[1]), int(fields[3]))


def _processes() -> list[_Stat]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _stat(int(entry))
            if stat is not None:
                found.append(stat)
    return found


def members(leader: int) -> list[int]:
    """Pids of the leader's session and of its descendants (which may have left it)."""
    table = _processes()
    children: dict[int, list[int]] = {}
    for stat in table:
        children.setdefault(stat.ppid, []).append(stat.pid)
    found = {stat.pid for stat in table if stat.session == leader}
    stack = [leader]
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in found:
                found.add(child)
                stack.append(child)
    found.discard(os.getpid())
    return sorted(found)


def _alive(pids: Iterable[int]) -> list[int]:
    """The pids still running (zombies have already stopped)."""
    alive = []
    for pid in set(pids):
        stat = _stat(pid)
        if stat is not None and stat.state not in ("Z", "X"):
            alive.append(pid)
    return sorted(alive)


def _kill(pids: Iterable[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def _wait_gone(pids: Sequence[int], seconds: float) -> list[int]:
    deadline = time.monotonic() + seconds
    remaining = _alive(pids)
    while remaining and time.monotonic() < deadline:
        time.sleep(0.1)
        remaining = _alive(remaining)
    return remaining


def stop_session(leader: int, grace: float, running: bool = True) -> list[int]:
    """Terminate the leader (if ``running``), then kill what is left of its session.

    Returns the pids that survived SIGKILL (none, unless the kernel is stuck).
    Blocking (it polls /proc); call it in a thread.
    """
    before = members(leader)
    if running:
        _kill([leader], signal.SIGTERM)
        _wait_gone([leader], grace)
    for _ in range(3):
        remaining = _alive([*before, *members(leader)])
        if not remaining:
            return []
        _kill(remaining, signal.SIGKILL)
        _wait_gone(remaining, 5.0)
    survivors = _alive([*before, *members(leader)])
    if survivors:
        log.error("processes of session %d survived SIGKILL: %s", leader, survivors)
    return survivors


async def run(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    log_file: BinaryIO,
    on_line: LineHandler | None = None,
    time_limit: float,
    grace: float = 5.0,
    cwd: str | None = None,
    stdout: BinaryIO | None = None,
) -> int:
    """Run ``argv``, copy its output to ``log_file``, hand each line to ``on_line``.

    With ``stdout`` (a real file), the child's standard output goes there and only
    its standard error is logged: for tools whose result is their output.
    Returns the exit status. Raises :class:`WorkloadTimedOut` after ``time_limit`` seconds and
    re-raises cancellation; in both cases, and after a normal exit, no process of
    the child's session is left.
    """
    process = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=stdout if stdout is not None else asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE if stdout is not None else asyncio.subprocess.STDOUT,
        env=dict(env),
        cwd=cwd,
        start_new_session=True,
        preexec_fn=lifetime.die_with_parent(),
    )
    if cwd is not None:  # for a sweep after this service is killed (lifetime.kill_recorded)
        with contextlib.suppress(OSError):
            lifetime.record(Path(cwd) / lifetime.SESSION_FILE, process.pid)
    pump = asyncio.create_task(_pump(process, log_file, on_line))
    waiter = asyncio.create_task(_exited(process))
    try:
        try:
            async with asyncio.timeout(time_limit):
                done, _ = await asyncio.wait({pump, waiter}, return_when=asyncio.FIRST_COMPLETED)
                if pump in done:
                    pump.result()  # a failing line handler fails the run
                    return await waiter
                # The child exited; a helper may still hold the pipe open.
                await asyncio.wait({pump}, timeout=_DRAIN_SECONDS)
                return waiter.result()
        except TimeoutError:
            raise WorkloadTimedOut(time_limit) from None
    finally:
        await _stop(process, grace)  # also closes the pipe, so the pump ends
        waiter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(asyncio.wait({pump}, timeout=_DRAIN_SECONDS))
        if not pump.done():
            pump.cancel()


async def _exited(process: asyncio.subprocess.Process) -> int:
    """The child's status as soon as it is reaped.

    ``Process.wait()`` also waits for the pipes to close, which a helper that
    inherited them can put off indefinitely.
    """
    while process.returncode is None:  # noqa: ASYNC110 - asyncio offers no reaped-event
        await asyncio.sleep(0.2)
    return process.returncode


async def _pump(
    process: asyncio.subprocess.Process, log_file: BinaryIO, on_line: LineHandler | None
) -> None:
    output = process.stdout if process.stdout is not None else process.stderr
    assert output is not None
    pending = ""
    while chunk := await output.read(65536):
        log_file.write(chunk)
        log_file.flush()
        lines, pending = split_lines(pending + chunk.decode(errors="replace"))
        if on_line is not None:
            for line in lines:
                await on_line(line)
    if pending and on_line is not None:
        await on_line(pending)


async def _stop(process: asyncio.subprocess.Process, grace: float) -> None:
    """Stop and reap the child and its helpers, even while being cancelled."""
    leader = process.pid
    stopping = asyncio.ensure_future(
        asyncio.to_thread(stop_session, leader, grace, process.returncode is None)
    )
    try:
        await asyncio.shield(stopping)
    except asyncio.CancelledError:
        await stopping  # finish the kill before letting the cancellation through
        raise
    finally:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(process.wait())


# -- the workload seam on top of it ---------------------------------------------------


def _missing(volumes: dict[str, str]) -> list[str]:
    return sorted(name for name, path in volumes.items() if not os.path.exists(path))


def _output(path: str) -> BinaryIO:
    return open(path, "wb")


@contextlib.contextmanager
def _secret_files(workload: Workload) -> Iterator[None]:
    """The workload's secret files, readable by this user only, removed when it ends."""
    if not workload.secret_files:
        yield
        return
    if not workload.secret_dir:
        raise WorkloadError(f"workload {workload.name}: secret files but no secret_dir")
    folder = Path(workload.secret_dir)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    written = []
    try:
        for name, content in workload.secret_files.items():
            path = folder / name
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(descriptor, "wb") as file:
                file.write(content)
            written.append(path)
        yield
    finally:
        for path in written:
            path.unlink(missing_ok=True)


def _links(workload: Workload) -> None:
    """The workload's links in its work directory (the caller's: it removes them with it)."""
    if workload.links and not workload.workdir:
        raise WorkloadError(f"workload {workload.name}: links but no workdir")
    for path, target in workload.links.items():
        link = Path(workload.workdir) / path
        if not link.parent.resolve().is_relative_to(Path(workload.workdir).resolve()):
            raise WorkloadError(f"workload {workload.name}: link {path} leaves its workdir")
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(Path(target).resolve())


class LocalWorkloads:
    workloads_run_here = True

    async def place_volumes(self, namespace: str, volumes: Sequence[Volume]) -> dict[str, Placed]:
        """A local volume is its file (or device) on this host."""
        placed = {}
        for volume in volumes:
            if not volume.path:
                raise WorkloadError(f"volume {volume.name!r} has no local path on this host")
            try:
                info = os.stat(volume.path)
            except FileNotFoundError:
                raise WorkloadError(
                    f"volume {volume.name!r}: {volume.path} does not exist"
                ) from None
            block = file_stat.S_ISBLK(info.st_mode)
            placed[volume.name] = Placed(mount=volume.path, disk=volume.path, block=block)
        return placed

    async def run_workload(
        self, workload: Workload, log: BinaryIO, on_line: LineHandler | None = None
    ) -> int:
        missing = _missing({**workload.volumes, **{p: p for p in workload.shares}})
        if missing:
            raise WorkloadError(
                f"workload {workload.name}: volumes not on this host: {', '.join(missing)}"
            )
        with contextlib.ExitStack() as stack:
            stack.enter_context(_secret_files(workload))
            _links(workload)
            stdout = stack.enter_context(_output(workload.output)) if workload.output else None
            status = await run(
                workload.argv,
                env=workload.env,
                log_file=log,
                on_line=on_line,
                time_limit=workload.time_limit,
                grace=workload.grace,
                cwd=workload.workdir or None,
                stdout=stdout,
            )
            replaced = link_problems(workload.workdir, workload.links) if status == 0 else []
            if replaced:
                raise WorkloadError(f"workload {workload.name}: {'; '.join(replaced)}")
            return status
