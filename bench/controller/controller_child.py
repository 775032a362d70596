"""The real migration-controller in its own process, with an in-memory source of N VMs.

The bench measures this process (time, memory); its source answers instantly so
that only the controller and the bus are measured. Prints "ready" when serving.

Usage: python controller_child.py NATS_URL N_VMS CONCURRENCY
"""

from __future__ import annotations

import asyncio
import signal
import sys

from ferry.bus import Bus, TopologySettings
from ferry.migration_controller import app
from ferry.migration_controller.settings import ControllerGroup, ControllerSettings
from ferry.proto.inventory import Disk, Nic, PowerState, ProviderType, Vm
from ferry.proto.volume import SourceRef

TOPOLOGY = TopologySettings(ack_wait_seconds=30.0, max_deliver=5)


def vms(n: int) -> list[Vm]:
    return [
        Vm(
            id=f"vm-{i:05d}",
            name=f"vm-{i:05d}",
            provider_type=ProviderType.OVA,
            power_state=PowerState.ON,
            host=f"host-{i % 50}",
            disks=[Disk(id=f"vm-{i:05d}-d1", name="d1", capacity=1 << 30, storage="ds1")],
            nics=[Nic(id=f"vm-{i:05d}-n1", name="eth0", network="net1")],
        )
        for i in range(n)
    ]


class InstantSource:
    def __init__(self, n: int) -> None:
        self._vms = vms(n)
        self._power = {v.id: PowerState.ON for v in self._vms}

    async def check(self) -> None:
        return None

    async def inventory(self) -> list[Vm]:
        return self._vms

    async def power_state(self, vm: Vm) -> PowerState:
        return self._power[vm.id]

    async def shutdown(self, vm: Vm, timeout: float) -> bool:
        self._power[vm.id] = PowerState.OFF
        return False

    async def power_on(self, vm: Vm) -> None:
        self._power[vm.id] = PowerState.ON


async def main(url: str, n: int, concurrency: int) -> None:
    settings = ControllerSettings(
        nats={"url": url},  # type: ignore[arg-type]
        controller=ControllerGroup(progress_min_interval_seconds=0.5),
    )
    source = InstantSource(n)

    async def providers(ref: SourceRef) -> InstantSource:
        return source

    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with await Bus.connect(url, name="migration-controller", settings=TOPOLOGY) as bus:
        ctl = app.build_router(bus, settings, providers=providers)  # type: ignore[arg-type]
        print("ready", flush=True)
        await ctl.run(bus, concurrency=concurrency, stop=stop, fetch_wait=0.2)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
