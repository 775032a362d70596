"""How Ferry reaches a backup job's NBD exports: on this host, or on a remote libvirt host.

Two transports, chosen per provider (:func:`transport_of`):

``unix`` (the default for a local URI such as ``qemu:///system``)
    QEMU serves the job on a Unix socket in Ferry's own job directory; the copy
    engine and the readers connect to it directly.

``tls`` (the default for a remote URI such as ``qemu+ssh://host/system``)
    QEMU serves the job on the libvirt host over TCP with TLS: at ``backupHost``
    (default: the URI's host name) on a port from ``backupPorts`` (default
    10809-10872; libvirt needs a port named, and one in use by another job is skipped).
    The host's certificate comes from its ``backup_tls_x509_cert_dir`` in qemu.conf
    (default ``/etc/pki/qemu``), whose CA also checks Ferry's client certificate
    (``backup_tls_x509_verify``, on by default). Ferry's side comes from the
    Provider's Secret: ``backupCACert`` (the CA that signed the host's certificate),
    ``backupClientCert`` and ``backupClientKey`` (PEM), written into a private folder
    (0700, files 0600) that ``qemu-img`` and ``qemu-nbd`` load through a
    ``tls-creds-x509`` object naming the folder, so no key is on a command line.
    Each disk is then read through a local read-only ``qemu-nbd`` that is the TLS
    client (:func:`relay`): the copy engine and the readers keep speaking plain NBD
    to a private Unix socket. Dirty blocks are mapped against the host directly
    (:func:`map_node`), because a relay does not pass QEMU's ``qemu:dirty-bitmap``
    context on. The scratch files live next to each disk image on the host, where
    libvirt creates them and removes them when the job ends.

There is no plain-TCP transport: guest bytes never cross a network in clear.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from xml.sax.saxutils import quoteattr

from ferry.proto.inventory import Extent
from ferry.providers.base import ProviderError, QemuSource
from ferry.providers.nbd import NbdServer

TLS_OBJECT_ID = "ferry-backup-tls"
DEFAULT_PORTS = range(10809, 10873)
EXPORT_PREFIX = "ferry-"  # export names of Ferry's jobs on TCP (a killed run's is found so)
SECRET_KEYS = ("backupCACert", "backupClientCert", "backupClientKey")
_FILES = {"backupCACert": "ca-cert.pem", "backupClientCert": "client-cert.pem",
          "backupClientKey": "client-key.pem"}  # fmt: skip


class TransportError(ProviderError):
    """The provider's backup transport settings or credentials are wrong."""


@dataclass(frozen=True)
class Tls:
    """Where a remote host's backup jobs listen, and Ferry's TLS credentials (PEM)."""

    host: str
    ports: range
    ca: str
    cert: str
    key: str

    def __repr__(self) -> str:  # never the key
        return f"Tls(host={self.host!r}, ports={self.ports.start}-{self.ports.stop - 1})"


def transport_of(uri: str, settings: Mapping[str, Any]) -> str:
    """``unix`` or ``tls``: the setting ``backupTransport``, else by the URI's host."""
    chosen = str(settings.get("backupTransport") or "")
    if chosen and chosen not in ("unix", "tls"):
        raise TransportError(
            f"backupTransport must be 'unix' or 'tls', not {chosen!r} "
            "(a remote host's disks are read over NBD with TLS only)"
        )
    return chosen or ("tls" if urlsplit(uri).hostname else "unix")


def ports_of(value: object) -> range:
    """``"10809-10872"`` or ``"10809"`` as a range of TCP ports."""
    text = str(value).strip()
    try:
        low, _, high = text.partition("-")
        ports = range(int(low), int(high or low) + 1)
    except ValueError:
        raise TransportError(f"backupPorts must be PORT or LOW-HIGH, not {text!r}") from None
    if not ports or ports.start < 1 or ports.stop > 65536:
        raise TransportError(f"backupPorts {text!r} is not a range of TCP ports (1-65535)")
    return ports


def tls_of(uri: str, settings: Mapping[str, Any], secret: Mapping[str, Any]) -> Tls | None:
    """The TLS transport's settings, or None when its credentials are not in the Secret
    (the preflight then says which keys are missing: :func:`missing_keys`)."""
    if missing_keys(secret):
        return None
    host = str(settings.get("backupHost") or urlsplit(uri).hostname or "")
    if not host:
        raise TransportError(
            "backupTransport tls needs backupHost: the name the libvirt host's backup "
            "jobs listen on and Ferry connects to"
        )
    ports = ports_of(settings["backupPorts"]) if settings.get("backupPorts") else DEFAULT_PORTS
    return Tls(host, ports, *(str(secret[k]) for k in SECRET_KEYS))


