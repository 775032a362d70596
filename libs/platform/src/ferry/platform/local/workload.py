"""Starting a workload process and following it from the service.

The service side of :mod:`ferry.platform.local.transfer`: spawn the child with
its job on stdin, turn its stdout lines into progress callbacks and a result,
and turn its end into either a ``Done`` or a precise exception. A paced job's
``want`` lines are answered on its stdin once ``rate`` has granted the bytes. A child that
dies without saying why (killed, OOM) is a :class:`WorkloadCrashed`, which is
worth retrying: the next attempt resumes from the checkpoint. Cancelling the
awaiting task kills the child.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import signal
from collections.abc import Awaitable, Callable

import msgspec

from ferry.platform import errors
from ferry.platform.errors import WorkloadCrashed
from ferry.platform.local.transfer import Done, Error, Job, Line, ProgressLine, Stage, Want
from ferry.platform.settings import LocalSettings
from ferry.platform.volumes import VolumeError
from ferry.providers import lifetime

_DECODER = msgspec.json.Decoder(Line)


async def _grant(
    stdin: asyncio.StreamWriter, rate: Callable[[int], Awaitable[None]] | None, nbytes: int
) -> None:
    if rate is not None:
        await rate(nbytes)
    if not stdin.is_closing():
        stdin.write(b"\n")
        with contextlib.suppress(ConnectionError):
            await stdin.drain()


def command(settings: LocalSettings, kind: str) -> list[str]:
    return [settings.python, "-m", f"ferry.platform.local.{kind}"]


def job_bytes(job: Job) -> bytes:
    return msgspec.json.encode(job) + b"\n"  # one line: a paced job's grants follow it


async def run(
    settings: LocalSettings,
    kind: str,
    job: Job,
    on_progress: Callable[[ProgressLine], None] | None = None,
    on_stage: Callable[[str], None] | None = None,
    *,
    rate: Callable[[int], Awaitable[None]] | None = None,
) -> Done:
    proc = await asyncio.create_subprocess_exec(
        *command(settings, kind),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        # a copy must stop with the service that started it: a restarted service
        # copies again, and two writers of one volume would race
        preexec_fn=lifetime.die_with_parent(signal.SIGKILL),
    )
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    stderr_tail: collections.deque[str] = collections.deque(maxlen=20)

    async def read_stderr() -> None:
        assert proc.stderr is not None
        async for raw in proc.stderr:
            stderr_tail.append(raw.decode(errors="replace").rstrip())

    stderr_task = asyncio.create_task(read_stderr())
    done: Done | None = None
    failure: Error | None = None
    try:
        proc.stdin.write(job_bytes(job))
        with contextlib.suppress(ConnectionError):
            await proc.stdin.drain()
        if not job.paced:
            proc.stdin.close()
        async for raw in proc.stdout:
            try:
                line = _DECODER.decode(raw)
            except msgspec.DecodeError:
                stderr_tail.append(raw.decode(errors="replace").rstrip())
                continue
            if isinstance(line, ProgressLine) and on_progress is not None:
                on_progress(line)
            elif isinstance(line, Want):
                await _grant(proc.stdin, rate, line.bytes)
            elif isinstance(line, Stage) and on_stage is not None:
                on_stage(line.stage)
            elif isinstance(line, Done):
                done = line
            elif isinstance(line, Error):
                failure = line
        if not proc.stdin.is_closing():
            proc.stdin.close()
        returncode = await proc.wait()
        await stderr_task
    except BaseException:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        stderr_task.cancel()
        raise
    if done is not None and returncode == 0:
        return done
    if failure is not None:
        if failure.code == "volume":
            raise VolumeError(failure.reason)
        raise errors.from_code(failure.code, failure.reason)
    how = (
        f"was killed by {signal.Signals(-returncode).name}"
        if returncode < 0
        else f"exited with status {returncode}"
    )
    tail = "; ".join(list(stderr_tail)[-3:])
    raise WorkloadCrashed(f"the {kind} workload {how}" + (f": {tail}" if tail else ""))
