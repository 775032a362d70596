"""``ferry up --tls``: a local certificate authority and the nats-server's certificate.

With TLS on, every client (services, console, CLI) verifies the server against this
CA, so a process that answers on the port without the server's key is refused, and
the identities' passwords never cross the wire in clear. The CA and the server's
certificate are made once with ``openssl`` (the ``cryptography`` library is not in
the lock; openssl is a system package) and kept, so a restarted stack keeps them:

* ``ca.pem`` — the CA certificate clients trust (``FERRY_NATS__TLS_CA_FILE``);
* ``ca-key.pem`` — its key, mode 0600, used only to sign the server's certificate;
* ``server.pem`` / ``server-key.pem`` (0600) — the server's certificate, valid for
  ``localhost`` and ``127.0.0.1`` (the stack listens on loopback only).

Keys are P-256 EC keys written by openssl into a 0700 folder with a 0077 umask, so
no key is ever readable by others, not even for a moment; nothing secret is on
openssl's command line (it reads and writes key *files*).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ferry.runtime.stack import StackError

HOSTS: tuple[str, ...] = ("localhost", "127.0.0.1")
_DAYS = "825"  # the longest validity clients accept for a server certificate


@dataclass(frozen=True)
class TlsFiles:
    """Where the CA and the server's certificate and key are."""

    ca: Path
    cert: Path
    key: Path


def files(folder: Path) -> TlsFiles:
    return TlsFiles(folder / "ca.pem", folder / "server.pem", folder / "server-key.pem")


def ensure(folder: Path, hosts: tuple[str, ...] = HOSTS) -> TlsFiles:
    """The CA and server certificate under ``folder``, made the first time."""
    found = files(folder)
    if found.ca.exists() and found.cert.exists() and found.key.exists():
        return found
    openssl = shutil.which("openssl")
    if openssl is None:
        raise StackError("`ferry up --tls` needs openssl (apt-get install openssl)")
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)
    ca_key = folder / "ca-key.pem"
    request = folder / "server.csr"
    extensions = folder / "server.ext"
    names = ",".join(f"IP:{h}" if h[0].isdigit() else f"DNS:{h}" for h in hosts)
    extensions.write_text(
        f"subjectAltName={names}\nbasicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n"
    )
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    steps = [
        [openssl, "req", "-x509", *ec, "-keyout", str(ca_key), "-out", str(found.ca),
         "-days", _DAYS, "-subj", "/CN=Ferry local CA",
         "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign"],
        [openssl, "req", "-new", *ec, "-keyout", str(found.key), "-out", str(request),
         "-subj", f"/CN={hosts[0]}"],
        [openssl, "x509", "-req", "-in", str(request), "-CA", str(found.ca),
         "-CAkey", str(ca_key), "-CAcreateserial", "-out", str(found.cert),
         "-days", _DAYS, "-extfile", str(extensions)],
    ]  # fmt: skip
    old = os.umask(0o077)
    try:
        for argv in steps:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
            if done.returncode != 0:
                raise StackError(f"openssl failed making the stack's TLS files: {done.stderr}")
    finally:
        os.umask(old)
    request.unlink(missing_ok=True)
    for path in (ca_key, found.key):
        path.chmod(0o600)
    found.ca.chmod(0o644)  # public: clients read it
    found.cert.chmod(0o644)
    return found
