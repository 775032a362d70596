"""Streams, consumers and buckets, declared idempotently from one place.

Every process may call :func:`declare` at start-up: it creates what is missing
and updates what drifted, so there is no separate "setup" step to forget and
replicas racing to declare the same thing all succeed. The layout:

* ``FERRY_EVENTS`` (``ferry.evt.>``): the audit log. Limits retention and file
  storage so every event stays until it ages out or the stream reaches its size
  cap (the oldest go first), whoever has read it.
* ``FERRY_DLQ`` (``ferry.dlq.>``): copies of commands that were given up on, with
  the reason in a header, bounded by their own age and size.
* ``FERRY_CMD_<SERVICE>`` (``ferry.cmd.<service>.>``): one work queue per service.
  Work-queue retention deletes a command once acknowledged; the one durable pull
  consumer ``<service>-workers`` is shared by every replica, so replicas add
  workers rather than duplicate work.
* The key-value buckets of :class:`ferry.proto.subjects.Bucket`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from nats.js import api
from nats.js.errors import APIError, NotFoundError, ServiceUnavailableError

from ferry.proto import subjects
from ferry.proto.subjects import Bucket, Service

if TYPE_CHECKING:
    from ferry.bus.connection import Bus

log = logging.getLogger(__name__)

_DAY = 24 * 3600
_GIB = 1 << 30
_STREAM_NAME_IN_USE = 10058
# "no suitable peers for placement" (400): a replicated stream asked of a cluster whose
# nodes are not all up yet. (A meta group still electing answers 503: always retried.)
_PLACEMENT_NOT_YET = frozenset({10005})
START_SECONDS = 60.0  # how long a start-up waits for a cluster to take its declaration
_NOT_YET = (NotFoundError, ServiceUnavailableError, NoRespondersError, NatsTimeout)
"""What a cluster answers about a stream it has only just created."""
# Work queues keep every replica supplied; the bound only protects the server.
_MAX_ACK_PENDING = 10_000


@dataclass(frozen=True, slots=True)
class TopologySettings:
    """How long things are kept and how hard the bus retries.

    The defaults suit a production cluster; tests shrink ``ack_wait_seconds``
    to see redeliveries quickly.
    """

    events_max_age_seconds: float = 30 * _DAY
    """How long the audit stream keeps an event."""
    events_max_bytes: int = 1 * _GIB
    """The audit stream's size cap; past it the oldest events are dropped first.
    JetStream reserves it from the server's store when the stream is made."""
    dead_letters_max_age_seconds: float = 30 * _DAY
    """How long the dead-letter stream keeps a given-up command."""
    dead_letters_max_bytes: int = _GIB // 4
    """The dead-letter stream's size cap; past it the oldest letters are dropped first."""
    duplicate_window_seconds: float = 120.0
    """A publish with a Nats-Msg-Id seen within this window is dropped."""
    ack_wait_seconds: float = 30.0
    """A delivered command not acked (or in-progress acked) in this time is redelivered."""
    max_deliver: int = 5
    """Deliveries of one command before the router gives up on it."""
    storage: Literal["file", "memory"] = "file"
    """Stream storage; file so that acknowledged data survives a crash."""
    replicas: int = 1
    """Stream replicas in a clustered JetStream."""

    def storage_type(self) -> api.StorageType:
        return api.StorageType.FILE if self.storage == "file" else api.StorageType.MEMORY

    def direct_reads(self) -> bool:
        """Whether any replica may answer a single-message read (a bucket's get).

        Only with one replica. JetStream promises no read-your-writes for direct gets:
        a follower acknowledged by no majority may lag (or, after a restart, serve old
        revisions), so ``ferry migrate`` wrote a Migration that the controller then read
        as missing. With replicas every get goes to the stream's leader.
        """
        return self.replicas == 1


def _history(bucket: Bucket) -> int:
    return 1 if bucket in (Bucket.CANCEL, Bucket.LOCKS) else 5


def events_stream(settings: TopologySettings) -> api.StreamConfig:
    return api.StreamConfig(
        name=subjects.EVENTS_STREAM,
        description="Ferry audit log: every event of every migration",
        subjects=[subjects.all_events()],
        retention=api.RetentionPolicy.LIMITS,
        storage=settings.storage_type(),
        max_age=settings.events_max_age_seconds,
        max_bytes=settings.events_max_bytes,
        duplicate_window=settings.duplicate_window_seconds,
        num_replicas=settings.replicas,
        discard=api.DiscardPolicy.OLD,
        allow_direct=settings.direct_reads(),
    )


def dead_letter_stream(settings: TopologySettings) -> api.StreamConfig:
    return api.StreamConfig(
        name=subjects.DEAD_LETTER_STREAM,
        description="Ferry commands that were given up on, with the reason",
        subjects=[subjects.all_dead_letters()],
        retention=api.RetentionPolicy.LIMITS,
        storage=settings.storage_type(),
        max_age=settings.dead_letters_max_age_seconds,
        max_bytes=settings.dead_letters_max_bytes,
        duplicate_window=settings.duplicate_window_seconds,
        num_replicas=settings.replicas,
        discard=api.DiscardPolicy.OLD,
    )


