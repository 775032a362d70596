"""``ferry inventory``: what a source offers, as the controller will see it.

The provider is built through the same factory the services use, so what this
prints is what a Plan's preflight checks against. The Provider comes from the
stack by name, or from a file (``-f provider.yaml``): an OVA source is a local
directory, so listing it needs no running stack.

Every package of the source is listed with its verdict, rejected ones with their
reason, and a rejected package makes the command fail unless ``--allow-rejected``
says that is expected.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import msgspec
import typer
from rich.table import Table

from ferry.cli.objects import CliError, NatsOption, connect, get_doc, out, read_files, run
from ferry.proto import objects
from ferry.proto.inventory import Disk, Package, ProviderType, Status, Vm
from ferry.providers import factory
from ferry.providers.base import PackageLister, Provider, ProviderError


def _gib(n: int) -> str:
    return f"{n / (1 << 30):.1f} GiB"


def _disk(disk: Disk) -> str:
    what = "blank" if disk.blank else disk.name
    return f"{what} {_gib(disk.capacity)} @{disk.storage}" + (" (unusable)" if disk.error else "")


def show(packages: list[Package]) -> None:
    table = Table(box=None, header_style="bold")
    for head in (
        "NAME", "ID", "STATUS", "POWER", "CPU", "MEMORY", "FIRMWARE", "DISKS", "NICS", "HOST",
        "NOTES",
    ):  # fmt: skip
        table.add_column(head)
    for package in packages:
        if not package.vms:
            table.add_row(
                "", package.id, package.status.value, *[""] * 7, "; ".join(package.errors)
            )
        for vm in package.vms:
            disks = ", ".join(_disk(d) for d in vm.disks)
            nics = ", ".join(f"{n.name}@{n.network}" for n in vm.nics)
            cpus = vm.cpu_sockets * vm.cpu_cores * vm.cpu_threads
            table.add_row(
                vm.name, vm.id, vm.status.value, vm.power_state.value, str(cpus),
                f"{vm.memory_mib} MiB", vm.firmware.value, disks, nics, vm.host,
                "; ".join([*vm.errors, *vm.warnings]),
            )  # fmt: skip
    out.print(table)


def _provider(name: str | None, file: Path | None, nats: str | None) -> objects.Provider:
    if file is not None:
        found = [obj for _, _, obj in read_files([file]) if isinstance(obj, objects.Provider)]
        if name is not None:
            found = [obj for obj in found if obj.name == name]
        if len(found) != 1:
            wanted = f"Provider {name!r}" if name else "exactly one Provider"
            raise CliError(f"{file}: expected {wanted}, found {len(found)}")
        return found[0]
    if name is None:
        raise CliError("name a Provider, or give its file with -f")
    return run(lambda: _stored(name, nats))


async def _stored(name: str, nats: str | None) -> objects.Provider:
    async with connect(nats) as bus:
        doc = await get_doc(bus, "Provider", name)
    if doc is None:
        raise CliError(f"Provider {name!r} does not exist (ferry get providers)")
    obj = objects.from_document(doc)
    assert isinstance(obj, objects.Provider)
    return obj


def open_source(provider: objects.Provider) -> Provider:
    """The provider's source as this process reads it (its own credentials, never a message's)."""
    spec = provider.spec
    try:
        return factory.create(_Spec(spec.type, spec.url, spec.settings))
    except ProviderError as bad:
        raise CliError(f"provider {provider.name!r}: {bad}") from None


async def listing(provider: objects.Provider, source: Provider | None = None) -> list[Package]:
    """Every package of the provider with its verdict; one package when it has none."""
    spec = provider.spec
    try:
        source = source or factory.create(_Spec(spec.type, spec.url, spec.settings))
        await source.check()
        if isinstance(source, PackageLister):
            return await source.packages()
        vms: list[Vm] = await source.inventory()
    except ProviderError as bad:
        raise CliError(f"provider {provider.name!r}: {bad}") from None
    return [Package(id=provider.name, path=spec.url, vms=vms)]


class _Spec:
    """What the factory reads: type, url, and settings (an OVA directory's path and limits)."""

    def __init__(self, kind: ProviderType, url: str, settings: dict[str, str]) -> None:
        self.type, self.url, self.settings = kind, url, settings


def inventory(
    provider: Annotated[str | None, typer.Argument(help="the Provider's name")] = None,
    file: Annotated[
        Path | None, typer.Option("--file", "-f", help="read the Provider from this file")
    ] = None,
    output: Annotated[str, typer.Option("--output", "-o", help="table or json")] = "table",
    allow_rejected: Annotated[
        bool, typer.Option("--allow-rejected", help="exit 0 even when a package is rejected")
    ] = False,
    nats: NatsOption = None,
) -> None:
    """List the VMs a source provider offers, every package with its verdict."""
    if output not in ("table", "json"):
        typer.echo(f"error: --output must be table or json, not {output!r}", err=True)
        raise typer.Exit(2)
    try:
        chosen = _provider(provider, file, nats)
    except CliError as bad:
        typer.echo(f"error: {bad}", err=True)
        raise typer.Exit(1) from None
    packages = run(lambda: listing(chosen))
    if output == "json":
        typer.echo(json.dumps(msgspec.to_builtins(packages), indent=2))
    else:
        show(packages)
        if not any(p.vms for p in packages):
            where = f" ({chosen.spec.url})" if chosen.spec.url else ""
            typer.echo(f"no VMs in provider {chosen.name!r}{where}", err=True)
    rejected = [p for p in packages if p.status is Status.REJECTED]
    if rejected and not allow_rejected:
        typer.echo(
            f"error: {len(rejected)} of {len(packages)} packages rejected "
            "(see their errors; --allow-rejected to accept)",
            err=True,
        )
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("inventory")(inventory)
