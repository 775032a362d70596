"""Dialling NATS: the first connection, with nats-py's own retry loop, and its log.

nats-py retries the first connection and every reconnect itself; this module bounds
how long the first one may take, gives up at once when the server refuses the
identity or its certificate is not trusted (nats-py would retry either until the
timeout), and logs the connection's life without credentials: a URL is shown
:func:`redact`-ed, a password never.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import nats
from nats.aio.client import Client

from ferry.bus.errors import NotConnected

# The connection's logger, as before this module was split out (the CLI quiets it by name).
log = logging.getLogger("ferry.bus.connection")


@dataclass(frozen=True, slots=True)
class Credentials:
    """A NATS user and password; ``repr`` never shows the password."""

    user: str
    password: str

    @property
    def inbox_prefix(self) -> str:
        """Replies to this user's requests: the server lets it subscribe here only."""
        return f"_INBOX_{self.user}"

    def __repr__(self) -> str:
        return f"Credentials(user={self.user!r}, password=<hidden>)"


def redact(url: str) -> str:
    """A server URL without user, password or token, for logs (each of a
    comma-separated list of a cluster's servers)."""
    if "," in url:
        return ",".join(redact(one.strip()) for one in url.split(","))
    parts = urlsplit(url if "://" in url else f"nats://{url}")
    host = parts.hostname or "?"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}"


async def dial(
    url: str | Sequence[str],
    *,
    name: str,
    connect_timeout: float,
    reconnect_wait: float,
    credentials: Credentials | None,
    tls: ssl.SSLContext | None,
) -> tuple[Client, ConnectionLog]:
    """A connected client and the log its callbacks write, or :class:`NotConnected`."""
    # A cluster's servers as one setting: "nats://a:4222,nats://b:4222".
    servers = [s.strip() for s in url.split(",")] if isinstance(url, str) else list(url)
    events = ConnectionLog(", ".join(redact(s) for s in servers))
    shown = events.shown
    nc = Client()
    identity: dict[str, Any] = {}
    if credentials is not None:
        identity = {
            "user": credentials.user,
            "password": credentials.password,
            "inbox_prefix": credentials.inbox_prefix,
        }
    if tls is not None:
        identity["tls"] = tls

    try:
        await until_refused(
            events,
            nc.connect(
                servers,
                name=name,
                allow_reconnect=True,
                max_reconnect_attempts=-1,
                reconnect_time_wait=reconnect_wait,  # type: ignore[arg-type]
                connect_timeout=2,
                ping_interval=20,
                max_outstanding_pings=3,
                error_cb=events.error,
                disconnected_cb=events.disconnected,
                reconnected_cb=events.reconnected,
                **identity,
            ),
            connect_timeout,
        )
    except nats.errors.Error as err:
        await close_quietly(nc)
        refusal = refused(err, events)
        raise _not_connected(err, refusal, shown, credentials, connect_timeout) from None
    except ssl.SSLError as err:
        await close_quietly(nc)
        raise NotConnected(
            f"NATS at {shown} refused: TLS failed ({err.reason or err}); give the CA that "
            "signed the server's certificate (FERRY_NATS__TLS_CA_FILE)"
        ) from None
    except (TimeoutError, OSError) as err:
        await close_quietly(nc)
        raise _not_connected(err, events.refused, shown, credentials, connect_timeout) from None
    return nc, events


def _not_connected(
    err: BaseException, refusal: bool, shown: str, credentials: Credentials | None, within: float
) -> NotConnected:
    """Why the first connection failed: the server refused who we are, or none answered."""
    if refusal:
        who = credentials.user if credentials else "anonymous"
        said = f"NATS at {shown} refused the connection: authorization violation (as {who})"
    else:
        said = f"no NATS server reachable at {shown} within {within:.0f}s ({type(err).__name__})"
    return NotConnected(said)


class ConnectionLog:
    """nats-py's connection callbacks, logging without credentials or noise."""

    def __init__(self, shown: str) -> None:
        self.shown = shown
        self.closing = False
        self.refused = False
        self.untrusted: ssl.SSLError | None = None

    async def error(self, err: Exception) -> None:
        if is_refusal(err):
            self.refused = True
        if isinstance(err, ssl.SSLError):
            self.untrusted = err
        if not self.closing:
            log.warning("nats: %s: %s (%s)", type(err).__name__, err, self.shown)

    async def disconnected(self) -> None:
        if not self.closing:
            log.warning("disconnected from NATS (%s)", self.shown)

    async def reconnected(self) -> None:
        log.info("reconnected to NATS (%s)", self.shown)


async def until_refused(
    events: ConnectionLog, connecting: Coroutine[Any, Any, None], within: float
) -> None:
    """Await ``connecting`` for up to ``within`` seconds, but give up as soon as the server
    refuses our identity or its TLS certificate is not trusted: nats-py would otherwise
    retry either until the timeout."""
    task = asyncio.ensure_future(connecting)
    deadline = time.monotonic() + within
    try:
        while not task.done():
            if events.refused:
                raise nats.errors.AuthorizationError
            if events.untrusted is not None:
                raise events.untrusted
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            await asyncio.wait({task}, timeout=min(left, 0.1))
        task.result()
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task


def is_refusal(err: BaseException) -> bool:
    return isinstance(err, nats.errors.AuthorizationError) or (
        "authorization violation" in str(err).lower()
    )


def refused(err: BaseException, events: ConnectionLog) -> bool:
    return events.refused or is_refusal(err)


async def close_quietly(nc: Client) -> None:
    with contextlib.suppress(Exception):  # closing may fail; it does not matter
        await nc.close()
