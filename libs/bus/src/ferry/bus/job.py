"""One delivered message and the handler it is routed to, as the dispatcher tracks it.

A :class:`Delivery` is the little the dispatcher needs from a transport (the
subject, headers and body; ack, nak, term, in-progress). nats-py's ``Msg``
satisfies it as it is; the in-memory test broker supplies its own, so both run
through the same dispatcher.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import msgspec

from ferry.bus.outcome import Result
from ferry.proto import envelope
from ferry.proto.base import Command, Failed, Message, StepEvent
from ferry.proto.envelope import Envelope

if TYPE_CHECKING:
    from ferry.bus.context import Context

log = logging.getLogger(__name__)

M = TypeVar("M", bound=Message)
Handler = Callable[[M, "Context"], Coroutine[Any, Any, Result]]


class Delivery(Protocol):
    """A message as delivered by the transport, settled exactly once."""

    @property
    def subject(self) -> str: ...
    @property
    def headers(self) -> dict[str, str] | None: ...
    @property
    def data(self) -> bytes: ...
    @property
    def is_acked(self) -> bool: ...

    async def ack(self) -> None: ...
    async def nak(self, delay: float | None = None) -> None: ...
    async def term(self) -> None: ...
    async def in_progress(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Route:
    cls: type[Message]
    fn: Handler[Any]
    cancelable: bool


class Identity(msgspec.Struct, kw_only=True):
    """Enough of any message to attribute a failure to its VM, even one that did not decode."""

    plan: str = ""
    migration: str = ""
    vm: str = ""
    step: str = ""
    attempt: int = 1

    @classmethod
    def of(cls, message: Message | None, data: bytes) -> Identity:
        if isinstance(message, Command | Failed):
            return cls(
                plan=message.plan,
                migration=message.migration,
                vm=message.vm,
                step=message.step,
                attempt=message.attempt,
            )
        if message is not None:
            step = message.step if isinstance(message, StepEvent) else ""
            return cls(plan=message.plan, migration=message.migration, vm=message.vm, step=step)
        try:
            return msgspec.json.decode(data, type=cls)
        except (msgspec.ValidationError, msgspec.DecodeError):
            return cls()


@dataclass(eq=False, slots=True)
class Job:
    """One delivered message this replica is responsible for until it acks/naks/terms."""

    msg: Delivery
    lane: str
    migration_token: str
    vm_token: str
    deliveries: int
    max_deliver: int
    sequence: tuple[str, int] | None = None  # (consumer, stream sequence): what a redelivery shares
    origin: str = ""  # "<stream>:<sequence>", names a dead letter that has no message id
    state: str = "queued"  # queued | running | done
    task: asyncio.Task[Any] | None = None  # its lane's worker task while the handler runs
    cancel_reason: str | None = None  # "canceled" | "shutdown": why the router interrupted it
    _canceled: asyncio.Event | None = None  # made when first asked for: most never are
    route: Route | None = None  # known once decoded
    envelope: Envelope | None = None
    message: Message | None = None

    @classmethod
    def of(
        cls,
        msg: Delivery,
        *,
        deliveries: int,
        max_deliver: int,
        sequence: tuple[str, int] | None = None,
        origin: str = "",
    ) -> Job:
        """A job on the lane its subject names: ``ferry.cmd.<svc>.<name>.<migration>.<vm>``."""
        parts = msg.subject.split(".")
        mig, vm = (parts[4], parts[5]) if len(parts) == 6 else (msg.subject, "")
        return cls(
            msg=msg,
            lane=f"{mig}.{vm}",
            migration_token=mig,
            vm_token=vm,
            deliveries=deliveries,
            max_deliver=max_deliver,
            sequence=sequence,
            origin=origin,
        )

    @property
    def canceled(self) -> asyncio.Event:
        """Set when the (migration, vm) is canceled while this job is held."""
        if self._canceled is None:
            self._canceled = asyncio.Event()
        return self._canceled

    @property
    def type_name(self) -> str:
        """The message type, from the envelope once decoded, else from its header."""
        if self.envelope is not None:
            return self.envelope.type
        return (self.msg.headers or {}).get("ce-type", "unknown")

    @property
    def cause(self) -> str:
        """The id of the delivered message: what its results are published in answer to."""
        headers = self.msg.headers or {}
        return headers.get(envelope.MSG_ID_HEADER) or headers.get("ce-id", "")

    def interrupt(self, reason: str, why: str) -> None:
        """Cancel the running handler, remembering ``reason`` for the verdict."""
        if self.task is not None and not self.task.done():
            self.cancel_reason = reason
            self.task.cancel(why)

    async def keep_alive(self) -> None:
        if self.state != "done" and not self.msg.is_acked:
            await quietly(self.msg.in_progress())


async def quietly(op: Awaitable[Any]) -> None:
    """Acks are best effort: a lost one only means a redelivery, which is handled.

    Still, a lost ack means the work will be done again: an operator sees it at
    warning, with the reason (a string of them says the bus is in trouble).
    """
    try:
        await op
    except Exception as err:
        not_sent(err)


def not_sent(err: Exception) -> None:
    """Log an ack-type reply that failed (see :func:`quietly`)."""
    log.warning("ack-type reply not sent (the message will be redelivered): %s", err)
