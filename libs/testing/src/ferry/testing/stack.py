"""The whole stack as separate processes, owned by one test: start, kill -9, restart.

End-to-end and fault tests need what ``ferry up`` starts (a nats-server and the
four services, each its own process) plus what ``ferry up`` deliberately does
not offer: several replicas of one service, ``kill -9`` of one process and a
fresh start of it in its place, the nats-server killed and restarted on the
same port and store, and a recorder of the audit stream that subscribes before
anything happens, so a test can check every event afterwards.

Everything lives under one private directory (data dir, store, logs), so the
clean-up can find what the stack started indirectly (QEMU guests, virt-v2v and
its helpers) by that path in their command lines and stop it too.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ferry.testing.nats import NatsServer

SERVICES: dict[str, str] = {
    "migration-controller": "ferry.migration_controller",
    "volume-service": "ferry.volume_service",
    "conversion-service": "ferry.conversion_service",
    "vm-service": "ferry.vm_service",
}


# The cold OVA flow (flow 3) as the audit stream shows it, step by step.
FLOW3 = [
    "Started",
    "StorePowerState",
    "PowerOffSource",
    "CreateDataVolumes",
    "AllocateDisks",
    "ConvertGuest",
    "CreateVM",
    "PowerOn",
    "Completed",
]


class StackError(RuntimeError):
    """The stack did not start, or a wait ran out; the message carries the evidence."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _ready(port: int) -> bool:
    url = f"http://127.0.0.1:{port}/readyz"
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status) == 200
    except (urllib.error.URLError, OSError):
        return False


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no {path})"


@dataclass
class ServiceProcess:
    """One replica of one service: its process, HTTP port and log file."""

    name: str
    index: int
    port: int
    log: Path
    popen: subprocess.Popen[bytes]
    generation: int = 1  # how many times this slot has been started

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    @property
    def label(self) -> str:
        return f"{self.name}[{self.index}]"


@dataclass
class EventRecorder:
    """``ferry events --follow -o json`` in its own process, one JSON object per line.

    Started before a migration, it is the independent subscriber of the audit
    stream: what it wrote is what a consumer of the stream received, in order.
    """

    path: Path
    popen: subprocess.Popen[bytes]

    def events(self) -> list[dict[str, Any]]:
        found = []
        for line in self.path.read_text(errors="replace").splitlines():
            line = line.strip()
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    found.append(json.loads(line))
        return found

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