def missing_keys(secret: Mapping[str, Any]) -> list[str]:
    return [k for k in SECRET_KEYS if not str(secret.get(k) or "").strip()]


CREDENTIALS_PREFIX = "ferry-tls-"


def write_credentials(workdir: Path, ca: str, cert: str, key: str) -> Path:
    """A private folder with qemu's client layout (``ca-cert.pem``, ``client-cert.pem``,
    ``client-key.pem``), each file 0600 from the moment it exists, named for this
    process; those of processes that died without removing theirs (a kill -9) go first."""
    sweep_credentials(workdir)
    prefix = f"{CREDENTIALS_PREFIX}{os.getpid()}-"
    folder = Path(tempfile.mkdtemp(prefix=prefix, dir=workdir))  # 0700
    values = {"backupCACert": ca, "backupClientCert": cert, "backupClientKey": key}
    for key, name in _FILES.items():
        fd = os.open(folder / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(values[key])
    return folder


def sweep_credentials(workdir: Path) -> list[Path]:
    """Remove the credential folders of processes that no longer run; the removed ones."""
    removed = []
    for folder in workdir.glob(f"{CREDENTIALS_PREFIX}*-*"):
        pid = folder.name[len(CREDENTIALS_PREFIX) :].split("-", 1)[0]
        if not pid.isdigit() or _alive(int(pid)):
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process: alive
    return True


def tls_object(credentials: Path) -> str:
    """The ``--object`` that loads the client credentials (a folder, never a key)."""
    return f"tls-creds-x509,id={TLS_OBJECT_ID},dir={credentials},endpoint=client"


def server_xml(tls: Tls, port: int) -> str:
    return f"<server transport='tcp' tls='yes' name={quoteattr(tls.host)} port='{port}'/>"


def export_name(target: str) -> str:
    return f"{EXPORT_PREFIX}{target}"


def map_node(host: str, port: int, export: str) -> dict[str, Any]:
    """The qemu ``nbd`` node of one export on the host, over TLS."""
    return {
        "driver": "nbd",
        "server": {"type": "inet", "host": host, "port": str(port)},
        "export": export,
        "tls-creds": TLS_OBJECT_ID,
    }


async def relay(host: str, port: int, export: str, credentials: Path) -> NbdServer:
    """A local read-only ``qemu-nbd`` serving one remote export over a private socket."""
    node = {"driver": "raw", "file": map_node(host, port, export)}
    server = NbdServer(QemuSource(format="raw", options=node), objects=[tls_object(credentials)])
    await server.start()
    await server.probe()  # a host that refuses Ferry's certificate says so here
    return server


async def qemu_img_map(filename: str, objects: Iterable[str] = ()) -> list[dict[str, object]]:
    args = [a for obj in objects for a in ("--object", obj)]
    proc = await asyncio.create_subprocess_exec(
        "qemu-img",
        "map",
        "--output=json",
        *args,
        filename,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise ProviderError(
            f"qemu-img map of the backup export failed: {err.decode(errors='replace')[-300:]}"
        )
    rows: list[dict[str, object]] = json.loads(out)
    return rows


def _int(value: object) -> int:
    if not isinstance(value, int):
        raise ProviderError(f"qemu-img map gave {value!r} where a number belongs")
    return value


def extents(rows: Iterable[dict[str, object]], *, dirty: bool) -> list[Extent]:
    """The ranges to copy from ``qemu-img map`` rows: through ``x-dirty-bitmap`` a dirty
    block reads as a hole (``"data": false``); without it, ``data`` is allocation and
    ``zero`` a range that reads as zeros anyway."""
    if dirty:
        picked = (r for r in rows if not r.get("data"))
    else:
        picked = (r for r in rows if r.get("data") and not r.get("zero"))
    return merged(Extent(_int(r["start"]), _int(r["length"])) for r in picked)


def merged(found: Iterable[Extent]) -> list[Extent]:
    result: list[Extent] = []
    for extent in found:
        if result and result[-1].offset + result[-1].length == extent.offset:
            last = result.pop()
            extent = Extent(last.offset, last.length + extent.length)
        result.append(extent)
    return result
