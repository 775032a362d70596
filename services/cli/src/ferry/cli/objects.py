"""``ferry apply -f FILE`` and ``ferry get KIND``: the objects people hand to Ferry.

Objects live in the ``ferry-objects`` bucket as the documents people wrote. Apply
checks everything before it writes anything: every document must validate, and
every reference (a Plan's providers and maps, a Migration's plan) must name an
object that exists already or comes in the same apply. The first problem is one
line naming the file, where in it, and what is wrong; nothing is written then.

Applying a Migration starts it; re-applying one with new ``spec.cancel`` entries
or a new ``spec.cutover`` cancels those VMs or moves the cutover.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
import yaml
from rich.console import Console
from rich.table import Table

from ferry.bus import Bus, BusError, Credentials
from ferry.proto import migration, objects, subjects
from ferry.proto.phases import MigrationPhase
from ferry.proto.subjects import Bucket

ALL = "*"
Document = dict[str, Any]
T = TypeVar("T")

# Without a terminal (a log, a pipe) rich would cut tables at 80 columns: a name a user
# must copy is never truncated, so a log gets the full width.
_WIDE = None if sys.stdout.isatty() else 100_000
out = Console(highlight=False, width=_WIDE)
err = Console(stderr=True, highlight=False)

NatsOption = Annotated[
    str | None,
    typer.Option(
        "--nats",
        envvar="FERRY_NATS__URL",
        help="NATS URL [default: the stack `ferry up` started]",
        show_default=False,
    ),
]
OutputOption = Annotated[
    str, typer.Option("--output", "-o", help="table, json or yaml", show_default=True)
]


class CliError(Exception):
    """One line for the user; the command exits 1."""


def nats_url(given: str | None) -> str:
    """The NATS to use: the one given, else the stack ``ferry up`` recorded; never a guess,
    since a NATS on the default port may be someone else's."""
    if given:
        return given
    from ferry.cli import stack  # the runtime engineer's `ferry up` records where NATS is
    from ferry.runtime.stack import state

    where = stack.default_data_dir().expanduser().resolve()
    try:
        running = state.running(where)
    except Exception:
        running = None
    if running is None:
        raise CliError(
            f"no Ferry stack found in {where}: start one with `ferry up`, "
            "or point to one with --nats URL (or FERRY_NATS__URL)"
        )
    return running.nats_url


def credentials() -> Credentials | None:
    """The CLI's NATS identity: the file ``FERRY_NATS__CREDENTIALS_FILE`` names, else the
    one ``ferry up`` wrote into the data dir; none (anonymous) when neither exists."""
    from ferry.cli import stack
    from ferry.runtime import secretfiles
    from ferry.runtime.stack import identities, nats

    named = os.environ.get("FERRY_NATS__CREDENTIALS_FILE")
    if named:
        path = Path(named)
    else:
        folder = nats.identities_dir(stack.default_data_dir().expanduser().resolve())
        path = identities.credentials_file(folder, identities.CLI)
        if not path.exists():
            return None
    try:
        return secretfiles.credentials(path)
    except (OSError, ValueError) as bad:
        raise CliError(str(bad)) from None


@asynccontextmanager
async def connect(url: str | None) -> AsyncIterator[Bus]:
    try:
        bus = await Bus.connect(
            nats_url(url), name="cli", connect_timeout=5.0, credentials=credentials()
        )
    except BusError as bad:
        raise CliError(f"cannot reach NATS: {bad} (is the stack up? `ferry up`)") from None
    async with bus:
        yield bus


