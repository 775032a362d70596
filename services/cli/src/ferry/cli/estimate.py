"""``ferry estimate PLAN``: how long a plan takes and how much downtime, before it runs.

The numbers come from :mod:`ferry.runtime.estimates`; this module prints them with
every input and whether it was measured or assumed, and records the estimate on
a Migration when ``ferry migrate`` starts one, so ``describe migration`` can say
how far off it was.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

import msgspec
import typer
from rich.table import Table

from ferry.bus import Bus
from ferry.cli.objects import CliError, NatsOption, connect, get_doc, key_of, kv, out, run
from ferry.proto import objects
from ferry.proto.estimate import ANNOTATION, Accuracy, Input, PlanEstimate
from ferry.proto.inventory import Vm
from ferry.proto.state import VmView, parse_iso
from ferry.runtime import estimates
from ferry.runtime.estimates import clock


def _input(i: Input) -> str:
    if i.unit == "B/s":
        value = f"{i.value / (1 << 20):.1f} MiB/s"
    elif i.unit == "s":
        value = clock(i.value)
    elif i.unit == "fraction":
        value = f"{i.value:.0%} of the bytes"
    else:
        value = f"{i.value:g} {i.unit}"
    how = "measured" if i.measured else "assumed"
    return f"  {i.name}: {value} ({how}{': ' + i.basis if i.basis else ''})"


def show(est: PlanEstimate) -> None:
    mode = "warm" if est.warm else "cold"
    out.print(
        f"[bold]Estimate[/] plan {est.plan} ({mode})   {est.source} -> {est.target}   "
        f"whole plan ≈ {clock(est.duration)}"
    )
    table = Table(box=None, header_style="bold")
    for head in ("VM", "SIZE", "COLD", "COLD DOWNTIME", "WARM", "WARM DOWNTIME"):
        table.add_column(head, no_wrap=True)
    for v in est.vms:
        size = f"{v.bytes / (1 << 30):.1f} GiB" if v.bytes else "unknown"
        table.add_row(
            v.name, size, clock(v.cold_duration), clock(v.cold_downtime),
            clock(v.warm_duration), clock(v.warm_downtime),
        )  # fmt: skip
    out.print(table)
    out.print("inputs:")
    for i in est.inputs:
        out.print(_input(i), markup=False)


async def _inventory(plan: objects.Plan, bus: Bus) -> list[Vm]:
    """The source's VMs when the provider can be read from here; else sizes come from history."""
    from ferry.cli import inventory  # opening a provider is the inventory command's business

    doc = await get_doc(bus, "Provider", plan.spec.provider.source.name)
    if doc is None:
        return []
    provider = objects.from_document(doc)
    assert isinstance(provider, objects.Provider)
    try:
        packages = await inventory.listing(provider)
    except CliError:
        return []
    return [vm for p in packages for vm in p.vms]


async def of_plan(bus: Bus, name: str) -> PlanEstimate:
    doc = await get_doc(bus, "Plan", name)
    if doc is None:
        raise CliError(f"Plan {name!r} does not exist (ferry get plans)")
    plan = objects.from_document(doc)
    assert isinstance(plan, objects.Plan)
    return await estimates.for_plan(bus, plan, await _inventory(plan, bus), now=time.time())


async def record(bus: Bus, migration: str, est: PlanEstimate) -> None:
    """Keep the estimate on the Migration, where ``describe migration`` compares it."""
    text = msgspec.json.encode(est).decode()

    def put(doc: dict[str, Any]) -> dict[str, Any]:
        meta = dict(doc.get("metadata") or {})
        meta["annotations"] = {**(meta.get("annotations") or {}), ANNOTATION: text}
        return {**doc, "metadata": meta}

    await kv(bus).mutate(key_of("Migration", migration), put)


def recorded(mig: objects.Migration) -> PlanEstimate | None:
    text = mig.metadata.annotations.get(ANNOTATION)
    if not text:
        return None
    try:
        return msgspec.json.decode(text, type=PlanEstimate)
    except msgspec.DecodeError:
        return None


def accuracy(est: PlanEstimate, states: list[VmView]) -> list[Accuracy]:
    """Each ended VM's duration against the estimate in the plan's mode."""
    found = []
    for s in states:
        guess = est.vm(s.vm)
        if guess is None or not (s.status.ended and s.started and s.ended):
            continue
        planned = guess.warm_duration if est.warm else guess.cold_duration
        actual = parse_iso(s.ended) - parse_iso(s.started)
        found.append(Accuracy(vm=s.name, estimated=planned, actual=actual))
    return found


def show_accuracy(est: PlanEstimate, states: list[VmView]) -> None:
    for a in accuracy(est, states):
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

    async def work() -> PlanEstimate:
        async with connect(nats) as bus:
            return await of_plan(bus, plan)

    show(run(work))


def register(app: typer.Typer) -> None:
    app.command("estimate")(estimate)
