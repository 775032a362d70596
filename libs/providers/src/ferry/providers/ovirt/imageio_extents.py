"""imageio's extents of a transfer, read over HTTPS: ``GET <transfer url>/extents``.

``context=zero`` lists every range with whether it reads as zeros; ``context=dirty``
(answered only when the ticket's NBD export offers a ``qemu:dirty-bitmap:`` meta
context: an incremental backup's) lists every range with whether it was written since
the backup's ``from_checkpoint_id``. The URL's path is the transfer's ticket, a secret:
no error here names it.
"""

from __future__ import annotations

import http.client
import json
import ssl
import urllib.parse

from ferry.proto.inventory import Extent
from ferry.providers.base import ProviderError

TIMEOUT = 60.0


def fetch(url: str, ca_file: str | None, context: str) -> list[Extent]:
    """The ranges that hold data (``zero``) or changed (``dirty``), merged (blocking)."""
    if context not in ("zero", "dirty"):
        raise ValueError(f"unknown extents context {context!r}")
    parts = urllib.parse.urlsplit(url)
    tls = ssl.create_default_context(cafile=ca_file or None)
    con = http.client.HTTPSConnection(
        parts.hostname or "", parts.port or 443, context=tls, timeout=TIMEOUT
    )
    try:
        con.request("GET", f"{parts.path}/extents?context={context}")
        res = con.getresponse()
        body = res.read()
    except (OSError, http.client.HTTPException) as exc:
        raise ProviderError(
            f"imageio extents ({context}) unreachable: {type(exc).__name__}"
        ) from None
    finally:
        con.close()
    if res.status != 200:
        # not the body: imageio's messages name the ticket
        raise ProviderError(f"imageio refused the {context} extents: {res.status} {res.reason}")
    rows = json.loads(body)
    key, keep = ("dirty", True) if context == "dirty" else ("zero", False)
    found: list[Extent] = []
    for row in rows:
        if bool(row[key]) != keep:
            continue
        start, length = int(row["start"]), int(row["length"])
        if found and found[-1].offset + found[-1].length == start:
            last = found.pop()
            start, length = last.offset, last.length + length
        found.append(Extent(start, length))
    return found
