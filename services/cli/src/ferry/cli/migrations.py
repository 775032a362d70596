"""``ferry migrate``, ``ferry describe migration`` and ``ferry cancel``.

A Migration's status is derived from its VMs' states in ``ferry-vms``; the CLI
decodes each as the :class:`ferry.proto.state.VmView` the controller's state
extends (it does not import the controller), and unknown fields are ignored, so a
newer controller's additions never break it.

``migrate --wait`` follows the migration (:mod:`ferry.cli.watch`) until it ends;
the exit code is 0 only when every VM succeeded. Without ``--wait`` it waits a
bounded while for the controller's admission verdict (:mod:`ferry.cli.verdict`)
and exits 1 when the migration was rejected.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich.table import Table

from ferry.bus import Bus, Conflict
from ferry.cli import cluster, estimate, plans, verdict, watch
from ferry.cli.objects import (
    ALL,
    CliError,
    NatsOption,
    connect,
    get_doc,
    key_of,
    kv,
    list_docs,
    out,
    run,
)
from ferry.proto import migration, objects
from ferry.proto.budget import Budget
from ferry.proto.estimate import PlanEstimate
from ferry.proto.phases import MigrationPhase, StepStatus, VmStatus
from ferry.proto.state import VmView, parse_iso
from ferry.runtime import estimates

MARK = {
    StepStatus.COMPLETED: "✓",
    StepStatus.RUNNING: "▶",
    StepStatus.FAILED: "✗",
    StepStatus.CANCELED: "⊘",
    StepStatus.PENDING: "·",
}


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


async def skipped(bus: Bus, plan: str, mig: objects.Migration | None = None) -> list[str]:
    """The plan's VMs a new migration leaves out (they succeeded before), each with why; of an
    existing Migration ``mig``, those that had succeeded in another one when it started."""
    started = mig.status.started.timestamp() if mig and mig.status.started else None
    done = {
        s.name: s.migration
        for s in await estimates.stored_states(bus)
        if s.plan == plan
        and s.status is VmStatus.SUCCEEDED
        and (
            mig is None
            or (
                s.migration != mig.name
                and started is not None
                and s.ended
                and parse_iso(s.ended) <= started
            )
        )
    }
    return [f"skipped {vm}: migrated already by migration {m}" for vm, m in sorted(done.items())]


async def rejected(bus: Bus, plan: str) -> list[str]:
    """Why the plan's newest migration was rejected, if it was: its preflight reasons per VM."""
    mine = [
        m
        for d in await list_docs(bus, objects.Migration.KIND)
        if isinstance(m := objects.from_document(d), objects.Migration) and m.spec.plan.name == plan
    ]
    if not mine:
        return []
    floor = datetime.min.replace(tzinfo=UTC)
    last = max(mine, key=lambda m: m.status.completed or m.status.started or floor)
    if last.status.phase is not MigrationPhase.REJECTED:
        return []
    lines = [f"migration {last.name} was rejected by preflight:"]
    for vm, reasons in sorted(last.status.reasons.items()):
        lines.extend(f"  {vm}: {reason}" for reason in reasons)
    return lines


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
    await bus.publish(
        migration.StartMigration(
            plan=plan, migration=name, vm=ALL, cutover=cutover.isoformat() if cutover else None
        )
    )
    return name


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

    started = ""

    async def work() -> int:
        nonlocal started
        when = parse_time(cutover) if cutover else None
        async with connect(nats) as bus:
            since = datetime.now(UTC)
            position = await verdict.position(bus)
            started = await start(bus, plan, name, when)
            typer.echo(f"migration/{started} created")
            if wait:
                return await watch.follow(bus, started, since)
            return verdict.report(started, await verdict.wait(bus, started, position))

    try:
        code = run(work)
    except KeyboardInterrupt:
        if not started:
            raise
        # Ctrl-C stops the watching, not the migration: say so, and how to stop it.
        typer.echo(
            f"\nstopped following migration {started}; it goes on "
            f"(ferry describe migration {started}; ferry cancel {started} stops it)",
            err=True,
        )
        code = 130
    raise typer.Exit(code)


# -- describe ----------------------------------------------------------------------------


