"""The controller's admission verdict on a migration ``ferry migrate`` just started.

Admission (preflight, the estimate's short read of the source) takes a moment,
and a migration it rejects has done nothing: so ``ferry migrate`` without
``--wait`` waits a bounded while for the verdict, ``migration.started`` or
``migration.rejected``, rather than say "created" and exit 0 on a migration that
is about to be refused. The audit stream is read from its position *before* the
start was asked for, so a verdict that comes at once is not missed. No verdict in
time is not a failure: the controller may be busy or not running yet, and the
migration waits for it.
"""

from __future__ import annotations

import asyncio

import typer

from ferry.bus import Bus
from ferry.proto import migration, subjects

SECONDS = 10.0  # a probe of the source (5 s at most by default) fits in it

Verdict = migration.MigrationStarted | migration.MigrationRejected


async def position(bus: Bus) -> int:
    """Where to read the verdict from: call before the migration is created."""
    return await bus.events_position() + 1


async def wait(bus: Bus, name: str, since: int, seconds: float | None = None) -> Verdict | None:
    """The first verdict on migration ``name`` from stream sequence ``since``; None when none
    came within ``seconds``."""

    async def first() -> Verdict | None:
        async for _, msg in bus.events(subjects.events_of(migration=name), since=since):
            if isinstance(msg, migration.MigrationStarted | migration.MigrationRejected):
                return msg
        return None

    try:
        return await asyncio.wait_for(first(), SECONDS if seconds is None else seconds)
    except TimeoutError:
        return None


def report(name: str, verdict: Verdict | None, seconds: float | None = None) -> int:
    """Say what the controller decided; the exit code (1 only for a rejection)."""
    follow = f"ferry describe migration {name}"
    if verdict is None:
        took = SECONDS if seconds is None else seconds
        typer.echo(
            f"migration/{name}: no verdict from the controller within {took:g} s (is it "
            f"running? `ferry status`); it is admitted or rejected when it gets to it: "
            f"follow it with `{follow}`"
        )
        return 0
    if isinstance(verdict, migration.MigrationRejected):
        typer.echo(f"migration/{name} rejected by preflight; nothing ran:", err=True)
        for vm, reasons in sorted(verdict.reasons.items()):
            for reason in reasons:
                typer.echo(f"  {vm}: {reason}", err=True)
        return 1
    count = len(verdict.vms)
    typer.echo(
        f"migration/{name} accepted: {count} VM{'s' if count != 1 else ''} to migrate; "
        f"follow it with `{follow}`"
    )
    for vm, warnings in sorted(verdict.warnings.items()):
        for warning in warnings:
            typer.echo(f"warning: {vm}: {warning}", err=True)
    return 0
