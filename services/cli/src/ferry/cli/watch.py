"""``ferry migrate --wait``: a migration followed until it ends, for a person or for a log.

On a terminal: a bar per VM (its current step, bytes over all its disks) and per
disk, redrawn in place. Into a log or a pipe: one plain line per step change and
end, and a progress line per VM at most every ``PERIOD`` seconds while bytes move
or a conversion reports its stage (virt-v2v's heartbeat), each stamped with the
migration's elapsed time; no bars, no escape codes, nothing cut to a width.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Protocol

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from ferry.bus import Bus
from ferry.cli.objects import ALL, out
from ferry.proto import conversion, migration, subjects
from ferry.proto.state import VmView
from ferry.runtime import objectbucket

PERIOD = 30.0  # seconds between two progress lines of one VM in a log


vm_states = objectbucket.vm_states


class Board:
    """Live bars: one per VM (step, bytes over its disks), one per disk under it."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.vms: dict[str, TaskID] = {}
        self.disks: dict[tuple[str, str], TaskID] = {}
        self.names: dict[str, str] = {}
        self.result: migration.MigrationCompleted | None = None
        self.rejected: migration.MigrationRejected | None = None

    def add_vm(self, state: VmView) -> None:
        vm = state.vm
        if vm in self.vms:
            return
        self.names[vm] = state.name
        total = state.total_bytes
        self.vms[vm] = self.progress.add_task(self._label(vm, "Queued"), total=total or None)
        for d in state.disks:
            label = f"  └ {d.name}"
            self.disks[(vm, d.id)] = self.progress.add_task(
                label, total=d.total or None, completed=d.done
            )

    def _label(self, vm: str, what: str) -> str:
        return f"{self.names.get(vm, vm)}: {what}"

    def see(self, msg: Any) -> None:
        vm = msg.vm
        task = self.vms.get(vm)
        if isinstance(msg, migration.MigrationCompleted):
            self.result = msg
        elif isinstance(msg, migration.MigrationRejected):
            self.rejected = msg
        elif task is None:
            return
        elif isinstance(msg, migration.StepStarted):
            again = f" (attempt {msg.attempt})" if msg.attempt > 1 else ""
            self.progress.update(task, description=self._label(vm, msg.step + again))
        elif isinstance(msg, migration.Progress):
            self.progress.update(task, completed=msg.done, total=msg.total or None)
            for disk, done in msg.disks.items():
                if (vm, disk) in self.disks:
                    self.progress.update(self.disks[(vm, disk)], completed=done)
        elif isinstance(msg, migration.VmCompleted):
            self._finish(vm, "[green]Succeeded[/]")
        elif isinstance(msg, migration.VmFailed):
            self.progress.update(
                task, description=self._label(vm, f"[red]Failed[/] in {msg.step}: {msg.reason}")
            )
        elif isinstance(msg, migration.VmCanceled):
            self.progress.update(task, description=self._label(vm, "[yellow]Canceled[/]"))

    def _finish(self, vm: str, what: str) -> None:
        task = self.vms[vm]
        total = self.progress.tasks[task].total
        self.progress.update(task, description=self._label(vm, what), completed=total or 0)
        for (owner, _), disk_task in self.disks.items():
            if owner == vm:
                self.progress.update(disk_task, completed=self.progress.tasks[disk_task].total or 0)


