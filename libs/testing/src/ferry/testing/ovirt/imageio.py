"""The real ovirt-imageio daemon, started privately for a test.

The daemon is the package an oVirt host runs (``ovirt-imageio`` from the Python
package registry, installed in the virtualenv). Each :class:`Imageio` gets its own
configuration directory: its own port on 127.0.0.1, TLS with a certificate signed by a
test CA made here with ``openssl``, its control service on a Unix socket in its own
run directory, no local (abstract-socket) service, no privilege drop, no systemd, and
its log on stderr (kept in ``daemon.log``). Tickets are added and removed through the
control socket with the package's own admin client, exactly as vdsm does on a host.

Disks are served the way vdsm serves them for a download: ``qemu-nbd`` over the image
(read-only, the format named) on a Unix socket, and a ticket whose url is that socket
(the daemon's ``nbd`` backend, which reports real extents).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ovirt_imageio import admin


class ImageioUnavailable(RuntimeError):
    """The daemon is not installed or did not come up."""


def make_ca(root: Path, host: str = "127.0.0.1") -> tuple[Path, Path, Path]:
    """A test CA and a server certificate for ``host``: (ca.pem, server.pem, server.key)."""
    root.mkdir(parents=True, exist_ok=True)
    ca_key, ca, key, csr, cert = (
        root / n for n in ("ca.key", "ca.pem", "server.key", "server.csr", "server.pem")
    )
    ext = root / "server.ext"
    ext.write_text(f"subjectAltName=IP:{host}\nextendedKeyUsage=serverAuth\n")

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key), "-out",
        str(ca), "-days", "2", "-subj", "/CN=ferry-test-ca")  # fmt: skip
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr),
        "-subj", f"/CN={host}")  # fmt: skip
    run("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
        "-CAcreateserial", "-out", str(cert), "-days", "2", "-extfile", str(ext))  # fmt: skip
    for path in (ca_key, key):
        path.chmod(0o600)
    return ca, cert, key


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Export:
    """A disk served by qemu-nbd for one ticket."""

    ticket: str
    socket: Path
    process: subprocess.Popen[bytes]


@dataclass
class Imageio:
    """One private imageio daemon; use as a context manager (or start/stop)."""

    root: Path
    host: str = "127.0.0.1"
    port: int = 0
    process: subprocess.Popen[bytes] | None = None
    exports: dict[str, Export] = field(default_factory=dict)
    tickets: set[str] = field(default_factory=set)  # added here and not removed yet

    @property
    def conf_dir(self) -> Path:
        return self.root / "conf"

    @property
    def run_dir(self) -> Path:
        return self.root / "run"

    @property
    def control_socket(self) -> Path:
        return self.run_dir / "sock"

    @property
    def ca_file(self) -> Path:
        return self.root / "pki" / "ca.pem"

    def url(self, ticket: str) -> str:
        return f"https://{self.host}:{self.port}/images/{ticket}"

    def start(self, timeout: float = 30.0) -> None:
        ca, cert, key = make_ca(self.root / "pki", self.host)
        self.port = self.port or free_port()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.conf_dir / "conf.d").mkdir(parents=True, exist_ok=True)
        (self.conf_dir / "conf.d" / "50-ferry-test.conf").write_text(
            "[daemon]\n"
            f"run_dir = {self.run_dir}\n"
            "drop_privileges = false\n"
            "systemd_enable = false\n"
            "poll_interval = 0.2\n"
            "[tls]\n"
            "enable = true\n"
            f"key_file = {key}\n"
            f"cert_file = {cert}\n"
            f"ca_file = {ca}\n"
            "[remote]\n"
            f"host = {self.host}\n"
            f"port = {self.port}\n"
            "[local]\n"
            "enable = false\n"
            "[control]\n"
            "transport = unix\n"
            f"socket = {self.control_socket}\n"
            "remove_timeout = 10\n"
            f"[profile]\nfilename = {self.run_dir / 'profile'}\n"
            "[handlers]\nkeys = stderr\n"
            "[logger_root]\nlevel = INFO\nhandlers = stderr\npropagate = 0\n"
        )
        log = (self.root / "daemon.log").open("ab")
        binary = Path(sys.executable).parent / "ovirt-imageio"
        if not binary.exists():
            raise ImageioUnavailable("ovirt-imageio is not installed (make setup)")
        self.process = subprocess.Popen(
            [str(binary), "--conf-dir", str(self.conf_dir)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ImageioUnavailable(f"ovirt-imageio exited: {self.log_tail()}")
            if self.control_socket.exists() and _listens(self.host, self.port):
                return
            time.sleep(0.1)
        self.stop()
        raise ImageioUnavailable(f"ovirt-imageio did not come up: {self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join((self.root / "daemon.log").read_text().splitlines()[-lines:])
        return ""

    def _admin(self) -> admin.Client:
        return admin.Client(admin.load_config(str(self.conf_dir)))

    def add_ticket(self, ticket: dict[str, Any]) -> None:
        with self._admin() as client:
            client.add_ticket(ticket)

    def get_ticket(self, ticket_id: str) -> dict[str, Any] | None:
        """The daemon's view of a ticket (transferred bytes, connections); None when gone."""
        with self._admin() as client:
            try:
                return dict(client.get_ticket(ticket_id))
            except admin.ServerError as exc:
                if exc.code == 404:
                    return None
                raise

    def del_ticket(self, ticket_id: str) -> None:
        with self._admin() as client:
            client.del_ticket(ticket_id)  # an unknown ticket is no error (204)

    def serve(self, image: Path, fmt: str, size: int, *, ops: tuple[str, ...] = ("read",),
              transfer_id: str = "", timeout: int = 300) -> str:  # fmt: skip
        """Serve ``image`` under a new ticket as vdsm does; the ticket id (a secret)."""
        ticket = str(uuid.uuid4())
        sock = self.run_dir / f"nbd-{ticket[:8]}.sock"
        readonly = ["--read-only"] if ops == ("read",) else []
        proc = subprocess.Popen(
            ["qemu-nbd", "--persistent", "--shared=8", "--cache=none", "--aio=threads",
             "--allocation-depth", "-f", fmt, "-k", str(sock), *readonly, str(image)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while not sock.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise ImageioUnavailable(f"qemu-nbd did not start on {image}")
            time.sleep(0.05)
        self.exports[ticket] = Export(ticket, sock, proc)
        self.add_nbd_ticket(
            f"nbd:unix:{sock}", size, ops=ops, transfer_id=transfer_id, timeout=timeout,
            ticket=ticket,
        )  # fmt: skip
        return ticket

    def add_nbd_ticket(self, url: str, size: int, *, dirty: bool = False,
                       ops: tuple[str, ...] = ("read",), transfer_id: str = "",
                       timeout: int = 300, ticket: str = "") -> str:  # fmt: skip
        """A ticket for an NBD export someone else serves (a backup's, as vdsm adds
        for a backup's image transfer; ``dirty`` when it exports a dirty bitmap)."""
        ticket = ticket or str(uuid.uuid4())
        self.add_ticket(
            {
                "uuid": ticket,
                "size": size,
                "url": url,
                "timeout": timeout,
                "inactivity_timeout": timeout,
                "ops": list(ops),
                "sparse": True,
                "dirty": dirty,
                "transfer_id": transfer_id or ticket,
            }
        )
        self.tickets.add(ticket)
        return ticket

    def unserve(self, ticket: str) -> None:
        """Remove the ticket, then stop its qemu-nbd (as vdsm does on finalize/cancel)."""
        with contextlib.suppress(admin.Error):
            self.del_ticket(ticket)
            self.tickets.discard(ticket)
        export = self.exports.pop(ticket, None)
        if export is not None:
            export.process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                export.process.wait(10)
            if export.process.poll() is None:
                export.process.kill()
                export.process.wait()
            with contextlib.suppress(FileNotFoundError):
                export.socket.unlink()

    def stop(self) -> None:
        for ticket in list(self.exports):
            self.unserve(ticket)
        proc, self.process = self.process, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def __enter__(self) -> Imageio:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _listens(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def ensure_environment() -> None:
    """Fail early with a clear reason when qemu-nbd or openssl is missing."""
    for tool in ("qemu-nbd", "openssl"):
        if not any(
            os.access(os.path.join(d, tool), os.X_OK) for d in os.environ["PATH"].split(":")
        ):
            raise ImageioUnavailable(f"{tool} is not installed (make system-deps)")
