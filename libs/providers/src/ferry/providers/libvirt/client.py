"""One libvirt connection per provider, opened with credentials from its secret only.

libvirt-python is blocking, so every call runs on a worker thread (``call``); the
event loop never waits on a remote daemon. Credentials come from the Provider's
secret (``username``, ``password``) and are answered through libvirt's auth
callback: they never reach a URI, an argv, an environment or a log line.
libvirt's own error text is kept (it says what failed) but its default handler,
which prints to stderr, is silenced.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import libvirt

from ferry.providers.base import ProviderError, VmNotFound

T = TypeVar("T")

# libvirt prints every error to stderr unless a handler is registered; ours drops
# them, because each one is raised as an exception and reported there.
libvirt.registerErrorHandler(lambda _ctx, _err: None, None)


class Unreachable(ProviderError):
    """The libvirt daemon could not be reached or refused the credentials."""


def describe(exc: libvirt.libvirtError) -> str:
    return (exc.get_error_message() or str(exc)).strip()


class Client:
    """A lazily opened, thread-safe libvirt connection to ``uri``."""

    def __init__(self, uri: str, secret: Mapping[str, Any] | None = None) -> None:
        if not uri:
            raise ProviderError("libvirt provider needs a url: a libvirt URI (qemu:///system)")
        self.uri = uri
        self._username = str((secret or {}).get("username", ""))
        self._password = str((secret or {}).get("password", ""))
        self._conn: libvirt.virConnect | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:  # never the secret
        return f"Client({self.uri!r})"

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on a worker thread, libvirt errors raised as ProviderError."""
        return await asyncio.to_thread(self._guarded, fn, *args)

    def _guarded(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            return fn(*args)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                raise VmNotFound(describe(exc)) from None  # it vanished while Ferry worked
            raise ProviderError(describe(exc)) from None

    def connection(self) -> libvirt.virConnect:
        """The open connection (blocking: call from a worker thread)."""
        with self._lock:
            if self._conn is not None and self._conn.isAlive():
                return self._conn
            self._conn = self._open()
            return self._conn

    def _open(self) -> libvirt.virConnect:
        creds = [libvirt.VIR_CRED_AUTHNAME, libvirt.VIR_CRED_PASSPHRASE]
        auth = [creds, self._answer, None]
        try:
            return libvirt.openAuth(self.uri, auth, 0)
        except libvirt.libvirtError as exc:
            raise Unreachable(f"cannot connect to {self.uri}: {describe(exc)}") from None

    def _answer(self, credentials: list[list[Any]], _data: object) -> int:
        for cred in credentials:
            if cred[0] == libvirt.VIR_CRED_AUTHNAME and self._username:
                cred[4] = self._username
            elif cred[0] == libvirt.VIR_CRED_PASSPHRASE and self._password:
                cred[4] = self._password
            else:
                return -1  # nothing to answer with: libvirt reports refused credentials
        return 0

    def domain(self, id_or_name: str) -> libvirt.virDomain:
        """A domain by UUID (preferred) or name; VmNotFound otherwise (blocking)."""
        conn = self.connection()
        try:
            return conn.lookupByUUIDString(id_or_name)
        except libvirt.libvirtError:
            pass
        try:
            return conn.lookupByName(id_or_name)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                raise ProviderError(describe(exc)) from None
        known = [d.name() for d in conn.listAllDomains(0)]
        raise VmNotFound(id_or_name, known)

    def close(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(libvirt.libvirtError):
                conn.close()
