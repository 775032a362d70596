"""Helpers for the vSphere tests: arrange the simulator as an administrator would."""

from __future__ import annotations

import asyncio
from pathlib import Path

from ferry.platform.copy import engine, sink, source
from ferry.platform.images import ImageRef
from ferry.providers.vsphere.provider import VsphereProvider
from ferry.testing.vcsim.arrange import datastore_dir, find_vm, run
from ferry.testing.vcsim.server import Endpoint

__all__ = ["copy_to_raw", "datastore_dir", "find_vm", "make_provider", "run"]


def make_provider(endpoint: Endpoint, **settings: str) -> VsphereProvider:
    secret = {"user": endpoint.username, "password": endpoint.password}
    return VsphereProvider.create(endpoint.url, settings, secret)


async def copy_to_raw(ref: ImageRef, folder: Path) -> engine.Result:
    """``ref`` copied by the engine (checkpoint and read-back) into ``folder/disk.raw``."""

    def run_copy() -> engine.Result:
        src = source.open_source(ref)
        try:
            target = sink.open_sink(str(folder / "disk.raw"), "raw", src.size)
            return engine.copy(src, target, folder / "state")
        finally:
            src.close()

    return await asyncio.to_thread(run_copy)
