"""One logged-in connection to vCenter or ESXi: trust, login, properties, tasks.

Trust is decided before a password is sent. A Provider either names a CA bundle
(``settings.caBundle``, a PEM file, or ``cacert`` in its secret, as Forklift's
secrets hold it), pins the server's certificate by thumbprint
(``settings.thumbprint``, SHA-1 or SHA-256 hex as vSphere shows it), or says
``settings.insecureSkipVerify: "true"``; otherwise the system's CAs verify the
server. A refused certificate raises :class:`CertificateRefused` carrying the
thumbprint the server showed, so the user can compare it with the vCenter console
and pin it on purpose.

Credentials come only from the secret handed to the factory (``user`` or
``username``, ``password``); they are never in argv, a log line or an event, and
:class:`Credentials` does not print its password.

pyVmomi is blocking: every call runs in a worker thread, one at a time per
session (its SOAP stub is not safe to share between threads). A session that reads
carry (their cookie) is kept alive meanwhile by its :attr:`Session.keepalive`
(:mod:`ferry.providers.vsphere.keepalive`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import socket
import ssl
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.cookies import CookieError, SimpleCookie
from typing import Any, TypeVar
from urllib.parse import urlsplit

from pyVim import connect
from pyVmomi import vim, vmodl

from ferry.providers.base import ProviderError
from ferry.providers.vsphere import keepalive

T = TypeVar("T")
CONNECT_TIMEOUT = 30.0
TRUE_WORDS = frozenset({"true", "yes", "1"})
SESSION_COOKIE = "vmware_soap_session"


class CertificateRefused(ProviderError):
    """The server's certificate is not trusted; ``seen`` is its thumbprint."""

    def __init__(self, host: str, seen: str, why: str) -> None:
        super().__init__(f"certificate of {host} refused ({why}); its SHA-1 thumbprint is {seen}")
        self.seen = seen


class LoginRefused(ProviderError):
    """The server refused the credentials of the provider's secret."""


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str = field(repr=False)

    @classmethod
    def from_secret(cls, secret: Mapping[str, Any] | None) -> Credentials:
        values = dict(secret or {})
        username = str(values.get("user") or values.get("username") or "")
        password = str(values.get("password") or "")
        if not username or not password:
            raise ProviderError("vSphere provider needs a secret with 'user' and 'password'")
        return cls(username, password)


@dataclass(frozen=True)
class Trust:
    """How the server's certificate is checked: one of the three, or the system CAs."""

    ca_file: str = ""
    ca_pem: str = ""
    thumbprint: str = ""
    insecure: bool = False

    @classmethod
    def from_provider(cls, settings: Mapping[str, str], secret: Mapping[str, Any] | None) -> Trust:
        insecure = str(settings.get("insecureSkipVerify", "")).lower() in TRUE_WORDS
        return cls(
            ca_file=settings.get("caBundle", ""),
            ca_pem=str((secret or {}).get("cacert") or ""),
            thumbprint=normalize(settings.get("thumbprint", "")),
            insecure=insecure,
        )

    def context(self) -> ssl.SSLContext:
        """A context that verifies, unless pinning or insecure replaces verification."""
        if self.insecure or self.thumbprint:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            return ctx
        return ssl.create_default_context(cafile=self.ca_file or None, cadata=self.ca_pem or None)


def normalize(thumbprint: str) -> str:
    """``aa:bb…``, ``AABB…`` and ``aa bb…`` all become ``AA:BB:…``."""
    digits = "".join(ch for ch in thumbprint.upper() if ch in "0123456789ABCDEF")
    return ":".join(digits[i : i + 2] for i in range(0, len(digits), 2))


def thumbprint_of(der: bytes, algorithm: str = "sha1") -> str:
    return normalize(hashlib.new(algorithm, der).hexdigest())