def render(mig: objects.Migration, states: list[VmView], skips: list[str]) -> None:
    name, plan, phase = mig.name, mig.spec.plan.name, mig.status.phase.shown
    out.print(f"[bold]Migration[/] {name}   plan {plan}   phase [bold]{phase}[/]")
    for line in skips:
        out.print(f"  {line}", markup=False)
    est = estimates.recorded(mig)
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
        for note in s.notes:
            typer.echo(f"  {note}")
        for d in s.disks:
            typer.echo(watch.disk_line(d))
        for line in rounds(s):
            typer.echo(line)
        for e in s.errors:
            out.print(f"  [red]error[/] {e.step} attempt {e.attempt}: {e.reason}")
        if s.power_restored:
            out.print(f"  source power restored ({s.source_power})")


def rounds(s: VmView) -> list[str]:
    """A warm VM's copy rounds: what changed at the source, what was written, how long."""
    return [watch.round_line(r) for r in s.rounds]


def describe(
    kind: Annotated[str, typer.Argument(help="migration or plan")],
    name: Annotated[str, typer.Argument(help="its name")],
    nats: NatsOption = None,
) -> None:
    """Show a migration's pipeline per VM, or a plan: what holds its VMs, and its estimate."""
    if cluster.selected():
        describe_in_cluster(kind, name)
        return
    if kind.lower() in ("plan", "plans"):
        plans.describe_plan(name, nats)
        describe_plan(name, nats)
        return
    if kind.lower() not in ("migration", "migrations"):
        typer.echo(f"error: describe knows 'migration' and 'plan', not {kind!r}", err=True)
        raise typer.Exit(2)

    async def work() -> tuple[objects.Migration, list[VmView], list[str]]:
        async with connect(nats) as bus:
            doc = await get_doc(bus, "Migration", name)
            if doc is None:
                raise CliError(f"Migration {name!r} does not exist (ferry get migrations)")
            mig = objects.from_document(doc)
            assert isinstance(mig, objects.Migration)
            states = await watch.vm_states(bus, name)
            return mig, states, await skipped(bus, mig.spec.plan.name, mig)

    render(*run(work))


def describe_in_cluster(kind: str, name: str) -> None:
    """``describe`` against a cluster: what the operator wrote into the object's status."""
    if kind.lower() in ("plan", "plans"):

        async def plan() -> tuple[objects.Plan, list[Budget]]:
            found = await cluster.one(objects.Plan.KIND, name)
            assert isinstance(found, objects.Plan)
            return found, await cluster.budgets(found.metadata.namespace)

        plans.render(*run(plan))
        return
    if kind.lower() not in ("migration", "migrations"):
        typer.echo(f"error: describe knows 'migration' and 'plan', not {kind!r}", err=True)
        raise typer.Exit(2)

    async def mig() -> objects.FerryObjectBase:
        return await cluster.one(objects.Migration.KIND, name)

    found = run(mig)
    assert isinstance(found, objects.Migration)
    cluster.render_migration(found)


def describe_plan(name: str, nats: str | None) -> None:
    async def work() -> tuple[list[str], PlanEstimate, str]:
        async with connect(nats) as bus:
            if await get_doc(bus, "Plan", name) is None:
                raise CliError(f"Plan {name!r} does not exist (ferry get plans)")
            lines = [*await rejected(bus, name), *await skipped(bus, name)]
            est = await estimate.of_plan(bus, name, notes)
            return lines, est, await estimate.cold_only(bus, name, notes)

    # The header (name, VMs, limits, budgets) is plans.describe_plan's, printed just before.
    notes: list[str] = []
    skips, est, cold_only = run(work)
    for line in skips:
        typer.echo(line)
    estimate.show(est, cold_only)
    for note in notes:
        typer.echo(f"warning: {note}", err=True)


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
                x for s in await watch.vm_states(bus, name) for x in (s.vm, s.name)
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


async def _has_a_cutover(bus: Bus, name: str, mig: dict[str, Any]) -> None:
    """A cutover means something only to a warm migration that has not ended: say so."""
    phase = str((mig.get("status") or {}).get("phase") or "")
    if phase in {p.value for p in MigrationPhase} and MigrationPhase(phase).ended:
        raise CliError(f"migration {name} has ended ({phase}): it has no cutover to set")
    plan = mig["spec"]["plan"]["name"]
    doc = await get_doc(bus, "Plan", plan)
    if doc is not None and not (doc.get("spec") or {}).get("warm"):
        raise CliError(
            f"migration {name} is cold (plan {plan} has no warm: true): it has no precopies to end"
        )


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
            await _has_a_cutover(bus, name, mig)

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
