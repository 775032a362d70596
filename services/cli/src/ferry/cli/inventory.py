"""``ferry inventory PROVIDER``: what a source offers, as the controller will see it.

The provider is built through the same factory the services use, so what this
prints is what a Plan's preflight checks against.
"""

from __future__ import annotations

import json
from typing import Annotated

import msgspec
import typer
from rich.table import Table

from ferry.cli.objects import CliError, NatsOption, connect, get_doc, out, run
from ferry.proto import objects
from ferry.proto.inventory import Vm
from ferry.proto.volume import SourceRef
from ferry.providers import factory
from ferry.providers.base import ProviderError


def _gib(n: int) -> str:
    return f"{n / (1 << 30):.1f} GiB"


def show(vms: list[Vm]) -> None:
    table = Table(box=None, header_style="bold")
    for head in (
        "NAME",
        "ID",
        "POWER",
        "CPU",
        "MEMORY",
        "FIRMWARE",
        "DISKS",
        "NICS",
        "HOST",
        "WARNINGS",
    ):
        table.add_column(head)
    for vm in vms:
        disks = ", ".join(f"{d.name} {_gib(d.capacity)} @{d.storage}" for d in vm.disks)
        nics = ", ".join(f"{n.name}@{n.network}" for n in vm.nics)
        cpus = vm.cpu_sockets * vm.cpu_cores * vm.cpu_threads
        table.add_row(
            vm.name, vm.id, vm.power_state.value, str(cpus), f"{vm.memory_mib} MiB",
            vm.firmware.value, disks, nics, vm.host, "; ".join(vm.warnings),
        )  # fmt: skip
    out.print(table)


def inventory(
    provider: Annotated[str, typer.Argument(help="the Provider's name")],
    output: Annotated[str, typer.Option("--output", "-o", help="table or json")] = "table",
    nats: NatsOption = None,
) -> None:
    """List the VMs a source provider offers."""
    if output not in ("table", "json"):
        typer.echo(f"error: --output must be table or json, not {output!r}", err=True)
        raise typer.Exit(2)

    async def work() -> list[Vm]:
        async with connect(nats) as bus:
            doc = await get_doc(bus, "Provider", provider)
        if doc is None:
            raise CliError(f"Provider {provider!r} does not exist (ferry get providers)")
        obj = objects.from_document(doc)
        assert isinstance(obj, objects.Provider)
        ref = SourceRef(provider=obj.name, type=obj.spec.type, url=obj.spec.url)
        try:
            source = factory.create(ref)
            await source.check()
            return await source.inventory()
        except ProviderError as bad:
            raise CliError(f"provider {provider!r}: {bad}") from None

    vms = run(work)
    if output == "json":
        typer.echo(json.dumps(msgspec.to_builtins(vms), indent=2))
    else:
        show(vms)


def register(app: typer.Typer) -> None:
    app.command("inventory")(inventory)
