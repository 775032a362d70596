"""Who may read and who may write.

Reads show nothing secret, so a browser on the same machine reads without
ceremony: a request whose peer is a loopback address is let in. Anyone else
(a request through a Service, an Ingress) must show the token, as must every
write, whoever sends it. The token lives in a file (``ferry up`` creates it
in the data dir; the chart mounts it from a Secret), never in an environment
variable or a command line, and it is compared in constant time so that the
time a refusal takes says nothing about how close a guess was.

Writes accept the token only in the ``Authorization`` header: a browser never
adds that header by itself, so another site cannot make a visitor's browser
start or cancel a migration. Reads also accept it as a cookie (set by ``POST
/api/session``), because ``EventSource`` cannot send headers.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web
from aiohttp.typedefs import Middleware

COOKIE = "ferry_console"
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
"""Probes and scrapes: the kubelet and Prometheus carry no token."""

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Token:
    """The write token; its ``repr`` never shows it, so a stray log line cannot leak it."""

    def __init__(self, value: str) -> None:
        if len(value) < 16:
            raise ValueError("the console token must be at least 16 characters")
        self._value = value.encode()

    def __repr__(self) -> str:
        return "Token(***)"

    def matches(self, given: str | None) -> bool:
        if not given:
            return False
        return hmac.compare_digest(given.encode(), self._value)

    def reveal(self) -> str:
        """For the one place that must hand it on: the session cookie."""
        return self._value.decode()

    @classmethod
    def load_or_create(cls, path: Path) -> Token:
        """Read the token file; create it (0600, never overwriting a racing writer) if absent."""
        try:
            return cls(path.read_text().strip())
        except FileNotFoundError:
            pass
        path.parent.mkdir(parents=True, exist_ok=True)
        value = secrets.token_urlsafe(32)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return cls(path.read_text().strip())
        with os.fdopen(fd, "w") as fh:
            fh.write(value + "\n")
        return cls(value)


def bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def is_loopback(request: web.Request) -> bool:
    try:
        return ipaddress.ip_address(request.remote or "").is_loopback
    except ValueError:
        return False


def middleware(token: Token) -> Middleware:
    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in OPEN_PATHS:
            return await handler(request)
        if request.method in ("GET", "HEAD"):
            allowed = (
                is_loopback(request)
                or token.matches(bearer(request))
                or token.matches(request.cookies.get(COOKIE))
            )
            if not allowed:
                raise web.HTTPForbidden(text="reads from another machine need the console token\n")
            return await handler(request)
        given = bearer(request)
        if not token.matches(given):
            raise web.HTTPUnauthorized(
                text="a write needs the console token (Authorization: Bearer …)\n"
                if given is None
                else "the console token does not match\n",
                headers={"WWW-Authenticate": 'Bearer realm="ferry-console"'},
            )
        return await handler(request)

    return check
