"""``ferry events``: the audit stream, as lines for people or JSON for tools.

Every state change of every migration is an event there (CloudEvents attributes
plus the message); nothing in it is secret, so it can be shown as it is.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import msgspec
import typer

from ferry.bus import Bus
from ferry.cli.objects import NatsOption, connect, run
from ferry.proto import subjects
from ferry.proto.base import Message
from ferry.proto.envelope import Envelope

_SKIP = {"plan", "migration", "vm", "type"}


def summary(msg: Message) -> str:
    """The message's own fields, short: ``step=CopyDisks attempt=1``."""
    fields = msgspec.structs.asdict(msg)
    parts = []
    for key, value in fields.items():
        if key in _SKIP or value in ("", None, [], {}, 0, False):
            continue
        if isinstance(value, (list, dict)):
            value = json.dumps(msgspec.to_builtins(value), separators=(",", ":"))
            value = value if len(value) <= 80 else value[:77] + "..."
        parts.append(f"{key}={value}")
    return " ".join(parts)


def as_json(env: Envelope, msg: Message) -> dict[str, Any]:
    return {**msgspec.to_builtins(env), "data": msgspec.to_builtins(msg)}


async def stream(bus: Bus, migration: str | None, follow: bool, output: str) -> None:
    subject = subjects.events_of(migration=migration) if migration else subjects.all_events()
    async for env, msg in bus.events(subject, follow=follow):
        if output == "json":
            typer.echo(json.dumps(as_json(env, msg), separators=(",", ":")))
        else:
            where = f"{msg.migration}/{msg.vm}"
            typer.echo(f"{env.time}  {env.type:<32} {where:<28} {summary(msg)}")


def events(
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="keep waiting for new events")
    ] = False,
    migration: Annotated[
        str | None, typer.Option("--migration", "-m", help="only this migration")
    ] = None,
    output: Annotated[str, typer.Option("--output", "-o", help="text or json")] = "text",
    nats: NatsOption = None,
) -> None:
    """Print the audit stream (every state change of every migration)."""
    if output not in ("text", "json"):
        typer.echo(f"error: --output must be text or json, not {output!r}", err=True)
        raise typer.Exit(2)

    async def work() -> None:
        async with connect(nats) as bus:
            await stream(bus, migration, follow, output)

    try:
        run(work)
    except KeyboardInterrupt:
        raise typer.Exit(0) from None


def register(app: typer.Typer) -> None:
    app.command("events")(events)
