"""``Bus.publish_many``: each message's own acknowledgement, in whatever order they come,
and a message not acknowledged in time published again alone under the same id."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from ferry.bus import connection
from ferry.bus.connection import Bus
from ferry.bus.topology import TopologySettings
from ferry.proto import envelope
from ferry.testing.bus import allocate


class _Ack:
    def __init__(self, seq: int, duplicate: bool = False) -> None:
        self.stream, self.seq, self.duplicate = "S", seq, duplicate


class _JetStream:
    """nats-py's JetStream context as ``publish_many`` uses it; the test answers."""

    def __init__(self) -> None:
        self.futures: list[asyncio.Future[_Ack]] = []
        self.sent: list[tuple[str, dict[str, str]]] = []
        self.again: list[dict[str, str]] = []

    def publish_async_pending(self) -> int:
        return sum(not f.done() for f in self.futures)

    async def publish_async(
        self, subject: str, payload: bytes, *, headers: dict[str, str], wait_stall: Any
    ) -> asyncio.Future[_Ack]:
        future: asyncio.Future[_Ack] = asyncio.get_running_loop().create_future()
        self.futures.append(future)
        self.sent.append((subject, headers))
        return future

    async def publish(
        self, subject: str, data: bytes, *, headers: dict[str, str], timeout: float
    ) -> _Ack:
        self.again.append(headers)
        return _Ack(100 + len(self.again))


class _Client:
    def __init__(self, js: _JetStream) -> None:
        self.js = js

    def jetstream(self, **_: Any) -> _JetStream:
        return self.js


async def test_every_message_gets_its_own_acknowledgement_in_any_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a stream that acknowledges the last of four first, then the others out of
    # order, and never the second (past the wait)
    monkeypatch.setattr(connection, "PUBLISH_ACK_SECONDS", 0.3)
    js = _JetStream()
    bus = Bus(_Client(js), name="t", settings=TopologySettings(), publish_timeout=1.0)  # type: ignore[arg-type]
    messages = [allocate(f"vm{i}") for i in range(4)]

    async def answer() -> None:
        while len(js.futures) < 4:
            await asyncio.sleep(0)
        js.futures[3].set_result(_Ack(4))
        await asyncio.sleep(0.05)
        js.futures[2].set_result(_Ack(3, duplicate=True))
        await asyncio.sleep(0.05)
        js.futures[0].set_result(_Ack(1))

    answering = asyncio.create_task(answer())
    # When they are published together
    results = await bus.publish_many(messages)
    await answering
    # Then each result is its own message's acknowledgement, the duplicate said so,
    # and the unacknowledged one was published again alone, with the same id
    ids = [headers[envelope.MSG_ID_HEADER] for _, headers in js.sent]
    assert [r.id for r in results] == ids
    assert [(r.sequence, r.duplicate) for r in results] == [
        (1, False),
        (101, False),
        (3, True),
        (4, False),
    ]
    assert js.again == [js.sent[1][1]]
    assert js.futures[1].cancelled()
    # and the ids are the messages' own
    assert ids == [envelope.message_id(m) for m in messages]
