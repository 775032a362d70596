"""A vSphere session kept alive while a read carries its cookie.

vCenter ends a session that made no API call for a while (30 minutes unless its
administrator changed it). A read over the datastore HTTP path (``/folder``) carries
the session's cookie, but nothing says such a read counts as activity, and virt-v2v's
own vCenter input renews its cookie every 25 minutes however busy the copy: a copy or
conversion of a large disk outlives the session it started with unless someone calls
the API meanwhile. So while a read holds a session (a :class:`Hold`, from the moment
the reader logs in until it closes, or for the whole run of a conversion), one task
per :class:`~ferry.providers.vsphere.client.Session` calls ``CurrentTime`` on *that*
session every ``keepAliveSeconds`` (a Provider setting, 300 by default: a sixth of
vCenter's default, well inside any timeout an administrator would set); the last
hold to end stops it.

Preventing the expiry is the only fix that reaches every reader. nbdkit's
``cookie=+FILE`` is read once when nbdkit starts, so a new login cannot reach a
running ``nbdkit curl``, and a conversion's nbdkit runs in the conversion's workload
(in a cluster a pod, whose cookie file is a mounted secret out of this process's
reach). Its
``cookie-script`` / ``cookie-script-renew`` would re-read a rewritten file (argv
would name only the file), but reads between the expiry and the renewal fail all
the same, and a script that logs in itself, as nbdkit's ESXi example does, needs the
password where the workload can read it. When the session is lost anyway (an
administrator ended it, vCenter restarted), the keep-alive does not log in again for
the holders, whose cookie is dead: it marks them lost, and leaving a hold after a
failure raises :class:`SessionExpired` naming the ended session, a reason the caller
retries with a new login (``Session`` logs in again on its next call).

The cookie is a credential: it is compared, never logged.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from types import TracebackType
from typing import Protocol, Self

from ferry.providers.base import ProviderError, SourceInterrupted

log = logging.getLogger(__name__)
DEFAULT_SECONDS = 300.0
SETTING = "keepAliveSeconds"


class SessionExpired(SourceInterrupted):
    """The vSphere session a read carried ended (idle timeout, logout, terminated):
    the datastore HTTP path refuses its cookie (401). Opening again logs in anew."""


class Pingable(Protocol):
    """What the keep-alive needs of a session (``client.Session``)."""

    @property
    def netloc(self) -> str: ...

    def touch(self, cookie: str) -> bool:
        """A cheap API call on the session behind ``cookie``; False when it has ended."""
        ...

    def alive(self, cookie: str) -> bool:
        """Whether the session behind ``cookie`` is still the server's (no new login)."""
        ...


def seconds_of(settings: Mapping[str, str]) -> float:
    """The Provider's ``keepAliveSeconds``: how often a held session is called; ``0``
    turns the keep-alive off (a session then ends after vCenter's idle timeout)."""
    text = str(settings.get(SETTING, "") or "").strip()
    if not text:
        return DEFAULT_SECONDS
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0 or seconds == float("inf"):
        raise ProviderError(
            f"vSphere provider setting {SETTING} is {text!r}; a number of seconds, 0 for off"
        )
    return seconds


class Hold:
    """One reader's claim on the session behind its cookie; start it when the reader
    logs in, stop it when the reader ends. As an async context manager it also names an
    ended session: leaving it with an error while its session has ended raises
    :class:`SessionExpired` from that error."""

    def __init__(self, keeper: KeepAlive, cookie: str, what: str) -> None:
        self._keeper = keeper
        self.cookie = cookie  # a credential: compared, never logged
        self.what = what
        self.lost = False  # the keep-alive found the session ended

    def __repr__(self) -> str:
        return f"Hold({self.what!r}, lost={self.lost})"

    def start(self) -> Self:
        self._keeper.add(self)
        return self

    def stop(self) -> None:
        self._keeper.remove(self)

    async def ended(self) -> bool:
        """Whether the session behind the cookie has ended (an unanswered check is not
        an ended session: the caller's own error stands)."""
        if self.lost:
            return True
        try:
            return not await asyncio.to_thread(self._keeper.session.alive, self.cookie)
        except Exception:  # an unreachable server: no verdict
            return False

    def expired(self) -> SessionExpired:
        return SessionExpired(
            f"the vSphere session on {self._keeper.session.netloc} ended during {self.what} "
            f"(idle timeout, logout or ended by an administrator); the datastore reads that "
            f"carried its cookie were refused. A new attempt logs in anew"
        )

    async def __aenter__(self) -> Self:
        return self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if (
                isinstance(exc, Exception)
                and not isinstance(exc, SessionExpired)
                and await self.ended()
            ):
                raise self.expired() from exc
        finally:
            self.stop()


class KeepAlive:
    """The one keep-alive task of a session: runs while holds exist, every ``seconds``."""

    def __init__(self, session: Pingable, seconds: float = DEFAULT_SECONDS) -> None:
        self.session = session
        self.seconds = seconds
        self._holds: set[Hold] = set()
        self._task: asyncio.Task[None] | None = None

    def hold(self, cookie: str, what: str) -> Hold:
        """An unstarted hold on the session behind ``cookie`` for ``what`` (in messages)."""
        return Hold(self, cookie, what)

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def add(self, hold: Hold) -> None:
        self._holds.add(hold)
        loop, task = asyncio.get_running_loop(), self._task
        # (a provider used from another event loop later starts its task there)
        if self.seconds > 0 and (task is None or task.done() or task.get_loop() is not loop):
            self._task = loop.create_task(self._run(), name="vsphere-keepalive")

    def remove(self, hold: Hold) -> None:
        self._holds.discard(hold)
        if not self._holds and self._task is not None:
            task, self._task = self._task, None
            task.cancel()  # it holds nothing to clean up; a call in flight just ends

    async def _run(self) -> None:
        while self._holds:
            await asyncio.sleep(self.seconds)
            for cookie in {hold.cookie for hold in self._holds if not hold.lost}:
                await self._touch(cookie)

    async def _touch(self, cookie: str) -> None:
        try:
            kept = await asyncio.to_thread(self.session.touch, cookie)
        except Exception as exc:  # a network blip: the next round tries again
            log.warning(
                "vSphere keep-alive call to %s failed (%s); trying again in %gs",
                self.session.netloc,
                type(exc).__name__,
                self.seconds,
            )
            return
        if kept:
            return
        holders = sorted(hold.what for hold in self._holds if hold.cookie == cookie)
        for hold in self._holds:
            if hold.cookie == cookie:
                hold.lost = True
        log.warning(
            "the vSphere session on %s ended while %s read through it; those reads fail "
            "now and are tried again with a new login",
            self.session.netloc,
            ", ".join(holders),
        )
