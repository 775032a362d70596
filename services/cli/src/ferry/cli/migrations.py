"""``ferry migrate``, ``ferry describe migration`` and ``ferry cancel``.

A Migration's status is derived from its VMs' states in ``ferry-vms``; the CLI
decodes each as the :class:`ferry.proto.state.VmView` the controller's state
extends (it does not import the controller), and unknown fields are ignored, so a
newer controller's additions never break it.

``migrate --wait`` follows the audit stream of that migration and draws a bar
per VM (its current step, bytes over all its disks) and per disk, until the
migration ends; the exit code is 0 only when every VM succeeded.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from ferry.bus import Bus, Conflict
from ferry.cli import estimate, plans
from ferry.cli.objects import ALL, CliError, NatsOption, connect, get_doc, key_of, kv, out, run
from ferry.proto import migration, objects, subjects
from ferry.proto.estimate import PlanEstimate
from ferry.proto.phases import StepStatus, VmStatus
from ferry.proto.state import VmView
from ferry.proto.subjects import Bucket
from ferry.runtime import estimates

MARK = {
    StepStatus.COMPLETED: "✓",
    StepStatus.RUNNING: "▶",
    StepStatus.FAILED: "✗",
    StepStatus.CANCELED: "⊘",
    StepStatus.PENDING: "·",
}


async def vm_states(bus: Bus, name: str) -> list[VmView]:
    store = bus.kv(Bucket.VMS, VmView)
    states = []
    for key in await store.keys(subjects.token(name) + "."):
        entry = await store.get(key)
        if entry is not None:
            states.append(entry.value)
    return sorted(states, key=lambda s: s.seq)


# -- migrate -------------------------------------------------------------------------


def parse_time(value: str) -> datetime:
    if value == "now":
        return datetime.now(UTC)
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise CliError(
            f"--cutover {value!r} is not an RFC 3339 time (e.g. 2026-01-31T22:00:00Z) or 'now'"
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


async def skipped(bus: Bus, plan: str) -> list[str]:
    """The plan's VMs a new migration leaves out (they succeeded before), each with why."""
    done = {
        s.name: s.migration
        for s in await estimates.stored_states(bus)
        if s.plan == plan and s.status is VmStatus.SUCCEEDED
    }
    return [f"skipped {vm}: migrated already by migration {m}" for vm, m in sorted(done.items())]


async def start(bus: Bus, plan: str, name: str | None, cutover: datetime | None) -> str:
    if await get_doc(bus, "Plan", plan) is None:
        raise CliError(f"Plan {plan!r} does not exist (ferry get plans)")
    for line in await skipped(bus, plan):
        typer.echo(line)
    name = name or f"{plan}-{datetime.now(UTC).strftime('%Y%m%d-%H%M%S')}"
    doc: dict[str, Any] = {
        "apiVersion": objects.API_VERSION,
        "kind": "Migration",
        "metadata": {"name": name},
        "spec": {"plan": {"name": plan}, **({"cutover": cutover.isoformat()} if cutover else {})},
    }
    mig = objects.parse_object(doc, "ferry migrate")
    try:
        await kv(bus).create(key_of("Migration", name), objects.to_document(mig))
    except Conflict:
        raise CliError(f"Migration {name!r} exists already; pick another --name") from None
    est = await estimate.of_plan(bus, plan)
    await estimate.record(bus, name, est)
    await bus.publish(
        migration.StartMigration(
            plan=plan, migration=name, vm=ALL, cutover=cutover.isoformat() if cutover else None
        )
    )
    return name


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

    def __init__(self, since: datetime) -> None:
        self.since = since
        self.vms: dict[str, TaskID] = {}
        self.names: dict[str, str] = {}
        self.result: migration.MigrationCompleted | None = None
        self.rejected: migration.MigrationRejected | None = None

    def add_vm(self, state: VmView) -> None:
        self.vms.setdefault(state.vm, TaskID(len(self.vms)))
        self.names[state.vm] = state.name

    def _say(self, vm: str, what: str) -> None:
        took = int((datetime.now(UTC) - self.since).total_seconds())
        typer.echo(f"{took // 60}:{took % 60:02d} {self.names.get(vm, vm)}: {what}")

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


