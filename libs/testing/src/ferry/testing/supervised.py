"""The stack exactly as a user runs it, ``ferry up --detach``, for tests of its supervisor.

:class:`ferry.testing.stack.LocalStack` starts the processes itself so a test can
run replicas and restart what it killed. Here nobody but the supervisor restarts
anything: a test kills a process (pid from ``stack.json``) and waits for the
supervisor to bring it back, which is the guarantee under test. Looking at the
stack (``ferry`` commands, the audit-stream recorder) is inherited.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from typing import Any

from ferry.runtime.stack import StackError
from ferry.testing.stack import LocalStack


class SupervisedStack(LocalStack):
    """``ferry up --detach`` in ``<root>/data``; :meth:`close` is ``ferry down``."""

    def start(self, timeout: float = 90.0, *options: str) -> SupervisedStack:
        """``ferry up --detach``, with ``options`` (the restart policy's, say) added."""
        up = self.ferry(
            "up", "--detach", "--data-dir", str(self.data_dir), *options, timeout=timeout + 60
        )
        if up.returncode != 0:
            raise StackError(f"ferry up failed: {up.stdout}{up.stderr}")
        return self

    def state(self) -> dict[str, Any]:
        loaded: dict[str, Any] = json.loads((self.data_dir / "stack.json").read_text())
        return loaded

    def pid(self, name: str) -> int:
        now = self.state()
        every = [now["nats"], *now.get("nats_peers", []), *now["services"]]
        return int(next(p["pid"] for p in every if p["name"] == name))

    def cli_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(self.env)  # `ferry up` hands the services its FERRY_ settings
        env["FERRY_DATA_DIR"] = str(self.data_dir)  # the CLI finds NATS in stack.json
        env.pop("FERRY_NATS__URL", None)
        env.setdefault("COLUMNS", "200")
        return env

    def kill(self, name: str, index: int = 0) -> int:
        """``kill -9`` one process of the stack (the nats-server included)."""
        pid = self.pid(name)
        os.kill(pid, signal.SIGKILL)
        return pid

    def kill_nats(self) -> None:
        self.kill("nats-server")

    def wait_restarted(self, name: str, old_pid: int, timeout: float = 60) -> int:
        """The supervisor's new pid for ``name`` once its /readyz (or nats) answers."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(ValueError, OSError):
                pid = self.pid(name)
                if pid != old_pid and self.status().returncode == 0:
                    return pid
            time.sleep(0.3)
        raise StackError(f"{name} was not restarted within {timeout:.0f}s")

    def status(self) -> Any:
        return self.ferry("status", "--data-dir", str(self.data_dir))

    def restart(self, name: str, index: int = 0, timeout: float = 90.0) -> Any:
        raise StackError("the supervisor restarts processes here; use wait_restarted")

    def close(self) -> None:
        for recorder in self.recorders:
            recorder.stop()
        self.ferry("down", "--data-dir", str(self.data_dir), "--timeout", "20")
        for pid in self.strays():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
