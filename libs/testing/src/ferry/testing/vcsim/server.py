"""Build (once, cached) and run the vSphere API simulator for a test.

The build is offline by construction (``GO111MODULE=off GOPROXY=off``, GOPATH the
Debian gocode tree), so a clean clone needs only ``make system-deps``. The binary is
cached under ``$XDG_CACHE_HOME/ferry/vcsim/<digest>``: the digest covers the
launcher, the overlay files, the Go version and the packaged govmomi version, so a
changed input builds anew and parallel test workers share one build (a file lock).

Credentials reach the simulator through its environment, never its argv.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

GOCODE = Path("/usr/share/gocode")
SIMULATOR_PACKAGE = GOCODE / "src/github.com/vmware/govmomi/simulator"
SOURCES = Path(__file__).parent / "go"
START_TIMEOUT = 30.0


class VcsimError(RuntimeError):
    """The simulator could not be built or did not come up."""


@dataclass(frozen=True)
class Endpoint:
    """Where a running simulator serves, and how to trust it."""

    url: str  # https://127.0.0.1:<port>/sdk
    thumbprint: str  # SHA-1 of the certificate, colon-separated hex
    cert_file: str  # the certificate in PEM, usable as a CA bundle
    username: str
    password: str

    @property
    def host(self) -> str:
        return self.url.split("//", 1)[1].split("/", 1)[0]


def _overlay_files() -> dict[str, Path]:
    """Each ``go/simulator/*.go`` file, placed into the packaged simulator package."""
    folder = SOURCES / "simulator"
    if not folder.is_dir():
        return {}
    return {
        str(SIMULATOR_PACKAGE / f"ferry_{path.name}"): path for path in sorted(folder.glob("*.go"))
    }


def _digest() -> str:
    h = hashlib.sha256()
    for path in sorted(SOURCES.rglob("*.go")):
        h.update(path.relative_to(SOURCES).as_posix().encode() + b"\0" + path.read_bytes())
    go = shutil.which("go")
    if go is None or not SIMULATOR_PACKAGE.is_dir():
        raise VcsimError(
            "vcsim needs the Debian packages golang-go and golang-github-vmware-govmomi-dev "
            "(make system-deps)"
        )
    version = subprocess.run([go, "version"], capture_output=True, text=True, check=True).stdout
    h.update(version.encode())
    h.update((SIMULATOR_PACKAGE / "simulator.go").read_bytes())
    return h.hexdigest()[:16]


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ferry" / "vcsim"


def binary() -> Path:
    """The launcher built from the packaged sources; built only when an input changed."""
    digest = _digest()
    target = cache_dir() / digest / "vcsim"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not target.exists():
            _build(target)
    return target


def _build(target: Path) -> None:
    work = Path(tempfile.mkdtemp(prefix="vcsim-build-", dir=target.parent))
    try:
        overlay = work / "overlay.json"
        replace = {name: str(path) for name, path in _overlay_files().items()}
        overlay.write_text(json.dumps({"Replace": replace}))
        env = {
            **os.environ,
            "GO111MODULE": "off",
            "GOPROXY": "off",
            "GOFLAGS": "",
            "GOPATH": str(GOCODE),
            "GOCACHE": str(target.parent.parent / "gocache"),
        }
        out = work / "vcsim"
        result = subprocess.run(
            ["go", "build", f"-overlay={overlay}", "-o", str(out), "."],
            cwd=SOURCES,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if result.returncode != 0:
            raise VcsimError(f"building vcsim failed:\n{result.stderr[-3000:]}")
        out.rename(target)
    finally:
        shutil.rmtree(work, ignore_errors=True)


class Vcsim:
    """One simulator process with its own datastore folders, removed on close."""

    def __init__(
        self,
        username: str = "ferry@vsphere.local",
        password: str = "",
        idle_timeout: float = 0,
        nfc_lease_timeout: int = 300,
        no_flat_reads: bool = False,
    ) -> None:
        """``idle_timeout`` (seconds, 0 for never) ends a session that made no API call
        for that long, as vCenter's idle timeout does; it ends one to two timeouts after
        its last call (the simulator checks once per timeout). ``nfc_lease_timeout``
        (whole seconds): how long an ExportVm lease lives without a progress call.
        ``no_flat_reads``: the datastore path refuses flat extents (404), as vSAN does."""
        if idle_timeout < 0:
            raise ValueError("idle_timeout must not be negative")
        if nfc_lease_timeout < 1:
            raise ValueError("nfc_lease_timeout must be at least one second")
        self.nfc_lease_timeout = nfc_lease_timeout
        self.no_flat_reads = no_flat_reads
        self.username = username
        self.password = password or hashlib.sha256(os.urandom(16)).hexdigest()[:20]
        self.idle_timeout = idle_timeout
        self._proc: subprocess.Popen[str] | None = None
        self.endpoint: Endpoint | None = None

    def start(self) -> Endpoint:
        exe = binary()
        env = {**os.environ, "VCSIM_USERNAME": self.username, "VCSIM_PASSWORD": self.password}
        self._proc = subprocess.Popen(
            [
                str(exe),
                "-l",
                "127.0.0.1:0",
                f"-idle-timeout={self.idle_timeout:g}s",
                f"-nfc-lease-timeout={self.nfc_lease_timeout}s",
                *(["-no-flat-reads"] if self.no_flat_reads else []),
            ],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
        )
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if not line:
            self.close()
            raise VcsimError("vcsim exited before it served")
        ready = json.loads(line)
        self.endpoint = Endpoint(
            url=ready["url"],
            thumbprint=ready["thumbprint"],
            cert_file=ready["cert_file"],
            username=self.username,
            password=self.password,
        )
        return self.endpoint

    def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        # SIGTERM lets the launcher remove its datastore folders and certificate file.
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def __enter__(self) -> Vcsim:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