def migrate(
    plan: Annotated[str, typer.Argument(help="the Plan to migrate")],
    wait: Annotated[bool, typer.Option("--wait", "-w", help="show progress until the end")] = False,
    cutover: Annotated[
        str | None, typer.Option(help="warm: when to cut over (RFC 3339 or 'now')")
    ] = None,
    name: Annotated[
        str | None, typer.Option(help="the Migration's name [default: PLAN-time]")
    ] = None,
    nats: NatsOption = None,
) -> None:
    """Start a Migration of a Plan (only its VMs that have not migrated yet)."""

    async def work() -> int:
        when = parse_time(cutover) if cutover else None
        async with connect(nats) as bus:
            since = datetime.now(UTC)
            started = await start(bus, plan, name, when)
            typer.echo(f"migration/{started} created")
            return await follow(bus, started, since) if wait else 0

    code = run(work)
    raise typer.Exit(code)


# -- describe ----------------------------------------------------------------------------


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n:.1f} PiB"


def render(mig: objects.Migration, states: list[VmView]) -> None:
    name, plan, phase = mig.name, mig.spec.plan.name, mig.status.phase.shown
    out.print(f"[bold]Migration[/] {name}   plan {plan}   phase [bold]{phase}[/]")
    est = estimate.recorded(mig)
    if est is not None:
        estimate.show_accuracy(est, states)
    for vm, reasons in mig.status.reasons.items():
        for reason in reasons:
            out.print(f"  [red]rejected[/] {vm}: {reason}", markup=True)
    counts = Counter(s.status.value for s in states)
    if counts:
        out.print("  VMs: " + ", ".join(f"{n} {k.lower()}" for k, n in sorted(counts.items())))
    for s in states:
        target = f"{s.namespace}/{s.target_name}"
        head = f"\n[bold]{s.name}[/] ({s.vm}) → {target}"
        out.print(f"{head}   {s.status}   flow {s.flow}")
        table = Table(box=None, show_header=True, header_style="dim")
        for head in ("", "STEP", "SERVICE", "STATUS", "ATTEMPT", "STARTED", "ENDED"):
            table.add_column(head)
        for step in s.steps:
            table.add_row(
                MARK.get(step.status, "?"),
                step.name,
                step.service,
                step.status,
                str(step.attempt),
                step.started,
                step.ended,
            )
        out.print(table)
        for d in s.disks:
            pct = 100 * d.done / d.total if d.total else 0.0
            check = f"  {d.checksum}" if d.checksum else ""
            typer.echo(f"  disk {d.name}: {_size(d.done)} / {_size(d.total)} ({pct:.0f}%){check}")
        for line in rounds(s):
            typer.echo(line)
        for e in s.errors:
            out.print(f"  [red]error[/] {e.step} attempt {e.attempt}: {e.reason}")
        if s.power_restored:
            out.print(f"  source power restored ({s.source_power})")


def rounds(s: VmView) -> list[str]:
    """A warm VM's copy rounds: what changed at the source, what was written, how long."""
    lines = []
    for r in s.rounds:
        what = "final delta" if r.final else ("full copy" if r.precopy == 0 else "precopy")
        lines.append(
            f"  round {r.precopy} ({what}): {_size(r.changed)} changed, "
            f"{_size(r.copied)} copied in {r.seconds:.1f} s"
        )
    return lines