def command_stream(settings: TopologySettings, service: Service) -> api.StreamConfig:
    return api.StreamConfig(
        name=subjects.command_stream(service),
        description=f"Ferry work queue of the {service.value} service",
        subjects=[subjects.commands_of(service)],
        retention=api.RetentionPolicy.WORK_QUEUE,
        storage=settings.storage_type(),
        duplicate_window=settings.duplicate_window_seconds,
        num_replicas=settings.replicas,
        discard=api.DiscardPolicy.OLD,
    )


def command_consumer(settings: TopologySettings, service: Service) -> api.ConsumerConfig:
    name = subjects.command_consumer(service)
    return api.ConsumerConfig(
        name=name,
        durable_name=name,
        description=f"every replica of the {service.value} service",
        deliver_policy=api.DeliverPolicy.ALL,
        ack_policy=api.AckPolicy.EXPLICIT,
        ack_wait=settings.ack_wait_seconds,
        # No server-side cap: deliveries to a replica that was killed count too, and a
        # capped command would silently stay in the queue forever. The router gives up
        # on a handler that keeps failing after ``settings.max_deliver`` deliveries.
        max_deliver=-1,
        max_ack_pending=_MAX_ACK_PENDING,
        replay_policy=api.ReplayPolicy.INSTANT,
    )


async def declare(
    bus: Bus,
    settings: TopologySettings | None = None,
    services: Iterable[Service] = (),
    within: float = START_SECONDS,
) -> None:
    """Create or update the shared streams, the given services' queues, and the buckets.

    A cluster whose nodes are still starting (a service started with them) cannot place
    a replicated stream yet, and a meta group still electing answers nothing: the whole
    declaration, idempotent, is tried again for up to ``within`` seconds.
    """
    chosen = settings or bus.settings
    wanted = list(services)
    await bus.patiently(
        "declaring the streams and buckets",
        lambda: _declare(bus, chosen, wanted),
        codes=_PLACEMENT_NOT_YET,
        within=within,
    )


async def _declare(bus: Bus, settings: TopologySettings, services: list[Service]) -> None:
    await ensure_stream(bus, events_stream(settings))
    await ensure_stream(bus, dead_letter_stream(settings))
    for service in services:
        await ensure_stream(bus, command_stream(settings, service))
        await bus.js.add_consumer(
            subjects.command_stream(service), config=command_consumer(settings, service)
        )
    for bucket in Bucket:
        await ensure_bucket(bus, settings, bucket)
    if settings.replicas > 1:
        names = [subjects.EVENTS_STREAM, subjects.DEAD_LETTER_STREAM]
        names += [subjects.command_stream(s) for s in services]
        names += [f"KV_{b.value}" for b in Bucket]
        await settled(bus, names)


async def settled(bus: Bus, streams: Iterable[str], within: float = 60.0) -> None:
    """Wait until each replicated stream has a leader and a majority of current replicas.

    A stream just created in a cluster answers its first requests (a bucket's direct
    get, served by any replica) only once its group has elected a leader and the
    replicas have caught up; until then a request finds no responder. A majority, not
    all: a service restarting while one node is down must still start.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    waiting = list(streams)
    last = "no leader"
    while waiting:
        try:
            info = await bus.js.stream_info(waiting[0])
        except _NOT_YET as err:
            # The node that answered has not yet applied the stream's assignment (404),
            # or the group has no leader to answer (503, no responders, a timeout).
            info, last = None, f"{type(err).__name__}: {err}"
        group = info.cluster if info is not None else None
        peers = (group.replicas or []) if group is not None else []
        current = 1 + sum(1 for r in peers if r.current)  # the leader and current followers
        if group is not None and group.leader and current > (1 + len(peers)) // 2:
            waiting.pop(0)
            continue
        if info is not None:
            last = f"leader {group.leader if group else None!r}, {current} current"
        if loop.time() > deadline:
            raise TimeoutError(
                f"stream {waiting[0]} has no current leader after {within:.0f}s ({last})"
            )
        await asyncio.sleep(0.1)


async def ensure_stream(bus: Bus, config: api.StreamConfig) -> api.StreamInfo:
    """Create the stream, or update it when it exists with another configuration."""
    try:
        return await bus.js.add_stream(config)
    except APIError as err:
        if err.err_code != _STREAM_NAME_IN_USE:
            raise
    log.info("updating stream %s to the declared configuration", config.name)
    return await bus.js.update_stream(config)


async def ensure_bucket(bus: Bus, settings: TopologySettings, bucket: Bucket) -> None:
    """Create a key-value bucket, or bring an existing one's history and storage in line."""
    history = _history(bucket)
    try:
        await bus.js.create_key_value(
            bucket=bucket.value,
            history=history,
            storage=settings.storage_type(),
            replicas=settings.replicas,
            direct=settings.direct_reads(),
        )
        return
    except APIError as err:
        if err.err_code != _STREAM_NAME_IN_USE:
            raise
    stream = f"KV_{bucket.value}"
    try:
        info = await bus.js.stream_info(stream)
    except NotFoundError:
        raise
    config = info.config
    direct = settings.direct_reads()
    if (
        config.max_msgs_per_subject != history
        or config.num_replicas != settings.replicas
        or bool(config.allow_direct) != direct
    ):
        log.info(
            "updating bucket %s to history %d, %d replicas, direct reads %s",
            bucket.value, history, settings.replicas, direct,
        )  # fmt: skip
        config.max_msgs_per_subject = history
        config.num_replicas = settings.replicas
        config.allow_direct = direct
        await bus.js.update_stream(config)