def peer_certificate(host: str, port: int, timeout: float = CONNECT_TIMEOUT) -> bytes:
    """The server's certificate (DER), read without trusting it: only to be compared."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection((host, port), timeout=timeout) as raw,
        ctx.wrap_socket(raw, server_hostname=host) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    if not der:
        raise ProviderError(f"{host}:{port} sent no certificate")
    return der


def check_pin(host: str, der: bytes, pinned: str) -> None:
    """Raise :class:`CertificateRefused` unless ``der`` has the pinned thumbprint."""
    algorithm = {20: "sha1", 32: "sha256"}.get(len(pinned.split(":")))
    if algorithm is None:
        raise ProviderError(f"thumbprint {pinned!r} is neither SHA-1 nor SHA-256")
    if thumbprint_of(der, algorithm) != pinned:
        raise CertificateRefused(host, thumbprint_of(der), f"it does not match {pinned}")


class Session:
    """A pyVmomi service instance, opened on demand and used from one thread at a time."""

    def __init__(
        self,
        url: str,
        credentials: Credentials,
        trust: Trust,
        keepalive_seconds: float = keepalive.DEFAULT_SECONDS,
    ) -> None:
        parts = urlsplit(url if "//" in url else f"https://{url}")
        if parts.scheme != "https" or not parts.hostname:
            raise ProviderError(f"vSphere provider url must be https://host[/sdk], got {url!r}")
        self.host = parts.hostname
        self.port = parts.port or 443
        self.path = parts.path.rstrip("/") or "/sdk"
        self.credentials = credentials
        self.trust = trust
        self.certificate = b""  # DER of the server's certificate, once connected
        self._si: Any = None
        self._lock = threading.Lock()
        self.keepalive = keepalive.KeepAlive(self, keepalive_seconds)

    @property
    def netloc(self) -> str:
        return f"{self.host}:{self.port}"

    async def call(self, fn: Callable[[Any], T]) -> T:
        """Run ``fn(service_instance)`` in a thread, connecting first if needed."""
        return await asyncio.to_thread(self._call, fn)

    def _call(self, fn: Callable[[Any], T]) -> T:
        with self._lock:
            if self._si is None:
                self._si = self._connect()
            try:
                return fn(self._si)
            except vim.fault.NotAuthenticated:
                # The session ended at the server (idle timeout, an administrator):
                # log in again once and repeat the call; a second refusal is real.
                self._si = self._connect()
                return fn(self._si)

    def _connect(self) -> Any:
        try:
            der = peer_certificate(self.host, self.port)
        except OSError as exc:
            raise ProviderError(f"cannot reach {self.netloc}: {exc}") from None
        if self.trust.thumbprint:
            check_pin(self.netloc, der, self.trust.thumbprint)
        try:
            si = connect.SmartConnect(
                protocol="https",
                host=self.host,
                port=self.port,
                path=self.path,
                user=self.credentials.username,
                pwd=self.credentials.password,
                sslContext=self.trust.context(),
                thumbprint=self.trust.thumbprint.replace(":", "") or None,
                connectionPoolTimeout=int(CONNECT_TIMEOUT),
            )
        except ssl.SSLCertVerificationError as exc:
            raise CertificateRefused(
                self.netloc, thumbprint_of(der), exc.verify_message or str(exc)
            ) from None
        except vim.fault.InvalidLogin:
            raise LoginRefused(
                f"{self.netloc} refused the login of {self.credentials.username!r}"
            ) from None
        except (OSError, vmodl.MethodFault) as exc:
            raise ProviderError(f"cannot log in to {self.netloc}: {fault_text(exc)}") from None
        self.certificate = der
        return si

    def cookie(self) -> str:
        """The cookie of a live session, for the datastore HTTP path; a credential, never
        logged. A session the server ended is replaced by a new login first, so a reader
        opened again after one expired (a retried copy) gets a cookie that works."""
        with self._lock:
            if self._si is None or not self._alive(self._si):
                self._si = self._connect()
            return request_cookie(str(self._si._stub.cookie))

    def touch(self, cookie: str) -> bool:
        """``CurrentTime`` on the session behind ``cookie``, which counts as activity:
        False, and no new login, when that session has ended or was replaced (its
        holders' cookie is dead either way)."""
        with self._lock:
            si = self._si
            if si is None or not same_session(str(si._stub.cookie), cookie):
                return False
            try:
                si.CurrentTime()
            except vim.fault.NotAuthenticated:
                return False
            return True

    def alive(self, cookie: str) -> bool:
        """Whether the session behind ``cookie`` is still this connection's and the
        server's; asked after a read failed, never logs in."""
        with self._lock:
            si = self._si
            return si is not None and same_session(str(si._stub.cookie), cookie) and self._alive(si)

    @staticmethod
    def _alive(si: Any) -> bool:
        try:
            return si.content.sessionManager.currentSession is not None
        except vim.fault.NotAuthenticated:
            return False

    async def close(self) -> None:
        await asyncio.to_thread(self._close)

    def _close(self) -> None:
        with self._lock:
            si, self._si = self._si, None
        if si is not None:
            # A session that is already gone needs no logout.
            with contextlib.suppress(Exception):
                connect.Disconnect(si)


def request_cookie(set_cookie: str) -> str:
    """The ``Cookie`` a request sends for pyVmomi's stored ``Set-Cookie`` value: only
    ``vmware_soap_session=<value>``, without the attributes (``Path``, ``HttpOnly``,
    ``Secure``) vCenter sends with it, as virt-v2v's own vCenter input does."""
    with contextlib.suppress(CookieError):
        morsel = SimpleCookie(set_cookie).get(SESSION_COOKIE)
        if morsel is not None:
            return f"{SESSION_COOKIE}={morsel.coded_value}"
    return set_cookie.split(";", 1)[0].strip()


def same_session(cookie: str, other: str) -> bool:
    """Whether two ``Set-Cookie`` values name one session (its ``vmware_soap_session``
    id; a server may send the cookie again with other attributes)."""

    def key(text: str) -> str:
        with contextlib.suppress(CookieError):
            morsel = SimpleCookie(text).get(SESSION_COOKIE)
            if morsel is not None:
                return morsel.value
        return text

    return key(cookie) == key(other)


def wait_for(task: Any, what: str) -> Any:
    """Block until a vSphere task ends; its fault becomes a :class:`ProviderError`.

    Only ``info.state``, ``info.error`` and ``info.result`` are read: the whole
    ``TaskInfo`` may name an entity of a type pyVmomi refuses to decode (vcsim
    reports a snapshot's removal against the snapshot).
    """
    pc = vim.ServiceInstance("ServiceInstance", task._stub).RetrieveContent().propertyCollector
    spec = vmodl.query.PropertyCollector.FilterSpec(
        objectSet=[vmodl.query.PropertyCollector.ObjectSpec(obj=task)],
        propSet=[
            vmodl.query.PropertyCollector.PropertySpec(
                type=vim.Task, pathSet=["info.state", "info.error", "info.result"]
            )
        ],
    )
    while True:
        props: dict[str, Any] = {}
        for item in pc.RetrieveContents([spec]):
            props.update({p.name: p.val for p in item.propSet})
        state = props.get("info.state")
        if state == vim.TaskInfo.State.error:
            raise ProviderError(f"{what} failed: {fault_text(props.get('info.error'))}")
        if state == vim.TaskInfo.State.success:
            return props.get("info.result")
        threading.Event().wait(0.1)


def collect(si: Any, root: Any, kind: Any, paths: list[str]) -> list[tuple[Any, dict[str, Any]]]:
    """Every object of ``kind`` under ``root`` with ``paths``, in one property collection."""
    content = si.RetrieveContent()
    view = content.viewManager.CreateContainerView(root, [kind], True)
    try:
        spec = vmodl.query.PropertyCollector.FilterSpec(
            objectSet=[
                vmodl.query.PropertyCollector.ObjectSpec(
                    obj=view,
                    skip=True,
                    selectSet=[
                        vmodl.query.PropertyCollector.TraversalSpec(
                            name="view", path="view", skip=False, type=vim.view.ContainerView
                        )
                    ],
                )
            ],
            propSet=[vmodl.query.PropertyCollector.PropertySpec(type=kind, pathSet=paths)],
        )
        found: list[tuple[Any, dict[str, Any]]] = []
        result = content.propertyCollector.RetrievePropertiesEx(
            [spec], vmodl.query.PropertyCollector.RetrieveOptions()
        )
        while result is not None:
            for item in result.objects:
                found.append((item.obj, {p.name: p.val for p in item.propSet}))
            if not result.token:
                break
            result = content.propertyCollector.ContinueRetrievePropertiesEx(result.token)
        return found
    finally:
        view.Destroy()


def fault_text(exc: BaseException | Any) -> str:
    msg = getattr(exc, "msg", None) or getattr(exc, "localizedMessage", None)
    return f"{type(exc).__name__}: {msg}" if msg else (str(exc) or type(exc).__name__)
