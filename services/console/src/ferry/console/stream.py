"""The audit stream as server-sent events, resumable from the last one a browser saw.

Each event's SSE ``id`` is its sequence in the ``FERRY_EVENTS`` stream. A
browser that loses the connection reconnects by itself and sends that id back
as ``Last-Event-ID``; the stream resumes at the next sequence, so nothing is
lost and nothing repeats. A page's first connection names its starting point
with ``?after=<sequence>`` (the position its snapshot was taken at).

Reading the bus and writing to the browser are two tasks joined by a small
queue: a slow browser holds back only its own reader (the queue fills, the
ordered consumer waits), and while nothing happens a comment goes out every
``keepalive`` seconds, which both keeps proxies from closing the connection
and makes a vanished browser show up as a failed write.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass
from typing import Any

import msgspec
from aiohttp import web

from ferry.bus import Bus
from ferry.bus.audit import Record
from ferry.proto import subjects

log = logging.getLogger(__name__)

QUEUE = 256


@dataclass(frozen=True)
class Filter:
    """Narrow the stream to a plan, a migration, a VM (id or name), or any mix."""

    plan: str = ""
    migration: str = ""
    vm: str = ""

    @classmethod
    def of(cls, request: web.Request) -> Filter:
        q = request.query
        return cls(plan=q.get("plan", ""), migration=q.get("migration", ""), vm=q.get("vm", ""))

    def subject(self) -> str:
        # The migration is a subject token, so the server does that part of the filtering.
        return subjects.events_of(migration=self.migration or None)

    def wants(self, record: Record) -> bool:
        m = record.message
        return (not self.plan or m.plan == self.plan) and (not self.vm or m.vm == self.vm)


def start_after(request: web.Request) -> int | None:
    """The sequence the browser has seen: ``Last-Event-ID`` on a reconnect, else ``?after=``.

    None: the page has seen nothing and wants the stream from its beginning."""
    for raw in (request.headers.get("Last-Event-ID"), request.query.get("after")):
        if raw is not None and raw.strip().isdigit():
            return int(raw)
    if request.headers.get("Last-Event-ID") or request.query.get("after"):
        raise web.HTTPBadRequest(text="Last-Event-ID / after must be a stream sequence\n")
    return None


def frame(record: Record) -> bytes:
    """One SSE message: ``id`` the stream sequence, ``event`` the CloudEvents type."""
    data: dict[str, Any] = {
        "seq": record.sequence,
        "type": record.envelope.type,
        "time": record.envelope.time,
        "source": record.envelope.source,
        "data": msgspec.to_builtins(record.message),
    }
    body = json.dumps(data, separators=(",", ":"))
    return f"id: {record.sequence}\nevent: audit\ndata: {body}\n\n".encode()


async def serve(request: web.Request, bus: Bus, keepalive: float) -> web.StreamResponse:
    after = start_after(request)
    wanted = Filter.of(request)
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",  # a proxy that buffers would hold events back
        }
    )
    await response.prepare(request)
    # Tell the browser how soon to come back after a drop (milliseconds).
    await response.write(b"retry: 1000\n\n")
    queue: asyncio.Queue[Record] = asyncio.Queue(QUEUE)

    async def read() -> None:
        since = None if after is None else after + 1
        async for record in bus.records(wanted.subject(), since=since, follow=True):
            if wanted.wants(record):
                await queue.put(record)

    reader = asyncio.create_task(read(), name="console-sse-reader")
    try:
        while True:
            if reader.done():
                reader.result()  # the bus reader ended: re-raise why, the browser reconnects
                break
            try:
                record = await asyncio.wait_for(queue.get(), timeout=keepalive)
            except TimeoutError:
                await response.write(b": keepalive\n\n")
                continue
            await response.write(frame(record))
    except ConnectionResetError:
        pass  # the browser went away; it resumes from Last-Event-ID when it returns
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await reader
    return response
