"""The base classes of every message: commands (work for one service) and events
(facts for everyone, the audit log).

A message's type tag is ``<domain>.<name>.v<N>``; the domain names the owning
service. Tags are never renamed and fields never removed; a breaking change is a
new ``v2`` struct beside the old one. New fields always get defaults so that
older producers stay valid.
"""

from __future__ import annotations

from enum import StrEnum
from typing import ClassVar, TypedDict

import msgspec

from ferry.proto import subjects
from ferry.proto.subjects import Service

_DOMAINS: dict[str, Service] = {
    "migration": Service.CONTROLLER,
    "volume": Service.VOLUME,
    "conversion": Service.CONVERSION,
    "vm": Service.VM,
}


class Message(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    """Fields every message carries: which plan, migration and VM it is about."""

    plan: str
    migration: str
    vm: str

    kind: ClassVar[str] = "evt"

    @classmethod
    def type_name(cls) -> str:
        tag = cls.__struct_config__.tag
        if not isinstance(tag, str):
            raise TypeError(f"{cls.__name__} has no type tag")
        return tag

    @classmethod
    def owner(cls) -> Service:
        return _DOMAINS[cls.type_name().split(".", 1)[0]]

    @classmethod
    def short_name(cls) -> str:
        return cls.type_name().split(".")[1]

    def subject(self) -> str:
        build = subjects.command if self.kind == "cmd" else subjects.event
        return build(self.owner(), self.short_name(), self.migration, self.vm)


class Reply(TypedDict):
    """What an event answering a command copies from it; see ``Command.reply``."""

    plan: str
    migration: str
    vm: str
    step: str


class Command(Message, frozen=True, kw_only=True):
    """Work for the service named by the tag's domain.

    ``step`` names the itinerary step that asked for it and ``attempt`` counts the
    controller's retries of that step, so that a retry is a new message id while
    a redelivery of the same attempt is deduplicated.
    """

    step: str = ""
    attempt: int = 1

    kind: ClassVar[str] = "cmd"

    def reply(self) -> Reply:
        """The ids and step an answer to this command carries: ``Done(**cmd.reply(), ...)``.

        A TypedDict unpacked into the event's own constructor, rather than a
        ``reply(Done, **fields)`` wrapper, because a ParamSpec cannot drop the id
        parameters from the event's signature: only the direct call lets mypy
        check the remaining fields' names and types.
        """
        return Reply(plan=self.plan, migration=self.migration, vm=self.vm, step=self.step)


class Event(Message, frozen=True, kw_only=True):
    """A fact, published to the audit stream."""

    kind: ClassVar[str] = "evt"


class StepEvent(Event, frozen=True, kw_only=True):
    """An event answering a command of an itinerary step: ``step`` names that step.

    Empty when the command was sent outside an itinerary; the controller then
    matches the event by type alone.
    """

    step: str = ""


class FailureOutcome(StrEnum):
    """Why the bus gave up on a command: a field to branch on, never the reason's text.

    ``gave_up``: it kept failing until it ran out of deliveries (it might work on
    another attempt); ``permanent``: the handler said it can never succeed (or the
    message could not be handled at all); ``canceled``: its VM was canceled.
    """

    GAVE_UP = "gave_up"
    PERMANENT = "permanent"
    CANCELED = "canceled"


class Failed(Event, frozen=True, kw_only=True):
    """A command that can never succeed (permanent error, or out of retries).

    Each service has its own subclass (``volume.failed.v1``…); the bus library
    emits it when a handler gives up, the controller turns it into a step failure.
    ``outcome`` says why; ``canceled`` predates it and is kept (fields are never
    removed): the two always agree, whichever one a producer set.
    """

    command_type: str
    step: str = ""
    attempt: int = 1
    reason: str
    detail: list[str] = msgspec.field(default_factory=list)
    deliveries: int = 1
    canceled: bool = False
    outcome: FailureOutcome = FailureOutcome.PERMANENT

    def __post_init__(self) -> None:
        # A producer older than ``outcome`` only sets ``canceled``, a newer one may only
        # set ``outcome``: readers may trust either field.
        if self.canceled and self.outcome is not FailureOutcome.CANCELED:
            msgspec.structs.force_setattr(self, "outcome", FailureOutcome.CANCELED)
        elif self.outcome is FailureOutcome.CANCELED and not self.canceled:
            msgspec.structs.force_setattr(self, "canceled", True)