@dataclass
class LocalStack:
    """A private nats-server and N replicas of each service, as child processes.

    ``replicas`` maps a service name to how many replicas it runs (default 1);
    ``env`` adds settings (``FERRY_…``) for every service.
    """

    root: Path
    replicas: Mapping[str, int] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=dict)
    processes: list[ServiceProcess] = field(default_factory=list)
    recorders: list[EventRecorder] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.root = self.root.resolve()
        self.data_dir = self.root / "data"
        self.logs = self.data_dir / "logs"
        self.nats = NatsServer(self.root / "nats")

    # -- lifecycle -----------------------------------------------------------------

    def start(self, timeout: float = 90.0) -> LocalStack:
        self.logs.mkdir(parents=True, exist_ok=True)
        self.nats.start()
        for name in SERVICES:
            for index in range(self.replicas.get(name, 1)):
                self.processes.append(self._spawn(name, index, _free_port()))
        self.wait_ready(timeout)
        return self

    def service_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                "FERRY_DATA_DIR": str(self.data_dir),
                "FERRY_NATS__URL": self.nats.url,
                "FERRY_HTTP__HOST": "127.0.0.1",
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.update(self.env)
        return env

    def _spawn(self, name: str, index: int, port: int, generation: int = 1) -> ServiceProcess:
        log = self.logs / f"{name}-{index}.log"
        env = self.service_env()
        env["FERRY_HTTP__PORT"] = str(port)
        with log.open("ab") as out:
            popen = subprocess.Popen(
                [sys.executable, "-m", SERVICES[name]],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        return ServiceProcess(name, index, port, log, popen, generation)

    def wait_ready(self, timeout: float = 90.0, procs: list[ServiceProcess] | None = None) -> None:
        waiting = list(procs if procs is not None else self.processes)
        deadline = time.monotonic() + timeout
        while waiting:
            for proc in list(waiting):
                if not proc.alive:
                    raise StackError(f"{proc.label} exited at start:\n{tail(proc.log)}")
                if _ready(proc.port):
                    waiting.remove(proc)
            if waiting and time.monotonic() > deadline:
                logs = "\n".join(f"--- {p.label}\n{tail(p.log, 10)}" for p in waiting)
                raise StackError(f"not ready after {timeout:.0f}s:\n{logs}")
            time.sleep(0.2)

    def close(self) -> None:
        """Stop everything this stack started, including guests and converters it spawned."""
        for recorder in self.recorders:
            recorder.stop()
        for proc in self.processes:
            if proc.alive:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and any(p.alive for p in self.processes):
            time.sleep(0.1)
        for proc in self.processes:
            if proc.alive:
                proc.popen.kill()
            proc.popen.wait()
        for pid in self.strays():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.nats.close()

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- faults ------------------------------------------------------------------

    def service(self, name: str, index: int = 0) -> ServiceProcess:
        for proc in self.processes:
            if proc.name == name and proc.index == index:
                return proc
        raise KeyError(f"{name}[{index}] is not part of this stack")

    def kill(self, name: str, index: int = 0) -> int:
        """``kill -9`` one replica; returns the pid that was killed."""
        proc = self.service(name, index)
        proc.popen.send_signal(signal.SIGKILL)
        proc.popen.wait()
        return proc.pid

    def restart(self, name: str, index: int = 0, timeout: float = 90.0) -> ServiceProcess:
        """A fresh process in the slot (after :meth:`kill`), on a new port; waits for ready."""
        old = self.service(name, index)
        if old.alive:
            raise StackError(f"{old.label} still runs; kill it first")
        fresh = self._spawn(name, index, _free_port(), old.generation + 1)
        self.processes[self.processes.index(old)] = fresh
        self.wait_ready(timeout, [fresh])
        return fresh

    def kill_nats(self) -> None:
        self.nats.kill()

    def restart_nats(self) -> None:
        """Same port, same store: clients reconnect by themselves."""
        self.nats.restart()

    # -- looking ----------------------------------------------------------------

    def cli_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update({"FERRY_NATS__URL": self.nats.url, "FERRY_DATA_DIR": str(self.data_dir)})
        env.setdefault("COLUMNS", "200")
        return env

    def ferry(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """The ``ferry`` command against this stack."""
        return subprocess.run(
            [sys.executable, "-m", "ferry.cli.main", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.cli_env(),
        )

    def record_events(self, name: str = "events") -> EventRecorder:
        path = self.root / f"{name}.jsonl"
        with path.open("ab") as out:
            popen = subprocess.Popen(
                [sys.executable, "-m", "ferry.cli.main", "events", "--follow", "-o", "json"],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.DEVNULL,
                env=self.cli_env(),
                start_new_session=True,
            )
        recorder = EventRecorder(path, popen)
        self.recorders.append(recorder)
        return recorder

    def stored_events(self, migration: str | None = None) -> list[dict[str, Any]]:
        """Every event in the stream now (one pass, no follow)."""
        args = ["events", "-o", "json"] + (["--migration", migration] if migration else [])
        result = self.ferry(*args)
        if result.returncode != 0:
            raise StackError(f"ferry events failed: {result.stderr}")
        return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]

    def wait_for(
        self,
        what: str,
        found: Callable[[list[dict[str, Any]]], Any],
        recorder: EventRecorder,
        timeout: float,
    ) -> Any:
        """Poll the recorder until ``found(events)`` is truthy; its value is returned."""
        deadline = time.monotonic() + timeout
        while True:
            value = found(recorder.events())
            if value:
                return value
            if time.monotonic() > deadline:
                raise StackError(f"timed out after {timeout:.0f}s waiting for {what}")
            time.sleep(0.5)

    def log_text(self) -> str:
        """Every service log and the nats-server log, concatenated."""
        parts = [p.read_text(errors="replace") for p in sorted(self.logs.rglob("*")) if p.is_file()]
        with contextlib.suppress(OSError):
            parts.append(self.nats.log())
        return "\n".join(parts)

    def strays(self) -> list[int]:
        """Processes whose command line names this stack's directory (QEMU, virt-v2v, …)."""
        mine = str(self.root)
        ours = {p.pid for p in self.processes if p.alive} | {os.getpid()}
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) in ours:
                continue
            with contextlib.suppress(OSError):
                cmdline = (
                    (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                )
                if mine in cmdline and _state(entry) not in ("Z", "X"):
                    found.append(int(entry.name))
        return found


def _state(entry: Path) -> str:
    stat = (entry / "stat").read_text()
    return stat[stat.rindex(")") + 2]


def processes_named(*names: str) -> list[tuple[int, str]]:
    """(pid, cmdline) of live processes whose argv[0] ends with one of ``names``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            exe = Path(argv[0].decode(errors="replace")).name
            if exe in names and _state(entry) not in ("Z", "X"):
                found.append((int(entry.name), b" ".join(argv).decode(errors="replace")))
    return found


@contextlib.contextmanager
def local_stack(
    root: Path, replicas: Mapping[str, int] | None = None, env: Mapping[str, str] | None = None
) -> Iterator[LocalStack]:
    stack = LocalStack(root, dict(replicas or {}), dict(env or {}))
    try:
        yield stack.start()
    finally:
        stack.close()


# -- a migration of OVA copies onto the local platform ---------------------------------


def guest_ova(repo: Path) -> dict[str, Any]:
    """The test guest (tests/guest/build_guest.py): built once, then from the cache."""
    done = subprocess.run(
        [sys.executable, str(repo / "tests/guest/build_guest.py")],
        stdout=subprocess.PIPE,
        text=True,
        check=True,
        timeout=1800,
    )
    guest: dict[str, Any] = json.loads(done.stdout)
    return guest


def place_ovas(stack: LocalStack, ova: Path, names: list[str]) -> Path:
    """One OVA per VM in ``<data>/ova``; the OVA provider names a VM after its file.

    Hard links where possible (the provider refuses symlinks), copies otherwise.
    """
    folder = stack.data_dir / "ova"
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        target = folder / f"{name}.ova"
        try:
            os.link(ova, target)
        except OSError:
            import shutil

            shutil.copy2(ova, target)
    return folder


def plant_secret(stack: LocalStack, name: str, values: Mapping[str, str]) -> None:
    """A Secret as the services read it: ``<data>/secrets/default/<name>/<key>``."""
    folder = stack.data_dir / "secrets" / "default" / name
    folder.mkdir(parents=True, exist_ok=True)
    for key, value in values.items():
        (folder / key).write_text(value)


def ova_objects(
    ova_dir: Path,
    vm_ids: list[str],
    *,
    plan: str = "e2e",
    max_in_flight: int = 20,
    secret: str | None = None,
    power: str = "on",
) -> str:
    """Providers, maps and a Plan (YAML) for the VMs ``<name>/ferry-test-guest``."""
    secret_ref = f", secret: {{name: {secret}}}" if secret else ""
    vms = "\n".join(
        f"    - id: {vm_id}\n      targetName: {vm_id.split('/')[0]}" for vm_id in vm_ids
    )
    return f"""\
apiVersion: ferry.dev/v1alpha1
kind: Provider
metadata: {{name: ova-source}}
spec: {{type: ova, url: "{ova_dir}"{secret_ref}}}
---
apiVersion: ferry.dev/v1alpha1
kind: Provider
metadata: {{name: local}}
spec: {{type: kubevirt}}
---
apiVersion: ferry.dev/v1alpha1
kind: NetworkMap
metadata: {{name: nets}}
spec:
  provider: {{source: {{name: ova-source}}, destination: {{name: local}}}}
  map: [{{source: {{name: VM Network}}, destination: {{type: pod}}}}]
---
apiVersion: ferry.dev/v1alpha1
kind: StorageMap
metadata: {{name: disks}}
spec:
  provider: {{source: {{name: ova-source}}, destination: {{name: local}}}}
  map: [{{source: {{name: ova}}, destination: {{storageClass: standard}}}}]
---
apiVersion: ferry.dev/v1alpha1
kind: Plan
metadata: {{name: {plan}}}
spec:
  provider: {{source: {{name: ova-source}}, destination: {{name: local}}}}
  map: {{network: {{name: nets}}, storage: {{name: disks}}}}
  targetNamespace: e2e
  targetPowerState: "{power}"
  maxInFlight: {max_in_flight}
  vms:
{vms}
"""


def apply_yaml(stack: LocalStack, text: str, name: str = "objects.yaml") -> None:
    path = stack.root / name
    path.write_text(text)
    result = stack.ferry("apply", "-f", str(path))
    if result.returncode != 0:
        raise StackError(f"ferry apply failed: {result.stdout}{result.stderr}")


def start_migration(stack: LocalStack, plan: str, name: str) -> None:
    result = stack.ferry("migrate", plan, "--name", name)
    if result.returncode != 0:
        raise StackError(f"ferry migrate failed: {result.stdout}{result.stderr}")


def of_type(events: list[dict[str, Any]], kind: str, vm: str | None = None) -> list[dict[str, Any]]:
    """The events' data of one type (``vm.vm_running``, with or without ``.v1``)."""
    want = kind if kind.endswith(".v1") else kind + ".v1"
    return [
        e["data"] for e in events if e["type"] == want and (vm is None or e["data"].get("vm") == vm)
    ]


def finished(events: list[dict[str, Any]], migration: str) -> dict[str, Any] | None:
    done = [d for d in of_type(events, "migration.completed") if d["migration"] == migration]
    return done[-1] if done else None
