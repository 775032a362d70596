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
import logging
import os
import ssl
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
from ferry.cli import cluster
from ferry.proto import objects
from ferry.proto.phases import MigrationPhase
from ferry.runtime import objectbucket

ALL = objectbucket.ALL
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
        raise CliError(stack.no_stack(where))
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


def tls(url: str) -> ssl.SSLContext | None:
    """The CLI's trust in a TLS server: the CA ``FERRY_NATS__TLS_CA_FILE`` names, else,
    for a tls:// URL, the CA ``ferry up --tls`` made in the data dir; none for plain."""
    from ferry.cli import stack
    from ferry.runtime.stack import nats
    from ferry.runtime.stack import tls as stack_tls

    named = os.environ.get("FERRY_NATS__TLS_CA_FILE")
    if named:
        ca = Path(named)
    elif url.startswith("tls://"):
        ca = stack_tls.files(nats.tls_dir(stack.default_data_dir().expanduser().resolve())).ca
        if not ca.exists():
            return None  # the system's CAs then, as nats-py does for tls://
    else:
        return None
    try:
        return ssl.create_default_context(cafile=str(ca))
    except (OSError, ssl.SSLError) as bad:
        raise CliError(f"NATS CA file {ca}: {bad}") from None


@asynccontextmanager
async def connect(url: str | None) -> AsyncIterator[Bus]:
    where = nats_url(url)
    # Each failed attempt is a warning of the bus's; the CLI says once what failed, below.
    attempts = logging.getLogger("ferry.bus.connection")
    level = attempts.level
    attempts.setLevel(logging.ERROR)
    try:
        bus = await Bus.connect(
            where, name="cli", connect_timeout=5.0, credentials=credentials(), tls=tls(where)
        )
    except BusError as bad:
        hint = "is the stack up? `ferry up`"
        if "authorization violation" in str(bad).lower():
            hint = (
                "the CLI's identity is in the stack's data dir: set FERRY_DATA_DIR to it, "
                "or name the file in FERRY_NATS__CREDENTIALS_FILE"
            )
        raise CliError(f"cannot reach NATS: {bad} ({hint})") from None
    finally:
        attempts.setLevel(level)
    async with bus:
        yield bus


def run(work: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a command's coroutine; a :class:`CliError` or bad object is one line and exit 1."""
    try:
        return asyncio.run(work())
    except (CliError, objects.ObjectError, BusError, cluster.ClusterCliError) as bad:
        typer.echo(f"error: {bad}", err=True)
        raise typer.Exit(1) from None


kv = objectbucket.kv
key_of = objectbucket.key_of
get_doc = objectbucket.get_doc
list_docs = objectbucket.list_docs


# -- apply ---------------------------------------------------------------------------


def read_files(files: list[Path]) -> list[tuple[str, int, objects.FerryObjectBase]]:
    """Every object of every file with (file, index); the first bad one raises ObjectError."""
    found: list[tuple[str, int, objects.FerryObjectBase]] = []
    for path in _expand(files):
        name = "<stdin>" if str(path) == "-" else str(path)
        try:
            text = sys.stdin.read() if name == "<stdin>" else path.read_text()
        except OSError as bad:
            raise objects.ObjectError(name, "", bad.strerror or str(bad)) from None
        for i, obj in enumerate(objects.load_documents(text, name)):
            found.append((name, i, obj))
    return found


def _expand(files: list[Path]) -> list[Path]:
    """A directory stands for its *.yaml, *.yml and *.json files, by name (as kubectl)."""
    out: list[Path] = []
    for path in files:
        if str(path) == "-" or not path.is_dir():
            out.append(path)
            continue
        inside = sorted(p for p in path.iterdir() if p.suffix in SUFFIXES and p.is_file())
        if not inside:
            raise objects.ObjectError(str(path), "", "no *.yaml, *.yml or *.json file in it")
        out.extend(inside)
    return out


SUFFIXES = (".yaml", ".yml", ".json")


async def apply_objects(
    bus: Bus, files: list[Path]
) -> tuple[list[str], list[objects.FerryObjectBase]]:
    """What was done to each object (a line each), and the objects."""
    batch = read_files(files)
    return await objectbucket.apply(bus, batch), [obj for _, _, obj in batch]


async def location_warnings(applied: list[objects.FerryObjectBase]) -> list[str]:
    """A line per applied Provider whose location is not there, seen from this host."""
    from ferry.cli import locations

    found = []
    for obj in applied:
        if isinstance(obj, objects.Provider):
            line = await locations.warning(obj)
            if line is not None:
                found.append(line)
    return found


def apply(
    files: Annotated[
        list[Path],
        typer.Option(
            "--filename", "-f", help="YAML file(s) of objects, or directories of them; - for stdin"
        ),
    ],
    nats: NatsOption = None,
) -> None:
    """Create or update Providers, maps, Hooks, Plans and Migrations from YAML."""

    async def work() -> tuple[list[str], list[str]]:
        if cluster.selected():
            batch = read_files(files)
            return await cluster.apply(batch), []
        async with connect(nats) as bus:
            said, applied = await apply_objects(bus, files)
        return said, await location_warnings(applied)

    said, warned = run(work)
    for line in said:
        typer.echo(line)
    for line in warned:
        typer.echo(f"warning: {line}", err=True)


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
        if cluster.selected():
            return await cluster.get(cls.KIND, name)
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
