"""One ``ovirtsdk4`` connection to an engine, used from worker threads.

The SDK is blocking (pycurl), so every call runs in a thread; one connection is shared
under a lock (the SDK's connection is not safe for concurrent requests). Credentials
come from the Provider's secret: ``username``, ``password`` and ``cacert`` (the
engine's CA, PEM), which also signs the imageio daemons' certificates. The CA is
written to a private file; nothing of the secret reaches a log or a command line.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import threading
import weakref
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import ovirtsdk4 as sdk

from ferry.providers.base import ProviderError

T = TypeVar("T")


class Client:
    def __init__(self, url: str, secret: Mapping[str, Any] | None) -> None:
        if not url:
            raise ProviderError("oVirt provider needs a url: https://ENGINE/ovirt-engine/api")
        self.url = url
        secret = secret or {}
        self._username = str(secret.get("username") or secret.get("user") or "")
        self._password = str(secret.get("password", ""))
        self._private = Path(tempfile.mkdtemp(prefix="ferry-ovirt-"))
        # removed with the client, also when nobody calls close()
        self._remove_private = weakref.finalize(self, shutil.rmtree, self._private, True)
        self.ca_file: str | None = None
        if secret.get("cacert"):
            ca = self._private / "ca.pem"
            ca.write_text(str(secret["cacert"]))
            self.ca_file = str(ca)
        self._conn: sdk.Connection | None = None
        self._lock = threading.Lock()

    @property
    def private_dir(self) -> Path:
        """A 0700 directory of this client's own (CA file, transfer configs)."""
        return self._private

    def connection(self) -> sdk.Connection:
        if self._conn is None:
            if not self._username:
                raise ProviderError(f"oVirt provider {self.url}: the secret has no username")
            self._conn = sdk.Connection(
                url=self.url,
                username=self._username,
                password=self._password,
                ca_file=self.ca_file,
                timeout=60,
            )
        return self._conn

    def system(self) -> Any:
        return self.connection().system_service()

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        def locked() -> T:
            with self._lock:
                try:
                    return fn(*args)
                except sdk.AuthError as exc:
                    raise ProviderError(f"oVirt engine {self.url} refused the credentials") from exc
                except sdk.ConnectionError as exc:
                    raise ProviderError(f"oVirt engine {self.url} unreachable: {exc}") from exc
                except sdk.Error as exc:
                    raise ProviderError(f"oVirt engine {self.url}: {exc}") from exc

        return await asyncio.to_thread(locked)

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close(logout=True)
            except sdk.Error:
                conn.close(logout=False)
        self._remove_private()