def describe(
    kind: Annotated[str, typer.Argument(help="migration or plan")],
    name: Annotated[str, typer.Argument(help="its name")],
    nats: NatsOption = None,
) -> None:
    """Show a migration's pipeline per VM, or a plan: what holds its VMs, and its estimate."""
    if kind.lower() in ("plan", "plans"):
        plans.describe_plan(name, nats)
        describe_plan(name, nats)
        return
    if kind.lower() not in ("migration", "migrations"):
        typer.echo(f"error: describe knows 'migration' and 'plan', not {kind!r}", err=True)
        raise typer.Exit(2)

    async def work() -> tuple[objects.Migration, list[VmView]]:
        async with connect(nats) as bus:
            doc = await get_doc(bus, "Migration", name)
            if doc is None:
                raise CliError(f"Migration {name!r} does not exist (ferry get migrations)")
            mig = objects.from_document(doc)
            assert isinstance(mig, objects.Migration)
            return mig, await vm_states(bus, name)

    render(*run(work))


def describe_plan(name: str, nats: str | None) -> None:
    async def work() -> tuple[dict[str, Any], list[str], PlanEstimate]:
        async with connect(nats) as bus:
            doc = await get_doc(bus, "Plan", name)
            if doc is None:
                raise CliError(f"Plan {name!r} does not exist (ferry get plans)")
            return doc, await skipped(bus, name), await estimate.of_plan(bus, name)

    doc, skips, est = run(work)
    out.print(f"[bold]Plan[/] {name}   {len(doc['spec']['vms'])} VM(s)")
    for line in skips:
        typer.echo(line)
    estimate.show(est)


# -- cancel -------------------------------------------------------------------------------


def cancel(
    name: Annotated[str, typer.Argument(help="the Migration")],
    vm: Annotated[str | None, typer.Option("--vm", help="only this VM (name or id)")] = None,
    nats: NatsOption = None,
) -> None:
    """Cancel a whole migration or one VM of it (safe to repeat)."""

    async def work() -> None:
        async with connect(nats) as bus:
            mig = await get_doc(bus, "Migration", name)
            if mig is None:
                raise CliError(f"Migration {name!r} does not exist (ferry get migrations)")
            if vm is not None and vm not in {
                x for s in await vm_states(bus, name) for x in (s.vm, s.name)
            }:
                raise CliError(f"Migration {name!r} has no VM {vm!r}")

            def record(doc: dict[str, Any]) -> dict[str, Any]:
                spec = dict(doc["spec"])
                entries = list(spec.get("cancel") or [])
                entry = {"name": vm} if vm else {"name": ALL}
                if entry not in entries:
                    entries.append(entry)
                spec["cancel"] = entries
                return {**doc, "spec": spec}

            await kv(bus).mutate(key_of("Migration", name), record)
            plan = mig["spec"]["plan"]["name"]
            await bus.publish(
                migration.CancelMigration(
                    plan=plan, migration=name, vm=vm or ALL, reason="canceled by user"
                )
            )
            typer.echo(f"migration/{name}{f' vm {vm}' if vm else ''} cancel requested")

    run(work)


# -- cutover ------------------------------------------------------------------------------


def cutover(
    name: Annotated[str, typer.Argument(help="the warm Migration")],
    at: Annotated[
        str, typer.Option("--at", help="RFC 3339 time or 'now': when precopies end")
    ] = "now",
    nats: NatsOption = None,
) -> None:
    """Set or move a warm migration's cutover while its precopies run (safe to repeat)."""
    when = parse_time(at)

    async def work() -> None:
        async with connect(nats) as bus:
            mig = await get_doc(bus, "Migration", name)
            if mig is None:
                raise CliError(f"Migration {name!r} does not exist (ferry get migrations)")

            def record(doc: dict[str, Any]) -> dict[str, Any]:
                return {**doc, "spec": {**doc["spec"], "cutover": when.isoformat()}}

            await kv(bus).mutate(key_of("Migration", name), record)
            plan = mig["spec"]["plan"]["name"]
            await bus.publish(
                migration.Cutover(plan=plan, migration=name, vm=ALL, cutover=when.isoformat())
            )
            typer.echo(f"migration/{name} cutover at {when.isoformat()}")

    run(work)


def register(app: typer.Typer) -> None:
    app.command("migrate")(migrate)
    app.command("describe")(describe)
    app.command("cancel")(cancel)
    app.command("cutover")(cutover)
