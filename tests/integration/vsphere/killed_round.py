"""A volume-service's round as a kill -9 leaves it: run as a child process, killed by the test.

Reads one JSON line on stdin (the simulator's URL, CA file and credentials, the VM,
the round's id and ``since``: the credentials never go on a command line or into
the environment), opens the round's view through a provider of its own (its own
login), prints one JSON line (the view's checkpoint and each disk's changed areas)
and then waits inside the view until it is killed: no ``__aexit__`` runs.
"""

from __future__ import annotations

import asyncio
import json
import sys

from ferry.providers.vsphere.provider import VsphereProvider


async def main() -> None:
    args = json.loads(sys.stdin.readline())
    secret = {"user": args["user"], "password": args["password"]}
    provider = VsphereProvider.create(args["url"], {"caBundle": args["ca"]}, secret)
    vm = await provider.vm(args["vm"])
    view = provider.changes(vm, args["since"] or None, args["round"])
    await view.__aenter__()
    areas = {
        d.id: [[e.offset, e.length] for e in await view.changed_extents(d.id)] for d in vm.disks
    }
    print(json.dumps({"checkpoint": view.checkpoint, "areas": areas}), flush=True)
    await asyncio.Event().wait()  # inside the round until the kill


if __name__ == "__main__":
    asyncio.run(main())
