"""The workload half of the target platform: run one command where the platform runs work.

A guest conversion (and, later, every transfer) is a *workload*: locally a child
process tree on this host, in a cluster a pod that mounts the VM's PVCs. The
conversion-service describes what to run (:class:`Workload`) and reads the
workload's output line by line as it comes, the same way on every platform; it
never knows whether a pid or a pod did the work.

What a workload is given must be safe to show: its command line and environment
are visible to anyone who can list processes or read the pod, so neither ever
holds a secret; a secret reaches a workload as a file (in its work directory, or a
mounted Secret). Volumes are named by id and the platform says where the workload
sees them. Cancelling the task that awaits a workload stops all of it (every
helper process, or the pod) before the cancellation goes on.
"""

from __future__ import annotations

import os
import re
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType
from typing import BinaryIO, Protocol, runtime_checkable

import msgspec

from ferry.platform.volumes import Rate
from ferry.proto.inventory import Volume

LineHandler = Callable[[str], Awaitable[None]]


class Workload(msgspec.Struct, frozen=True, kw_only=True):
    """One command to run to its end, and what it may see."""

    name: str  # for logs, and the pod's name in a cluster
    argv: list[str]
    env: dict[str, str] = msgspec.field(default_factory=dict)  # never a secret
    volumes: dict[str, str] = msgspec.field(default_factory=dict)  # volume id → path it sees
    workdir: str = ""  # where it runs and keeps its files; empty: the platform's choice
    time_limit: float
    grace: float = 5.0  # after the polite stop, before everything of it is killed
    output: str = ""  # a file that receives standard output (a tool whose result is its
    #                   output); then only standard error is streamed as lines
    labels: dict[str, str] = msgspec.field(default_factory=dict)  # ownership (ferry.proto.label)
    namespace: str = ""  # in a cluster: where its claims are (the VM's target namespace)
    # Secret files, name → content, that the workload reads under ``secret_dir``: locally
    # written there with mode 0600, in a cluster a Secret mounted read-only. Never env/argv.
    secret_files: dict[str, bytes] = msgspec.field(default_factory=dict)
    secret_dir: str = ""
    # Symbolic links made inside the workload before its command starts, path (relative
    # to ``workdir``) → target as the workload sees it (a disk from :meth:`place_volumes`).
    # After a zero exit each must still be a link: a command that replaced one with a
    # file wrote nothing where the link pointed, and the workload fails saying so.
    links: dict[str, str] = msgspec.field(default_factory=dict)
    # Shares the workload reads, path it sees → ``nfs://server/export/path``, read-only:
    # locally the host has it mounted at that path; a pod mounts the export there.
    shares: dict[str, str] = msgspec.field(default_factory=dict)


class Placed(msgspec.Struct, frozen=True, kw_only=True):
    """Where a workload sees one volume: ``mount`` goes into :attr:`Workload.volumes`,
    ``disk`` is the disk itself (a block device, or the image file in the mount)."""

    mount: str
    disk: str
    block: bool = False  # the disk is a block device (else a file)


class WorkloadError(Exception):
    """The workload could not be run as described; the message says why."""


class WorkloadTimedOut(WorkloadError):
    """The workload ran longer than its time limit and was stopped, all of it."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"time limit of {seconds:g}s exceeded")
        self.seconds = seconds


class WorkloadLost(WorkloadError):
    """The platform ended the workload before its command did (evicted, its node gone).

    Worth retrying: nothing about the workload itself said it would fail.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def link_problems(workdir: str, links: dict[str, str]) -> list[str]:
    """The links of a workload that are no longer links (checked where it ran)."""
    return sorted(
        f"{path} (→ {target}) was replaced by a file"
        for path, target in links.items()
        if not os.path.islink(os.path.join(workdir, path))
    )


class WorkloadsNotBuilt(WorkloadError):
    """This platform cannot run workloads yet (no pretending: the run fails, saying so)."""


def split_lines(buffer: str) -> tuple[list[str], str]:
    """Complete lines of ``buffer`` (ended by ``\\n`` or ``\\r``) and the unfinished rest.

    ``\\r`` ends a line too: progress bars redraw themselves with it, and each redraw
    is news for whoever follows the workload.
    """
    parts = re.split(r"\r\n|\r|\n", buffer)
    return parts[:-1], parts[-1]


class WorkloadPlatform(Protocol):
    """Runs workloads where the platform runs work."""

    # True where a workload is a child process on this host (it sees this host's files
    # and may inherit its environment); False where it runs elsewhere, in an image of
    # its own (a pod: only what the Workload says reaches it).
    workloads_run_here: bool

    async def place_volumes(self, namespace: str, volumes: Sequence[Volume]) -> dict[str, Placed]:
        """Where a workload of this platform sees each of ``volumes``, by volume name.

        Locally a volume is its file on this host; in a cluster a claim is attached to
        the pod at a path of the pod's own. Raises :class:`WorkloadError` when a volume
        cannot be attached (no file here, no such claim).
        """
        ...

    async def run_workload(
        self, workload: Workload, log: BinaryIO, on_line: LineHandler | None = None
    ) -> int:
        """Run ``workload`` to its end and return its exit status.

        Its output is copied to ``log`` as it comes and handed to ``on_line`` line by
        line. Raises :class:`WorkloadTimedOut` after ``workload.time_limit`` seconds,
        :class:`WorkloadError` when it cannot start. Whatever happens (an exit, the
        time limit, cancellation), nothing of the workload is left running.
        """
        ...


class RemotePace(Protocol):
    """Bandwidth grants for a workload that runs elsewhere (a pod), open while its
    ``async with`` block runs.

    The workload reads :attr:`ticket` as one of its secret files and runs under
    :meth:`command`: a program that asks this service for grants with that ticket and
    writes the rate it was granted into ``rate_file`` (which the captive helpers' rate
    filter re-reads), while it runs ``argv``.
    """

    ticket: bytes

    def command(
        self, argv: list[str], *, ticket_file: str, rate_file: str, step: int
    ) -> list[str]: ...

    async def __aenter__(self) -> None: ...

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


@runtime_checkable
class PacesRemotely(Protocol):
    """A platform whose workloads can take grants themselves (the kubernetes platform)."""

    def remote_pace(self, rate: Rate) -> RemotePace:
        """Raises :class:`WorkloadError` when its workloads could not reach this service."""
        ...


def remote_pace(platform: object, rate: Rate) -> RemotePace | None:
    """``platform``'s remote grants for ``rate``, or None if its workloads cannot take any."""
    return platform.remote_pace(rate) if isinstance(platform, PacesRemotely) else None
