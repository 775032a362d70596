"""The writes a person expects next to what they see: start, cancel, cut over.

Each does what ``ferry migrate``, ``ferry cancel`` and ``ferry apply`` of a
Migration do: record the wish on the Migration object (so the object says what
was asked, whoever asked) and send the controller's command. Both halves are
safe to repeat: the object keeps one entry per wish, and the command's message
id is derived from its content, so a double click is one command.

Only :mod:`ferry.console.app` calls these, after ``access`` checked the token.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from ferry.bus import Bus, Conflict
from ferry.proto import migration, objects, subjects
from ferry.proto.subjects import Bucket

ALL = "*"


class ActionError(Exception):
    """The request cannot be carried out as asked; the text says why, for the person."""

    def __init__(self, text: str, status: int = 400) -> None:
        super().__init__(text)
        self.status = status


def _store(bus: Bus) -> Any:
    return bus.kv(Bucket.OBJECTS, dict)


def _key(kind: str, name: str) -> str:
    return subjects.object_key(kind, name)


def parse_time(value: str) -> datetime:
    if value == "now":
        return datetime.now(UTC)
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ActionError(f"{value!r} is not an RFC 3339 time or 'now'") from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


async def _migration(bus: Bus, name: str) -> objects.Migration:
    entry = await _store(bus).get(_key("Migration", name))
    if entry is None:
        raise ActionError(f"Migration {name!r} does not exist", status=404)
    mig = objects.from_document(dict(entry.value))
    assert isinstance(mig, objects.Migration)
    return mig


async def start(bus: Bus, plan: str, name: str | None, cutover: str | None) -> str:
    if await _store(bus).get(_key("Plan", plan)) is None:
        raise ActionError(f"Plan {plan!r} does not exist", status=404)
    name = name or f"{plan}-{datetime.now(UTC).strftime('%Y%m%d-%H%M%S')}"
    when = parse_time(cutover) if cutover else None
    doc: dict[str, Any] = {
        "apiVersion": objects.API_VERSION,
        "kind": "Migration",
        "metadata": {"name": name},
        "spec": {"plan": {"name": plan}, **({"cutover": when.isoformat()} if when else {})},
    }
    try:
        mig = objects.parse_object(doc, "console")
    except objects.ObjectError as bad:
        raise ActionError(str(bad)) from None
    try:
        await _store(bus).create(_key("Migration", name), objects.to_document(mig))
    except Conflict:
        raise ActionError(f"Migration {name!r} exists already", status=409) from None
    await bus.publish(
        migration.StartMigration(
            plan=plan, migration=name, vm=ALL, cutover=when.isoformat() if when else None
        )
    )
    return name


async def cancel(bus: Bus, name: str, vm: str | None) -> None:
    mig = await _migration(bus, name)
    wanted = {"name": vm or ALL}

    def record(doc: dict[str, Any]) -> dict[str, Any]:
        spec = dict(doc["spec"])
        entries = list(spec.get("cancel") or [])
        if wanted not in entries:
            entries.append(wanted)
        return {**doc, "spec": {**spec, "cancel": entries}}

    await _store(bus).mutate(_key("Migration", name), record)
    await bus.publish(
        migration.CancelMigration(
            plan=mig.spec.plan.name, migration=name, vm=vm or ALL, reason="canceled in the console"
        )
    )


async def cutover(bus: Bus, name: str, when: str) -> str:
    mig = await _migration(bus, name)
    at = parse_time(when).isoformat()

    def record(doc: dict[str, Any]) -> dict[str, Any]:
        return {**doc, "spec": {**doc["spec"], "cutover": at}}

    await _store(bus).mutate(_key("Migration", name), record)
    await bus.publish(
        migration.Cutover(plan=mig.spec.plan.name, migration=name, vm=ALL, cutover=at)
    )
    return at
