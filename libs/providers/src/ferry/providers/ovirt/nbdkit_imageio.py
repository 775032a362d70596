"""An nbdkit Python plugin serving one imageio transfer URL as a read-only NBD export.

Run by nbdkit's Python plugin (the system's ``python3``, standard library only), never
imported by Ferry. ``config=FILE`` names a 0600 JSON file holding the transfer ``url``
(its ticket is a secret: never on a command line) and the ``ca`` file that signs the
daemon's certificate. Reads are ranged GETs on the URL; extents come from the daemon's
``/extents?context=zero``, so a reader skips what the source says is zero.
"""

import builtins
import http.client
import json
import ssl
import threading
import urllib.parse
from typing import Any

import nbdkit  # type: ignore[import-not-found]

API_VERSION = 2

_cfg: dict[str, Any] = {}
_local = threading.local()  # one HTTPS connection per nbdkit thread


def config(key: str, value: str) -> None:
    if key != "config":
        raise RuntimeError(f"unknown parameter {key}")
    with builtins.open(value) as f:
        _cfg.update(json.load(f))


def config_complete() -> None:
    if "url" not in _cfg:
        raise RuntimeError("config=FILE with a transfer url is required")
    parts = urllib.parse.urlsplit(_cfg["url"])
    _cfg["host"], _cfg["port"], _cfg["path"] = parts.hostname, parts.port or 443, parts.path


def thread_model() -> int:
    return int(nbdkit.THREAD_MODEL_PARALLEL)


def _con() -> http.client.HTTPSConnection:
    con: http.client.HTTPSConnection | None = getattr(_local, "con", None)
    if con is None:
        ctx = ssl.create_default_context(cafile=_cfg.get("ca") or None)
        con = http.client.HTTPSConnection(_cfg["host"], _cfg["port"], context=ctx, timeout=60)
        _local.con = con
    return con


def _get(path: str, headers: dict[str, str] | None = None) -> bytes:
    for attempt in range(2):
        con = _con()
        try:
            con.request("GET", path, headers=headers or {})
            res = con.getresponse()
            body = res.read()
        except (http.client.HTTPException, OSError):
            con.close()
            _local.con = None
            if attempt:
                raise
            continue
        if res.status not in (200, 206):
            # not the body: imageio's messages name the ticket, which is a secret
            raise RuntimeError(f"imageio answered {res.status} {res.reason}")
        return body
    raise RuntimeError("unreachable")


def open(readonly: bool) -> dict[str, Any]:
    return {}


def _extents() -> list[dict[str, Any]]:
    """The source's extents: fetched once (the VM is down, so they do not change)."""
    if "extents" not in _cfg:
        _cfg["extents"] = json.loads(_get(_cfg["path"] + "/extents?context=zero"))
    found: list[dict[str, Any]] = _cfg["extents"]
    return found


def get_size(h: object) -> int:
    last = _extents()[-1]
    return int(last["start"] + last["length"])


def can_write(h: object) -> bool:
    return False


def can_extents(h: object) -> bool:
    return True


def can_multi_conn(h: object) -> bool:
    return True


def pread(h: object, buf: bytearray, offset: int, flags: int) -> None:
    end = offset + len(buf) - 1
    buf[:] = _get(_cfg["path"], {"Range": f"bytes={offset}-{end}"})


def extents(h: object, count: int, offset: int, flags: int) -> list[tuple[int, int, int]]:
    found = []
    for e in _extents():
        start, length = e["start"], e["length"]
        if start + length <= offset or start >= offset + count:
            continue
        kind = (nbdkit.EXTENT_HOLE | nbdkit.EXTENT_ZERO) if e["zero"] else 0
        found.append((start, length, kind))
    return found
