"""A pod's side of bandwidth budgets: ask the service that started it before each chunk.

A pod has no bus connection (and should not: it would need a NATS identity), so it
cannot take from a budget's :class:`ferry.bus.rate.SharedRate` itself. The
volume-service replica that started it holds a *ticket* for the copy, bound to the
copy's rate (:mod:`ferry.platform.kubernetes.pacing`); the pod's copy engine asks
:class:`Throttle` for bytes before it reads them (in steps, through a
:class:`~ferry.platform.grantsteps.Allowance`), and the throttle POSTs
``{"bytes": n}`` with the ticket as a bearer token and returns once granted. So no
byte moves ahead of its grant, as with the local importer's ``want`` lines.

Only the standard library here: the pod's program imports this, not aiohttp. A
connection that fails is tried again a few times; then, or at once when the broker
refuses the ticket (the copy that opened it ended, or its replica restarted), the
throttle raises :class:`OSError`, which the pod reports as transient: the round or
the population starts another pod, with a fresh ticket. The token never appears in
an error message.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any

import msgspec

from ferry.providers.base import repr_hiding

PATH = "/pace/grants"
MAX_BYTES = 1 << 30  # the most one request may ask for; a larger slice asks in pieces
TIMEOUT = 300.0  # a grant waits while the budget is spent: minutes, not seconds
ATTEMPTS = 5  # connections tried for one grant before the pod gives up (transient)
BACKOFF = 0.5  # seconds before the second attempt, doubled after each


class Refused(OSError):
    """The service refused the ticket (the copy or conversion that opened it has ended, or
    its replica restarted): asking again changes nothing."""


class Ticket(msgspec.Struct, frozen=True, kw_only=True):
    """Where a pod asks for grants and the bearer token of its copy (a secret)."""

    url: str  # the volume-service replica's HTTP base URL, e.g. http://10.0.0.7:8080
    token: str

    def __repr__(self) -> str:
        return repr_hiding(self, "token")


Open = Callable[..., Any]


class Throttle:
    """``engine.Options.throttle`` for a pod: blocks until the broker grants ``nbytes``."""

    def __init__(
        self,
        ticket: Ticket,
        *,
        timeout: float = TIMEOUT,
        attempts: int = ATTEMPTS,
        backoff: float = BACKOFF,
        opener: Open = urllib.request.urlopen,
        service: str = "volume-service",
    ) -> None:
        if urllib.parse.urlsplit(ticket.url).scheme not in {"http", "https"}:
            raise ValueError(f"pace_url must be an http(s) URL, not {ticket.url!r}")
        self._url = ticket.url.rstrip("/") + PATH
        self._token = ticket.token
        self._timeout = timeout
        self._attempts = max(1, attempts)
        self._backoff = backoff
        self._open = opener
        self._service = service  # who grants, for the messages
        self._lock = threading.Lock()  # one grant at a time, whichever thread asks
        self.granted = 0

    def __call__(self, nbytes: int) -> None:
        with self._lock:
            while nbytes > 0:
                piece = min(nbytes, MAX_BYTES)
                self._ask(piece)
                self.granted += piece
                nbytes -= piece

    def _ask(self, nbytes: int) -> None:
        body = json.dumps({"bytes": nbytes}).encode()
        headers = {"Authorization": f"Bearer {self._token}", "Content-Type": "application/json"}
        why = ""
        for attempt in range(self._attempts):
            # the scheme was checked to be http(s) above
            request = urllib.request.Request(self._url, body, headers, method="POST")  # noqa: S310
            try:
                with self._open(request, timeout=self._timeout) as response:
                    response.read()
                return
            except urllib.error.HTTPError as error:
                if error.code < 500:  # refused, not unreachable: asking again changes nothing
                    raise Refused(
                        f"the {self._service} refused a bandwidth grant at {self._url} "
                        f"(HTTP {error.code}): the ticket is closed or unknown"
                    ) from None
                why = f"HTTP {error.code}"
            except (urllib.error.URLError, OSError) as error:
                why = str(getattr(error, "reason", error))
            if attempt + 1 < self._attempts:
                time.sleep(self._backoff * 2**attempt)
        raise OSError(
            f"no bandwidth grant from the {self._service} at {self._url} after "
            f"{self._attempts} attempts: {why}"
        )
