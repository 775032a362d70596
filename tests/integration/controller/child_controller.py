"""The migration-controller in its own process, for tests that kill it with SIGKILL.

It is the real controller (``ferry.migration_controller.app``) on the real bus;
only its source provider is the file-backed test provider, so that power
operations are visible to the test across processes.

Usage: python child_controller.py NATS_URL SOURCES_JSON   (SOURCES_JSON: {"name": "/root"})
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from controller_harness import TOPOLOGY, providers_for

from ferry.bus import Bus
from ferry.migration_controller import app
from ferry.migration_controller.settings import ControllerGroup, ControllerSettings


async def main(url: str, sources: dict[str, str]) -> None:
    settings = ControllerSettings(
        nats={"url": url},  # type: ignore[arg-type]
        bus={"max_deliver": TOPOLOGY.max_deliver, "ack_wait_seconds": TOPOLOGY.ack_wait_seconds},  # type: ignore[arg-type]
        controller=ControllerGroup(
            retry_base_seconds=0.2, progress_min_interval_seconds=0.0, leader_lease_seconds=2.0
        ),
    )
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    roots = {name: Path(root) for name, root in sources.items()}
    async with await Bus.connect(url, name="migration-controller", settings=TOPOLOGY) as bus:
        ctl = app.build_router(bus, settings, providers=providers_for(roots))
        print(f"ready {os.getpid()}", flush=True)
        await ctl.run(bus, concurrency=32, stop=stop, fetch_wait=0.2)


if __name__ == "__main__":
    logging.basicConfig(
        level=os.environ.get("FERRY_CHILD_LOG_LEVEL", "WARNING"),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    asyncio.run(main(sys.argv[1], json.loads(sys.argv[2])))
