"""A console process as ``ferry up`` starts it, on a bus whose topology the services have
declared, for tests of what a person (or a browser) sees."""

from __future__ import annotations

import asyncio
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ferry.bus import Bus, topology
from ferry.proto.subjects import Service
from ferry.runtime.stack import ports, services


@dataclass
class ConsoleProcess:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path
    data_dir: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def token(self) -> str:
        return (self.data_dir / "console" / "token").read_text().strip()

    def stop(self) -> int:
        self.proc.terminate()
        return self.proc.wait(15)


async def declare(url: str) -> None:
    """What the four services do when they start: the stream and buckets the console reads."""
    async with await Bus.connect(url, name="test") as bus:
        await topology.declare(bus, services=list(Service))


def start(
    nats_url: str, data_dir: Path, within: float = 30.0, *, declared: bool = True
) -> ConsoleProcess:
    """The console as its own process, ready; ``declared=False`` starts it before the
    services have declared anything, and declares once it runs (``ferry up``'s race)."""
    if declared:
        asyncio.run(declare(nats_url))
    port = ports.free_port()
    env = services.environment(data_dir, nats_url, port)
    del env["FERRY_HTTP__HOST"]  # the console's own default must keep it on loopback
    env["FERRY_LOG__LEVEL"] = "DEBUG"
    log = data_dir / "console.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            services.named("console").argv(), env=env, stdout=out, stderr=subprocess.STDOUT
        )
    console = ConsoleProcess(proc, port, log, data_dir)
    deadline = time.monotonic() + within
    if not declared:
        while "waiting for the services to declare" not in log.read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"console did not wait for the views:\n{log.read_text()}")
            time.sleep(0.2)
        asyncio.run(declare(nats_url))
    while True:
        try:
            urllib.request.urlopen(f"{console.url}/readyz", timeout=1).close()  # noqa: S310
            return console
        except (OSError, urllib.error.URLError):
            if proc.poll() is not None or time.monotonic() > deadline:
                if proc.poll() is None:
                    console.stop()
                raise AssertionError(f"console did not start:\n{log.read_text()}") from None
            time.sleep(0.2)