class Lines:
    """For a log: one plain line per step change or end, stamped with the migration's elapsed
    time; no bars, no escape codes, nothing cut to a width."""

    def __init__(self, since: datetime, period: float = PERIOD) -> None:
        self.since = since
        self.period = period
        self.said: dict[str, float] = {}  # vm -> elapsed seconds of its last line
        self.vms: dict[str, TaskID] = {}
        self.names: dict[str, str] = {}
        self.result: migration.MigrationCompleted | None = None
        self.rejected: migration.MigrationRejected | None = None

    def add_vm(self, state: VmView) -> None:
        self.vms.setdefault(state.vm, TaskID(len(self.vms)))
        self.names[state.vm] = state.name

    def _say(self, vm: str, what: str) -> None:
        took = (datetime.now(UTC) - self.since).total_seconds()
        self.said[vm] = took
        whole = int(took)
        typer.echo(f"{whole // 60}:{whole % 60:02d} {self.names.get(vm, vm)}: {what}")

    def _periodic(self, vm: str, what: str) -> None:
        took = (datetime.now(UTC) - self.since).total_seconds()
        if took - self.said.get(vm, 0.0) >= self.period:
            self._say(vm, what)

    def see(self, msg: Any) -> None:
        if isinstance(msg, migration.MigrationCompleted):
            self.result = msg
        elif isinstance(msg, migration.MigrationRejected):
            self.rejected = msg
        elif isinstance(msg, migration.MigrationStarted):
            for vm in msg.skipped:
                typer.echo(f"skipped {vm}: migrated already")
        elif isinstance(msg, migration.StepStarted):
            again = f" (attempt {msg.attempt})" if msg.attempt > 1 else ""
            self._say(msg.vm, msg.step + again)
        elif isinstance(msg, migration.Progress):
            pct = f"{100 * msg.done / msg.total:.0f}% " if msg.total else ""
            self._periodic(msg.vm, f"{msg.step} {pct}({size(msg.done)} of {size(msg.total)})")
        elif isinstance(msg, conversion.ConversionProgress):
            pct = f" {msg.percent:.0f}%" if msg.percent is not None else ""
            self._periodic(msg.vm, f"{msg.step}: {msg.stage}{pct} ({msg.elapsed:.0f} s in)")
        elif isinstance(msg, migration.VmCompleted):
            self._say(msg.vm, "Succeeded")
        elif isinstance(msg, migration.VmFailed):
            self._say(msg.vm, f"Failed in {msg.step}: {msg.reason}")
        elif isinstance(msg, migration.VmCanceled):
            self._say(msg.vm, "Canceled")


async def follow(bus: Bus, name: str, since: datetime) -> int:
    """Draw the migration until it ends (bars on a terminal, lines in a log); 0 only when
    every VM succeeded."""
    if not out.is_terminal:
        return await _watch(bus, name, since, Lines(since))
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TimeElapsedColumn())
    with Progress(*columns, console=out, transient=False) as progress:
        return await _watch(bus, name, since, Board(progress))


async def _watch(bus: Bus, name: str, since: datetime, board: Board | Lines) -> int:
    async for _, msg in bus.events(subjects.events_of(migration=name), since=since, follow=True):
        if isinstance(msg, migration.MigrationStarted) or (
            msg.vm not in board.vms and msg.vm != ALL
        ):
            for state in await vm_states(bus, name):
                board.add_vm(state)
        board.see(msg)
        if board.result is not None or board.rejected is not None:
            break
    if board.rejected is not None:
        for vm, reasons in board.rejected.reasons.items():
            for reason in reasons:
                typer.echo(f"rejected: {vm}: {reason}", err=True)
        return 1
    r = board.result
    assert r is not None
    out.print(
        f"migration {name}: {r.succeeded} succeeded, {r.failed} failed, {r.canceled} canceled"
    )
    return 0 if r.failed == 0 and r.canceled == 0 else 1


def size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n:.1f} PiB"


class _Disk(Protocol):
    name: str
    done: int
    total: int
    checksum: str


class _Round(Protocol):
    precopy: int
    final: bool
    changed: int
    copied: int
    seconds: float


def disk_line(d: _Disk) -> str:
    """One disk for ``describe``: copied of total, and the verified copy's checksum."""
    pct = 100 * d.done / d.total if d.total else 0.0
    check = f"  {d.checksum}" if d.checksum else ""
    return f"  disk {d.name}: {size(d.done)} / {size(d.total)} ({pct:.0f}%){check}"


def round_line(r: _Round) -> str:
    """One warm copy round for ``describe``: what changed, what was written, how long."""
    what = "final delta" if r.final else ("full copy" if r.precopy == 0 else "precopy")
    return (
        f"  round {r.precopy} ({what}): {size(r.changed)} changed, "
        f"{size(r.copied)} copied in {r.seconds:.1f} s"
    )
