"""``ferry describe plan``: a plan's limits, the Budgets it shares, and why VMs wait.

The controller writes what holds each waiting VM into the Plan's status (a
bounded sample and a count, refreshed every few seconds); this page shows it
next to the Budgets, with how much of each the whole wave uses, and for a
bandwidth budget the rate every data mover together moves under it now (read
from the budget's shared rate in the locks bucket).
"""

from __future__ import annotations

from ferry.bus.rate import measured_accounts
from ferry.cli.objects import CliError, NatsOption, connect, get_doc, kv, out, run
from ferry.proto import objects
from ferry.proto.budget import Budget


def _caps(budget: Budget) -> str:
    spec = budget.spec
    caps = []
    if spec.maxVms is not None:
        caps.append(f"{spec.maxVms} VMs")
    if spec.maxDisks is not None:
        caps.append(f"{spec.maxDisks} disks")
    if spec.bandwidthMiBps is not None:
        caps.append(f"{spec.bandwidthMiBps:g} MiB/s")
    where = (
        f" {', '.join(spec.names)}" if spec.names else (" each" if spec.scope != "global" else "")
    )
    window = f", window {spec.window.start}-{spec.window.end} UTC" if spec.window else ""
    return f"{spec.scope}{where}: {', '.join(caps)}{window}"


MIB = 1 << 20


def _moving(rates: dict[str, float]) -> str:
    """``moving 38.2 MiB/s`` (per host/datastore/class when the budget counts them apart)."""
    total = sum(rates.values())
    parts = [f"{where} {rate / MIB:.1f}" for where, rate in sorted(rates.items()) if where]
    return f"; moving {total / MIB:.1f} MiB/s" + (f" ({', '.join(parts)})" if parts else "")


def render(
    plan: objects.Plan, budgets: list[Budget], rates: dict[str, dict[str, float]] | None = None
) -> None:
    spec = plan.spec
    out.print(
        f"[bold]Plan[/] {plan.name}   {len(spec.vms)} VMs   priority {spec.priority}   "
        f"maxInFlight {spec.maxInFlight}   per host {spec.maxInFlightPerHost}"
        + (f"   window {spec.window}" if spec.window else "")
    )
    for budget in budgets:
        moving = _moving(rates[budget.name]) if rates and budget.name in rates else ""
        out.print(f"  Budget {budget.name}: {_caps(budget)}{moving}", markup=False)
    status = plan.status
    if not status.waitingCount:
        out.print("  no VM waiting")
        return
    out.print(f"  {status.waitingCount} VMs waiting; what holds them:")
    for vm, why in status.waiting.items():
        out.print(f"    {vm}: {why}", markup=False)
    if status.waitingCount > len(status.waiting):
        out.print(f"    … and {status.waitingCount - len(status.waiting)} more")


def describe_plan(name: str, nats: NatsOption = None) -> None:
    async def work() -> tuple[objects.Plan, list[Budget], dict[str, dict[str, float]]]:
        async with connect(nats) as bus:
            doc = await get_doc(bus, objects.Plan.KIND, name)
            if doc is None:
                raise CliError(f"Plan {name!r} does not exist (ferry get plans)")
            plan = objects.from_document(doc)
            assert isinstance(plan, objects.Plan)
            store = kv(bus)
            budgets = []
            for key in await store.keys(f"{Budget.KIND.lower()}."):
                entry = await store.get(key)
                if entry is not None and isinstance(
                    found := objects.from_document(entry.value), Budget
                ):
                    budgets.append(found)
            rates = {
                b.name: await measured_accounts(bus, b.name)
                for b in budgets
                if b.spec.bandwidthMiBps is not None
            }
            return plan, budgets, rates

    render(*run(work))
