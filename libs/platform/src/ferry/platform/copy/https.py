"""One HTTPS connection for ranged GETs: what a workload off the host reads a disk through.

Both network sources of a pod that speak HTTP use it: an ovirt-imageio transfer
(:mod:`~ferry.platform.copy.imageio`) and a vSphere flat extent on the datastore path
(:mod:`~ferry.platform.copy.httprange`). The connection is kept alive between requests
and opened again once when the server dropped it; a second failure is the copy's
(transient) source error, so the copy is retried and resumes. No message names the
URL's path or a request header: an imageio path is a ticket, a cookie a session.
"""

from __future__ import annotations

import http.client
import ssl
import urllib.parse
from dataclasses import dataclass, field

from ferry.platform import errors

LIMIT = 64 << 20  # the most a GET that is not a range may answer (imageio's extents)


@dataclass(frozen=True)
class Server:
    """Who answers, for messages: ``who`` ("imageio", "vSphere") and what vouches for
    its certificate (``trust``: "the engine's CA"); ``gone``: the statuses that mean the
    disk or its ticket is gone for good (not worth another attempt)."""

    who: str
    trust: str
    gone: frozenset[int] = field(default_factory=lambda: frozenset({404, 410}))


def context(ca: str, insecure: bool = False) -> ssl.SSLContext:
    """Trust for the server: ``ca`` (PEM; a pinned server's own certificate may be the only
    one, hence partial chains), no check at all when ``insecure``, else the system's CAs."""
    if insecure:
        made = ssl.create_default_context()
        made.check_hostname = False
        made.verify_mode = ssl.CERT_NONE
        return made
    made = ssl.create_default_context(cadata=ca or None)
    if ca:
        made.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    return made


class Connection:
    def __init__(
        self, url: str, made: ssl.SSLContext, server: Server, headers: dict[str, str] | None = None
    ) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "https" or not parts.hostname:
            raise errors.InvalidSourceError(f"{server.who}: the source must be an https URL")
        self.host, self.port, self.path = parts.hostname, parts.port or 443, parts.path
        self.resource = parts.path + (f"?{parts.query}" if parts.query else "")  # what ranges read
        self.server = server
        self._headers = dict(headers or {})
        self._con = http.client.HTTPSConnection(self.host, self.port, context=made, timeout=60)

    def get(self, path: str, headers: dict[str, str] | None = None, limit: int = LIMIT) -> bytes:
        """The body of a GET; more than ``limit`` bytes is the server's error (a server that
        ignored the range would otherwise be read whole into memory)."""
        for attempt in range(2):
            try:
                self._con.request("GET", path, headers={**self._headers, **(headers or {})})
                res = self._con.getresponse()
                body = res.read(limit + 1)
                if len(body) > limit:
                    self._con.close()  # the rest is unread: this connection is done
                    raise errors.SourceIOError(
                        f"{self.server.who} answered more than the {limit} bytes asked for"
                    )
            except ssl.SSLCertVerificationError as exc:
                self._con.close()
                raise errors.InvalidSourceError(
                    f"{self.server.who} at {self.host}:{self.port} presented a certificate "
                    f"{self.server.trust} does not verify ({exc.verify_message})"
                ) from None
            except (http.client.HTTPException, OSError) as exc:
                self._con.close()  # reconnects on the next request
                if attempt:  # worth another attempt of the copy, which resumes
                    why = f"{self.server.who} at {self.host}:{self.port}: {type(exc).__name__}"
                    raise errors.SourceIOError(why) from None
                continue
            if res.status not in (200, 206):
                # not the body: it may name the ticket
                kind = errors.SourceGoneError if res.status in self.server.gone else None
                said = f"{self.server.who} answered {res.status} {res.reason}"
                raise (kind or errors.SourceIOError)(said)
            return body
        raise AssertionError("unreachable")

    def ranged(self, offset: int, view: memoryview) -> None:
        """``len(view)`` bytes at ``offset`` of the URL's resource, into ``view``."""
        end = offset + len(view) - 1
        data = self.get(self.resource, {"Range": f"bytes={offset}-{end}"}, limit=len(view))
        if len(data) != len(view):
            raise errors.SourceGoneError(
                f"{self.server.who} gave {len(data)} bytes at {offset}, {len(view)} were asked for"
            )
        view[:] = data

    def close(self) -> None:
        self._con.close()


class Reader:
    """A copy worker's reader of one source over its own connection (the engine's
    ``RangeReader``): each ``readinto`` one ranged GET."""

    def __init__(self, con: Connection) -> None:
        self._con = con

    def readinto(self, offset: int, view: memoryview) -> None:
        self._con.ranged(offset, view)

    def close(self) -> None:
        self._con.close()