def run(work: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a command's coroutine; a :class:`CliError` or bad object is one line and exit 1."""
    try:
        return asyncio.run(work())
    except (CliError, objects.ObjectError) as bad:
        typer.echo(f"error: {bad}", err=True)
        raise typer.Exit(1) from None


def kv(bus: Bus) -> Any:
    return bus.kv(Bucket.OBJECTS, dict)


def key_of(kind: str, name: str) -> str:
    return subjects.object_key(kind, name)


async def get_doc(bus: Bus, kind: str, name: str) -> Document | None:
    entry = await kv(bus).get(key_of(kind, name))
    return None if entry is None else dict(entry.value)


async def list_docs(bus: Bus, kind: str) -> list[Document]:
    prefix = kind.lower() + "."
    docs = []
    for key in await kv(bus).keys(prefix):
        entry = await kv(bus).get(key)
        if entry is not None:
            docs.append(dict(entry.value))
    return sorted(docs, key=lambda d: str(d.get("metadata", {}).get("name", "")))


# -- apply ---------------------------------------------------------------------------


def read_files(files: list[Path]) -> list[tuple[str, int, objects.FerryObjectBase]]:
    """Every object of every file with (file, index); the first bad one raises ObjectError."""
    found: list[tuple[str, int, objects.FerryObjectBase]] = []
    for path in files:
        name = "<stdin>" if str(path) == "-" else str(path)
        try:
            text = sys.stdin.read() if name == "<stdin>" else path.read_text()
        except OSError as bad:
            raise objects.ObjectError(name, "", bad.strerror or str(bad)) from None
        for i, obj in enumerate(objects.load_documents(text, name)):
            found.append((name, i, obj))
    return found


async def check_refs(bus: Bus, batch: list[tuple[str, int, objects.FerryObjectBase]]) -> None:
    coming = {(obj.KIND, obj.name) for _, _, obj in batch}
    for source, index, obj in batch:
        for path, kind, name in obj.refs():
            if (kind, name) in coming or await get_doc(bus, kind, name) is not None:
                continue
            where = f"document {index + 1} ({obj.KIND} {obj.name}): {path}"
            raise objects.ObjectError(source, where, f"{kind} {name!r} does not exist")


async def apply_objects(bus: Bus, files: list[Path]) -> list[str]:
    batch = read_files(files)
    await check_refs(bus, batch)
    said = []
    for _, _, obj in batch:
        said.append(await _store(bus, obj))
    return said


async def _store(bus: Bus, obj: objects.FerryObjectBase) -> str:
    doc = objects.to_document(obj)
    old = await get_doc(bus, obj.KIND, obj.name)
    label = f"{obj.KIND.lower()}/{obj.name}"
    if old is not None:
        doc["status"] = old.get("status", {})  # status is the controller's, spec the user's
    await kv(bus).put(key_of(obj.KIND, obj.name), doc)
    if isinstance(obj, objects.Migration):
        await _migration_changes(bus, obj, old)
    if old is None:
        return f"{label} created"
    return f"{label} configured" if old.get("spec") != doc.get("spec") else f"{label} unchanged"


async def _migration_changes(bus: Bus, mig: objects.Migration, old: Document | None) -> None:
    """A new Migration starts; new cancel entries cancel; a new cutover moves it."""
    ids: dict[str, Any] = {"plan": mig.spec.plan.name, "migration": mig.name}
    cutover = mig.spec.cutover.isoformat() if mig.spec.cutover else None
    if old is None:
        await bus.publish(migration.StartMigration(**ids, vm=ALL, cutover=cutover))
        return
    before = objects.Migration.model_validate(old)
    gone = {c.id or c.name for c in before.spec.cancel}
    for wanted in mig.spec.cancel:
        if (wanted.id or wanted.name) not in gone:
            await bus.publish(migration.CancelMigration(**ids, vm=wanted.id or wanted.name))
    if cutover and mig.spec.cutover != before.spec.cutover:
        await bus.publish(migration.Cutover(**ids, vm=ALL, cutover=cutover))


def apply(
    files: Annotated[
        list[Path],
        typer.Option("--filename", "-f", help="YAML file(s) of objects; - for stdin"),
    ],
    nats: NatsOption = None,
) -> None:
    """Create or update Providers, maps, Hooks, Plans and Migrations from YAML."""

    async def work() -> list[str]:
        async with connect(nats) as bus:
            return await apply_objects(bus, files)

    for line in run(work):
        typer.echo(line)


# -- get -----------------------------------------------------------------------------


def _columns(kind: str, doc: Document) -> list[str]:
    spec, status = doc.get("spec", {}), doc.get("status", {}) or {}
    if kind == "Provider":
        return [
            spec.get("type", ""),
            spec.get("url", "") or "(local)",
            (spec.get("secret") or {}).get("name", ""),
        ]
    if kind in ("NetworkMap", "StorageMap"):
        pair = spec.get("provider", {})
        return [
            pair.get("source", {}).get("name", ""),
            pair.get("destination", {}).get("name", ""),
            str(len(spec.get("map", []))),
        ]
    if kind == "Plan":
        return [
            spec["provider"]["source"]["name"],
            "warm" if spec.get("warm") else "cold",
            str(len(spec.get("vms", []))),
            spec.get("targetNamespace", ""),
        ]
    if kind == "Migration":
        return [
            spec["plan"]["name"],
            MigrationPhase(status.get("phase") or "").shown,
            str(status.get("started", "") or ""),
            str(status.get("completed", "") or ""),
        ]
    if kind == "Hook":
        return [
            spec.get("image", "") or " ".join(spec.get("command", [])),
            str(spec.get("deadline", "")),
        ]
    return []  # fmt: skip


HEADERS = {
    "Provider": ["TYPE", "URL", "SECRET"],
    "NetworkMap": ["SOURCE", "DESTINATION", "ENTRIES"],
    "StorageMap": ["SOURCE", "DESTINATION", "ENTRIES"],
    "Plan": ["SOURCE", "MODE", "VMS", "NAMESPACE"],
    "Migration": ["PLAN", "PHASE", "STARTED", "COMPLETED"],
    "Hook": ["RUNS", "DEADLINE"],
}


def print_docs(docs: list[Document], output: str, kind: str) -> None:
    if output == "json":
        typer.echo(json.dumps(docs, indent=2))
    elif output == "yaml":
        typer.echo(yaml.safe_dump_all(docs, sort_keys=False), nl=False)
    else:
        table = Table(box=None, header_style="bold")
        for head in ["NAME", *HEADERS[kind]]:
            table.add_column(head)
        for doc in docs:
            table.add_row(doc["metadata"]["name"], *_columns(kind, doc))
        out.print(table)


def get(
    kind: Annotated[
        str, typer.Argument(help="providers, networkmaps, storagemaps, hooks, plans, migrations")
    ],
    name: Annotated[str | None, typer.Argument(help="only this object")] = None,
    output: OutputOption = "table",
    nats: NatsOption = None,
) -> None:
    """List objects of one kind."""
    cls = objects.BY_PLURAL.get(kind.lower()) or objects.BY_PLURAL.get(kind.lower() + "s")
    if cls is None:
        typer.echo(f"error: unknown kind {kind!r}; one of {', '.join(objects.BY_PLURAL)}", err=True)
        raise typer.Exit(2)
    if output not in ("table", "json", "yaml"):
        typer.echo(f"error: --output must be table, json or yaml, not {output!r}", err=True)
        raise typer.Exit(2)

    async def work() -> list[Document]:
        async with connect(nats) as bus:
            if name is None:
                return await list_docs(bus, cls.KIND)
            doc = await get_doc(bus, cls.KIND, name)
            if doc is None:
                raise CliError(f"{cls.KIND} {name!r} does not exist")
            return [doc]

    print_docs(run(work), output, cls.KIND)


def register(app: typer.Typer) -> None:
    app.command("apply")(apply)
    app.command("get")(get)
