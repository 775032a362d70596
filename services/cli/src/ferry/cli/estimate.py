"""``ferry estimate PLAN``: how long a plan takes and how much downtime, before it runs.

The numbers come from :mod:`ferry.runtime.estimates`; this module prints them with
every input and whether it was measured or assumed. The controller records the
estimate on every Migration it admits (``status.estimate``), so ``describe
migration`` can say how far off it was, whichever way the migration started.
"""

from __future__ import annotations

import time
from typing import Annotated

import typer
from rich.table import Table

from ferry.bus import Bus
from ferry.cli.objects import CliError, NatsOption, connect, get_doc, out, run
from ferry.proto import objects
from ferry.proto.estimate import Input, PlanEstimate
from ferry.proto.inventory import Vm
from ferry.proto.state import VmView
from ferry.providers.base import Provider
from ferry.runtime import estimates, probe
from ferry.runtime.estimates import WARM_ONLY_INPUTS, clock


def _input(i: Input) -> str:
    if i.unit == "B/s":
        value = f"{i.value / (1 << 20):.1f} MiB/s"
    elif i.unit == "s":
        value = clock(i.value)
    elif i.unit == "s/GiB":
        value = f"{i.value:.1f} s per GiB of the guest"
    elif i.unit == "fraction":
        value = f"{i.value:.0%} of the bytes"
    else:
        value = f"{i.value:g} {i.unit}"
    return f"  {i.name}: {value} ({i.provenance}{': ' + i.basis if i.basis else ''})"


def show(est: PlanEstimate, cold_only: str = "") -> None:
    """The estimate as a table; ``cold_only`` (why the source cannot run warm) leaves the
    warm columns, and what only they rest on, out."""
    mode = "warm" if est.warm else "cold"
    out.print(
        f"[bold]Estimate[/] plan {est.plan} ({mode})   {est.source} -> {est.target}   "
        f"whole plan ≈ {clock(est.duration)}"
    )
    if cold_only:
        out.print(f"cold only: {cold_only}", markup=False)
    heads = ["VM", "SIZE", "COLD", "COLD DOWNTIME"]
    if not cold_only:
        heads += ["WARM", "WARM DOWNTIME"]
    table = Table(box=None, header_style="bold")
    for head in heads:
        table.add_column(head, no_wrap=True)
    for v in est.vms:
        size = f"{v.bytes / (1 << 30):.1f} GiB" if v.bytes else "unknown"
        row = [v.name, size, clock(v.cold_duration), clock(v.cold_downtime)]
        if not cold_only:
            row += [clock(v.warm_duration), clock(v.warm_downtime)]
        table.add_row(*row)
    out.print(table)
    out.print("inputs:")
    for i in est.inputs:
        if not (cold_only and i.name in WARM_ONLY_INPUTS):
            out.print(_input(i), markup=False)


async def cold_only(bus: Bus, name: str, notes: list[str] | None = None) -> str:
    """Why the plan's source cannot migrate warm ("" when it can, or is not known); ``notes``
    receives that a warm plan on such a source would be rejected."""
    doc = await get_doc(bus, "Plan", name)
    plan = objects.from_document(doc) if doc is not None else None
    if not isinstance(plan, objects.Plan):
        return ""
    found = await get_doc(bus, "Provider", plan.spec.provider.source.name)
    provider = objects.from_document(found) if found is not None else None
    why = estimates.cold_only(provider if isinstance(provider, objects.Provider) else None)
    if why and plan.spec.warm and notes is not None:
        notes.append(f"plan {name!r} is warm but {why}: a migration of it would be rejected")
    return why


async def _inventory(plan: objects.Plan, bus: Bus) -> tuple[list[Vm], Provider | None]:
    """The source's VMs and the opened source when the provider can be read from here; else
    sizes come from history (and no probe can be read)."""
    from ferry.cli import inventory  # opening a provider is the inventory command's business

    doc = await get_doc(bus, "Provider", plan.spec.provider.source.name)
    if doc is None:
        return [], None
    provider = objects.from_document(doc)
    assert isinstance(provider, objects.Provider)
    try:
        source = inventory.open_source(provider)
        packages = await inventory.listing(provider, source)
    except CliError:
        return [], None
    return [vm for p in packages for vm in p.vms], source


def unfound(plan: objects.Plan, inventory: list[Vm], readable: bool) -> list[str]:
    """What makes an estimate a guess about VMs that cannot migrate: said, not hidden."""
    src = plan.spec.provider.source.name
    if not readable:
        return [f"provider {src!r} could not be read from here: sizes are unknown"]
    return [
        f"VM {vm.key!r} is not in provider {src!r} (ferry inventory {src}): "
        "a migration of this plan would be rejected"
        for vm in plan.spec.vms
        if not any({vm.key, vm.name} & {found.id, found.name} for found in inventory)
    ]


async def of_plan(bus: Bus, name: str, notes: list[str] | None = None) -> PlanEstimate:
    """The plan's estimate; ``notes`` receives what makes parts of it a guess."""
    doc = await get_doc(bus, "Plan", name)
    if doc is None:
        raise CliError(f"Plan {name!r} does not exist (ferry get plans)")
    plan = objects.from_document(doc)
    assert isinstance(plan, objects.Plan)
    states = await estimates.stored_states(bus)
    inventory, source = await _inventory(plan, bus)
    if notes is not None:
        notes.extend(unfound(plan, inventory, source is not None))
    pair = plan.spec.provider.source.name, plan.spec.targetNamespace
    probed = None
    if not estimates.has_history(estimates.samples_of(states), *pair):
        wanted = {key for vm in plan.spec.vms for key in (vm.key, vm.name) if key}
        mine = [vm for vm in inventory if wanted & {vm.id, vm.name}]
        probed = await probe.probed_input(source, mine, estimates.no_history_on(*pair))
    return estimates.plan_estimate(plan, states, inventory, now=time.time(), probed=probed)


def show_accuracy(est: PlanEstimate, states: list[VmView]) -> None:
    for a in estimates.accuracy(est, states):
        out.print(
            f"  estimate {a.vm}: {clock(a.estimated)} estimated, {clock(a.actual)} actual "
            f"({a.error:+.0%})",
            markup=False,
        )


def estimate(
    plan: Annotated[str, typer.Argument(help="the Plan")],
    nats: NatsOption = None,
) -> None:
    """Predict a plan's duration and downtime per VM, cold and warm, with the inputs used."""

    notes: list[str] = []

    async def work() -> tuple[PlanEstimate, str]:
        async with connect(nats) as bus:
            return await of_plan(bus, plan, notes), await cold_only(bus, plan, notes)

    show(*run(work))
    for note in notes:
        typer.echo(f"warning: {note}", err=True)


def register(app: typer.Typer) -> None:
    app.command("estimate")(estimate)
