"""Reading the audit stream in order, from any point, for auditors and the CLI.

An ordered consumer is the right tool: it is ephemeral (nothing to clean up when
the reader goes away), needs no acks, and nats-py recreates it from the last seen
sequence when it notices a gap or a lost heartbeat, so a reader survives server
restarts without skipping or repeating events.

Events whose type this process does not know (a newer producer) are skipped
with one warning per type: the audit stream is an open world.

:func:`records` also hands out each event's stream sequence: a reader that must
resume exactly where it stopped (the console's server-sent events, whose
``Last-Event-ID`` is that sequence) needs a position, not a time.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from nats.js import api

from ferry.proto import envelope, subjects
from ferry.proto.base import Message
from ferry.proto.envelope import Envelope

if TYPE_CHECKING:
    from ferry.bus.connection import Bus

log = logging.getLogger(__name__)


def _start(since: datetime | int | None) -> api.ConsumerConfig:
    if since is None:
        return api.ConsumerConfig(deliver_policy=api.DeliverPolicy.ALL)
    if isinstance(since, datetime):
        when = since if since.tzinfo else since.replace(tzinfo=UTC)
        return api.ConsumerConfig(
            deliver_policy=api.DeliverPolicy.BY_START_TIME, opt_start_time=when
        )
    if since < 1:
        raise ValueError(f"stream sequences start at 1, got {since}")
    return api.ConsumerConfig(
        deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=since
    )


@dataclass(frozen=True)
class Record:
    """One audit event and where it sits in the stream."""

    sequence: int
    envelope: Envelope
    message: Message


async def iterate(
    bus: Bus, subject: str, since: datetime | int | None, follow: bool
) -> AsyncIterator[tuple[Envelope, Message]]:
    async for record in records(bus, subject, since, follow):
        yield record.envelope, record.message


async def records(
    bus: Bus, subject: str, since: datetime | int | None, follow: bool
) -> AsyncIterator[Record]:
    config = _start(since)
    sub = await bus.patiently(
        "reading the audit stream",
        lambda: bus.js.subscribe(
            subject,
            stream=subjects.EVENTS_STREAM,
            ordered_consumer=True,
            config=config,
            deliver_policy=config.deliver_policy,
            idle_heartbeat=2.0,
        ),
    )
    unknown: set[str] = set()
    try:
        if not follow:
            info = await bus.patiently("reading the audit stream", sub.consumer_info)
            if info.num_pending == 0 and (
                info.delivered is None or not info.delivered.consumer_seq
            ):
                return
        while True:
            msg = await sub.next_msg(timeout=None)
            decoded = _decode(msg.headers, msg.data, unknown)
            if decoded is not None:
                yield Record(msg.metadata.sequence.stream, *decoded)
            if not follow and msg.metadata.num_pending == 0:
                return
    finally:
        with contextlib.suppress(Exception):  # closing may fail; it does not matter
            await sub.unsubscribe()


def _decode(
    headers: dict[str, str] | None, data: bytes, unknown: set[str]
) -> tuple[Envelope, Message] | None:
    try:
        return envelope.unwrap(headers, data)
    except envelope.UnknownMessageType as err:
        kind = (headers or {}).get("ce-type", "?")
        if kind not in unknown:
            unknown.add(kind)
            log.warning("skipping audit events of unknown type %s: %s", kind, err)
        return None
    except ValueError as err:  # msgspec errors are ValueErrors
        log.warning("skipping an undecodable audit event: %s", err)
        return None
