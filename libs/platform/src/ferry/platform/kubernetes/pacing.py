"""The grant broker: transfer pods ask the volume-service for their budgets' bytes.

On the local platform the volume-service paces its importer child through a pipe
(``want`` / grant lines); a pod is out of reach of a pipe, so it asks over HTTP
(:mod:`ferry.platform.kubernetes.grants`). For each paced copy the platform opens a
*ticket* here (:meth:`Broker.ticket`): a random token bound to that copy's
:data:`~ferry.platform.volumes.Rate`, closed when the copy ends, however it ends. The
route ``POST /pace/grants`` (:meth:`Broker.routes`, served on the service's own HTTP
server by the runtime) awaits the rate for the bytes asked and answers once they are
granted. What it guarantees:

* a grant is only ever taken from the rate of an open ticket: an unknown or closed
  token is 403 and takes nothing (a pod of a copy that ended, or of another replica);
* the bearer token is the only credential and is checked before the body is read;
  a body that is not ``{"bytes": n}`` with ``0 < n <= 1 GiB`` is 400;
* no token is logged, returned, or kept after its copy ends.

A ticket lives in the memory of the replica whose copy opened it, so pods must reach
*that* replica (the chart's ``pacing_url`` is the pod's own IP, not the Service,
which would spread asks over replicas that do not know the ticket).

The conversion-service serves the same route for its conversion pods: a full
conversion under a budget opens a :class:`PodPace`, whose ticket the pod reads from
its Secret and whose program (:mod:`ferry.platform.kubernetes.podpace`) runs the
pod's command while it feeds the captive helpers' rate file with what it is granted.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import secrets
from collections.abc import Iterator
from types import TracebackType

import msgspec
from aiohttp import web

from ferry.platform.kubernetes import grants
from ferry.platform.kubernetes.grants import MAX_BYTES, PATH
from ferry.platform.volumes import Rate


class Broker:
    """Open tickets (token → the copy's rate) and the route that grants against them."""

    def __init__(self) -> None:
        self._tickets: dict[str, Rate] = {}
        self.granted = 0  # bytes granted through this broker, every ticket together

    @property
    def open(self) -> int:
        """How many tickets are open now."""
        return len(self._tickets)

    @contextlib.contextmanager
    def ticket(self, rate: Rate) -> Iterator[str]:
        """A new token bound to ``rate`` while the ``with`` block runs (the copy)."""
        token = new_token()
        self.open_ticket(token, rate)
        try:
            yield token
        finally:
            self.close_ticket(token)

    def open_ticket(self, token: str, rate: Rate) -> None:
        self._tickets[token] = rate

    def close_ticket(self, token: str) -> None:
        self._tickets.pop(token, None)

    def remote(self, rate: Rate, url: str) -> PodPace:
        """A conversion pod's grants against ``rate``: open while its ``async with`` runs."""
        return PodPace(self, rate, grants.Ticket(url=url, token=new_token()))

    def routes(self) -> list[web.RouteDef]:
        return [web.post(PATH, self.grant)]

    def rate_for(self, authorization: str) -> Rate | None:
        """The rate of the open ticket an ``Authorization: Bearer`` header names, if any."""
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return None
        for known, rate in list(self._tickets.items()):
            if hmac.compare_digest(known.encode(), token.encode()):
                return rate
        return None

    async def grant(self, request: web.Request) -> web.Response:
        rate = self.rate_for(request.headers.get("Authorization", ""))
        if rate is None:  # before the body: an unknown caller learns nothing more
            return web.json_response({"error": "unknown or closed ticket"}, status=403)
        try:
            nbytes = asked(await request.read())
        except ValueError as bad:
            return web.json_response({"error": str(bad)}, status=400)
        await rate(nbytes)
        self.granted += nbytes
        return web.json_response({"granted": nbytes})


def asked(body: bytes) -> int:
    """The bytes a grant request asks for; :class:`ValueError` unless ``{"bytes": n}``
    with ``n`` an integer in 1..1 GiB (a bigger slice is asked for in pieces)."""
    try:
        decoded = json.loads(body)
    except ValueError:
        raise ValueError("the body is not JSON") from None
    nbytes = decoded.get("bytes") if isinstance(decoded, dict) else None
    if type(nbytes) is not int or not 0 < nbytes <= MAX_BYTES:
        raise ValueError(f"'bytes' must be an integer in 1..{MAX_BYTES}")
    return nbytes


def new_token() -> str:
    return secrets.token_urlsafe(32)


class PodPace:
    """A conversion pod's grants (:class:`ferry.platform.workloads.RemotePace`).

    The token is made with the object so the ticket can go into the pod's Secret before
    the pod exists; the broker knows it only while the ``async with`` block runs (the
    pod's run), so a pod of a conversion that ended is refused.
    """

    def __init__(self, broker: Broker, rate: Rate, ticket: grants.Ticket) -> None:
        self._broker = broker
        self._rate = rate
        self._ticket = ticket
        self.ticket = msgspec.json.encode(ticket)  # the pod's secret file

    def command(self, argv: list[str], *, ticket_file: str, rate_file: str, step: int) -> list[str]:
        """``argv`` run by the pod's pacer (the conversion image has Ferry's packages)."""
        return [
            "python3",
            "-m",
            "ferry.platform.kubernetes.podpace",
            ticket_file,
            rate_file,
            str(step),
            "--",
            *argv,
        ]

    async def __aenter__(self) -> None:
        self._broker.open_ticket(self._ticket.token, self._rate)

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._broker.close_ticket(self._ticket.token)

    def __repr__(self) -> str:
        return f"PodPace(url={self._ticket.url!r})"  # never the token
