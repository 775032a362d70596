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
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ferry.runtime.stack import StackError, ports, processes, readiness, services
from ferry.testing.nats import NatsServer


@dataclass
class ServiceProcess:
    """One replica of one service: its process, HTTP port and log file."""

    name: str
    index: int
    process: processes.Process
    popen: subprocess.Popen[bytes]
    generation: int = 1  # how many times this slot has been started

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def port(self) -> int:
        return self.process.port

    @property
    def log(self) -> Path:
        return Path(self.process.log)

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
    ``env`` adds settings (``FERRY_…``) for every service; ``own_env``, given a
    process's service name and HTTP port, adds settings of that process only (the
    address its pods ask it at, say).
    """

    root: Path
    replicas: Mapping[str, int] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=dict)
    own_env: Callable[[str, int], Mapping[str, str]] | None = None
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
        for spec in services.SERVICES:
            for index in range(self.replicas.get(spec.name, 1)):
                self.processes.append(self._spawn(spec, index))
        self.wait_ready(timeout)
        return self

    def _spawn(self, spec: services.ServiceSpec, index: int, generation: int = 1) -> ServiceProcess:
        port = ports.free_port()
        log = self.logs / f"{spec.name}-{index}.log"
        settings = dict(self.env)
        if self.own_env is not None:
            settings.update(self.own_env(spec.name, port))
        env = services.environment(self.data_dir, self.nats.url, port, settings)
        label = f"{spec.name}[{index}]"
        process, popen = processes.spawn(label, spec.argv(), log, env, port)
        return ServiceProcess(spec.name, index, process, popen, generation)

    def wait_ready(self, timeout: float = 90.0, procs: list[ServiceProcess] | None = None) -> None:
        waiting = procs if procs is not None else self.processes
        readiness.wait_ready([p.process for p in waiting], timeout)

    def close(self) -> None:
        """Stop everything this stack started, including guests and converters it spawned."""
        for recorder in self.recorders:
            recorder.stop()
        processes.stop([p.process for p in self.processes], 20)
        for proc in self.processes:
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
        fresh = self._spawn(services.named(name), index, old.generation + 1)
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
                raise StackError(
                    f"timed out after {timeout:.0f}s waiting for {what}\n{self.diagnosis(recorder)}"
                )
            time.sleep(0.5)

    def diagnosis(self, recorder: EventRecorder) -> str:
        """What a timed-out wait saw: the recorder against the stream, the last events,
        and the services' last warnings and errors (CI keeps no stack directory)."""
        seen = recorder.events()
        lines = [f"recorder: {len(seen)} events, exit code {recorder.popen.poll()}"]
        try:
            stored = self.stored_events()
            lines.append(f"stream: {len(stored)} events; last: ")
            lines[-1] += ", ".join(f"{e['type']} {e.get('data', {}).get('step', '')}".strip()
                                   for e in stored[-8:])  # fmt: skip
        except (StackError, subprocess.TimeoutExpired) as err:
            lines.append(f"stream: not readable ({err})")
        noted = [
            f"{p.stem}: {line[:400]}"
            for p in sorted(self.logs.rglob("*.log"))
            for line in p.read_text(errors="replace").splitlines()
            if '"level": "WARNING"' in line or '"level": "ERROR"' in line
        ]
        return "\n".join([*lines, "last warnings and errors:", *noted[-15:]])

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


def v2v_processes(needle: str) -> list[tuple[int, str]]:
    """virt-v2v runs working on something whose path holds ``needle``.

    The conversion-service hands virt-v2v its guest as ``-i libvirtxml FILE`` in a
    private work directory, over private copies of the source's disks, and its output
    as ``-o local -os DIR`` whose ``guest-sd*`` entries link to the VM's volumes: the
    command line names neither the stack nor the source. ``needle`` is looked for in the
    command line, in that document (every disk it reads) and in the targets of the
    output links (every volume it writes, inside the stack's data dir).
    """
    found = []
    for pid, cmdline in processes_named("virt-v2v", "virt-v2v-in-place"):
        argv = _argv(pid)
        if needle in cmdline or needle in _libvirtxml_document(argv) or needle in _outputs(argv):
            found.append((pid, cmdline))
    return found


def _argv(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0")]


def _after(argv: list[str], flag: str, value: str | None = None) -> str:
    """The argument after ``flag`` (and ``value``, for ``-i libvirtxml FILE``), or ''."""
    for at, arg in enumerate(argv[:-1]):
        if arg == flag and (value is None or argv[at + 1] == value):
            rest = argv[at + 1 :] if value is None else argv[at + 2 :]
            return rest[0] if rest else ""
    return ""


def _libvirtxml_document(argv: list[str]) -> str:
    path = _after(argv, "-i", "libvirtxml")
    with contextlib.suppress(OSError, ValueError):
        return Path(path).read_text(errors="replace") if path else ""
    return ""


def _outputs(argv: list[str]) -> str:
    """Where the entries of virt-v2v's ``-os`` directory point, one per line."""
    folder = _after(argv, "-os")
    targets = []
    with contextlib.suppress(OSError):
        for entry in Path(folder).iterdir() if folder else ():
            with contextlib.suppress(OSError):
                targets.append(os.readlink(entry))
    return "\n".join(targets)


@contextlib.contextmanager
def local_stack(
    root: Path, replicas: Mapping[str, int] | None = None, env: Mapping[str, str] | None = None
) -> Iterator[LocalStack]:
    stack = LocalStack(root, dict(replicas or {}), dict(env or {}))
    try:
        yield stack.start()
    finally:
        stack.close()
