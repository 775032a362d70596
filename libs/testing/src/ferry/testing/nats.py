"""A private nats-server per test, with the fault controls that bus tests need.

Tests never share the machine's nats-server: each starts its own on a free port
with its own store directory, so runs cannot see each other's streams and a test
may kill -9 its server without harming anyone. The server is configured with
``sync_interval: always`` so JetStream fsyncs every write before acknowledging
it; that is what lets a test prove that an acknowledged event survives kill -9.

The first start asks the kernel for a port (``-1``) and reads the bound port from
the server's log; restarts reuse that port and the store directory, so clients
that reconnect find the same server with the same data.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType

from ferry.runtime.stack import StackError, nats


class NatsServerError(RuntimeError):
    """The nats-server binary is missing, or it did not come up."""


def find_binary() -> str:
    """The pinned nats-server next to the running interpreter, else one on PATH."""
    try:
        return nats.binary()
    except StackError as missing:
        raise NatsServerError(str(missing)) from None


class NatsServer:
    """One nats-server process with JetStream, owned by a test.

    ``start()`` returns once the server accepts connections. ``kill()`` sends
    SIGKILL (a crash), ``stop()`` SIGTERM (a clean shutdown), ``restart()`` starts
    it again on the same port and store. Use it as a context manager so that the
    process and its temporary directory are always removed.
    """

    def __init__(
        self, root: Path | None = None, *, binary: str | None = None, fsync_always: bool = True
    ) -> None:
        self._own_root = root is None
        self.fsync_always = fsync_always
        self.root = Path(tempfile.mkdtemp(prefix="ferry-nats-")) if root is None else root
        self.store_dir = self.root / "store"
        self.config_file = self.root / "nats.conf"
        self.log_file = self.root / "nats.log"
        self.binary = binary or find_binary()
        self.port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    # -- lifecycle -----------------------------------------------------------

    @property
    def url(self) -> str:
        if self.port is None:
            raise NatsServerError("nats-server has not been started")
        return f"nats://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 20.0) -> NatsServer:
        if self.running:
            return self
        self.root.mkdir(parents=True, exist_ok=True)
        self.store_dir.mkdir(parents=True, exist_ok=True)
        self._write_config()
        self._log_offset = nats.log_offset(self.log_file)
        self._proc = subprocess.Popen(
            [self.binary, "-c", str(self.config_file), "-l", str(self.log_file)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self._wait_ready(timeout)
        return self

    def kill(self) -> None:
        """SIGKILL: the server gets no chance to flush or close anything."""
        self._signal(signal.SIGKILL)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL if it has not exited within ``timeout``."""
        if not self.running or self._proc is None:
            return
        self._proc.terminate()
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def restart(self, timeout: float = 20.0) -> NatsServer:
        """Start again on the same port with the same store (after kill or stop)."""
        if self.running:
            self.stop()
        return self.start(timeout)

    def close(self) -> None:
        self.stop()
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def log(self) -> str:
        """The server's log so far (for failure messages)."""
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    def __enter__(self) -> NatsServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- internals -----------------------------------------------------------

    def _write_config(self) -> None:
        self.config_file.write_text(
            nats.config(
                self.store_dir,
                self.port or 0,
                server_name="ferry-test",
                fsync_always=self.fsync_always,
                max_payload="1MB",
            )
        )

    def _signal(self, sig: signal.Signals) -> None:
        if self._proc is None or self._proc.poll() is not None:
            return
        self._proc.send_signal(sig)
        self._proc.wait(10)

    def _wait_ready(self, timeout: float) -> None:
        assert self._proc is not None
        try:
            bound = nats.wait_ready(
                self._proc, self.log_file, self._log_offset, timeout, monitor=False
            )
        except StackError as failed:
            self.kill()
            raise NatsServerError(str(failed)) from None
        self.port = bound.port
