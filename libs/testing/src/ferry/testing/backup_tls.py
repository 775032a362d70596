"""TLS for the test libvirtd's backup jobs on TCP: a test CA, the host's certificate where
QEMU looks for it, and client credentials for Ferry's Secret.

libvirt serves a backup job with ``tls='yes'`` from the certificates in qemu.conf's
``backup_tls_x509_cert_dir`` (else ``default_tls_x509_cert_dir``, else
``/etc/pki/qemu``), read by QEMU itself (user ``libvirt-qemu``, group ``kvm``), and with
``backup_tls_x509_verify`` on by default it asks the client for a certificate of the
same CA. The folder is filled once per machine, only when it holds no CA yet or the one
this module put there (``.ferry-test`` marks it); another CA is never replaced: the
caller is skipped (failed in CI) instead. The daemon need not restart: QEMU reads the
folder when a job starts.

Keys are P-256 EC keys written by ``openssl`` into 0700 folders under a 0077 umask; the
host's key is then handed to group ``kvm`` (0640) for QEMU.
"""

from __future__ import annotations

import grp
import os
import re
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

QEMU_CONF = Path("/etc/libvirt/qemu.conf")
DEFAULT_DIR = Path("/etc/pki/qemu")
MARK = ".ferry-test"
STORE = Path("/var/lib/ferry-test/backup-pki")  # the CA and Ferry's client credentials


class PkiUnavailable(RuntimeError):
    """The host's backup certificate folder holds someone else's CA."""


@dataclass(frozen=True)
class ClientPems:
    """What the Provider's Secret carries (``backupCACert`` …)."""

    ca: str
    cert: str
    key: str

    def secret(self) -> dict[str, str]:
        return {"backupCACert": self.ca, "backupClientCert": self.cert, "backupClientKey": self.key}


def server_dir(conf: Path = QEMU_CONF) -> Path:
    """Where QEMU reads a backup job's certificates, as qemu.conf says."""
    text = conf.read_text() if conf.exists() else ""
    for key in ("backup_tls_x509_cert_dir", "default_tls_x509_cert_dir"):
        found = re.search(rf'^\s*{key}\s*=\s*"([^"]+)"', text, re.MULTILINE)
        if found:
            return Path(found.group(1))
    return DEFAULT_DIR


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_ca(folder: Path, name: str = "ferry test backup CA") -> None:
    """``ca-cert.pem`` and ``ca-key.pem`` in ``folder``."""
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", "ca-key.pem", "-out", "ca-cert.pem", "-days", "3650",
             "-subj", f"/CN={name}", cwd=folder)  # fmt: skip


def issue(folder: Path, stem: str, subject: str, ext: str) -> None:
    """``{stem}-cert.pem`` / ``{stem}-key.pem`` signed by the CA in ``folder``."""
    (folder / f"{stem}.ext").write_text(ext)
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", f"{stem}-key.pem", "-out", f"{stem}.csr", "-subj", f"/CN={subject}",
             cwd=folder)  # fmt: skip
    _openssl("x509", "-req", "-in", f"{stem}.csr", "-CA", "ca-cert.pem", "-CAkey", "ca-key.pem",
             "-CAcreateserial", "-out", f"{stem}-cert.pem", "-days", "3650",
             "-extfile", f"{stem}.ext", cwd=folder)  # fmt: skip


SERVER_EXT = (
    "subjectAltName=DNS:localhost,IP:127.0.0.1\n"
    "extendedKeyUsage=serverAuth\nkeyUsage=digitalSignature,keyEncipherment\n"
)
CLIENT_EXT = "extendedKeyUsage=clientAuth\nkeyUsage=digitalSignature,keyEncipherment\n"


def client_pems(folder: Path) -> ClientPems:
    return ClientPems(*((folder / f).read_text() for f in
                        ("ca-cert.pem", "client-cert.pem", "client-key.pem")))  # fmt: skip


def ensure(store: Path = STORE, target: Path | None = None) -> ClientPems:
    """The host's backup certificates in place (made once), and Ferry's client PEMs."""
    target = target or server_dir()
    old = os.umask(0o077)
    try:
        if not (store / "client-key.pem").exists():
            store.parent.mkdir(parents=True, exist_ok=True)
            work = Path(tempfile.mkdtemp(prefix=".made-", dir=store.parent))
            make_ca(work)
            issue(work, "server", "localhost", SERVER_EXT)
            issue(work, "client", "ferry", CLIENT_EXT)
            shutil.rmtree(store, ignore_errors=True)
            work.rename(store)
        ours = (target / MARK).exists()
        if (target / "ca-cert.pem").exists() and not ours:
            raise PkiUnavailable(f"{target} holds another CA; the test does not replace it")
        if not ours or (target / "ca-cert.pem").read_text() != (store / "ca-cert.pem").read_text():
            _install(store, target)
    finally:
        os.umask(old)
    return client_pems(store)


def _install(store: Path, target: Path) -> None:
    old = os.umask(0o022)  # folders QEMU's user passes through
    try:
        target.mkdir(mode=0o755, parents=True, exist_ok=True)
    finally:
        os.umask(old)
    kvm = grp.getgrnam("kvm").gr_gid if _has_group("kvm") else -1
    for name in ("ca-cert.pem", "server-cert.pem", "server-key.pem"):
        shutil.copyfile(store / name, target / name)
        os.chown(target / name, -1, kvm)
        (target / name).chmod(0o640)
    (target / MARK).write_text("installed by ferry.testing.backup_tls\n")


def _has_group(name: str) -> bool:
    try:
        grp.getgrnam(name)
    except KeyError:
        return False
    return True


def foreign_client(folder: Path) -> ClientPems:
    """Client PEMs of another CA, which the host's jobs refuse (and which refuses them)."""
    old = os.umask(0o077)
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        make_ca(folder, "someone else's CA")
        issue(folder, "client", "intruder", CLIENT_EXT)
    finally:
        os.umask(old)
    return client_pems(folder)


def free_ports(count: int, start: int = 20809) -> str:
    """``"LOW-HIGH"``: ``count`` consecutive ports nothing listens on now (for
    ``backupPorts``; a port taken meanwhile is skipped by the job itself)."""
    for first in range(start, start + 1000, count):
        try:
            for port in range(first, first + count):
                with socket.socket() as probe:
                    probe.bind(("127.0.0.1", port))
        except OSError:
            continue
        return f"{first}-{first + count - 1}"
    raise RuntimeError("no free ports")


def provider_settings(workdir: Path, count: int = 4) -> dict[str, str]:
    """A libvirt Provider's settings that read this machine's jobs over TCP with TLS."""
    return {
        "workdir": str(workdir),
        "backupTransport": "tls",
        "backupHost": "localhost",
        "backupPorts": free_ports(count),
    }


def ensure_or_skip() -> ClientPems:
    """For a test: :func:`ensure`, skipped locally (failed in CI) when the host's folder
    holds another CA."""
    import pytest

    try:
        return ensure()
    except PkiUnavailable as exc:
        if os.environ.get("CI"):
            pytest.fail(str(exc))
        pytest.skip(str(exc))
