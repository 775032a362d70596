"""One strict cluster stand-in: the API server, its controllers, a kubelet, on one loop.

``async with Cluster(root) as cluster`` serves the Kubernetes API on a free
loopback port (:attr:`Cluster.url`, what ``FERRY_PLATFORM__KUBERNETES__HOST``
takes) and runs, after every change, the binder and scheduler, CDI, KubeVirt
and the kubelet, each following upstream's rules (see their modules); a
VirtualMachineInstance's guest is booted under QEMU (:mod:`.launcher`). Storage
classes are given by name and binding mode; Ferry's own CRDs are installed only
when asked for (:meth:`install_crd`), so a cluster without them answers 404.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from ferry.testing.cluster import resources
from ferry.testing.cluster.api import ApiServer
from ferry.testing.cluster.binder import PROVISIONER, Binder
from ferry.testing.cluster.kubelet import Kubelet
from ferry.testing.cluster.launcher import Launcher
from ferry.testing.cluster.operators import Cdi, KubeVirt
from ferry.testing.cluster.store import Obj, Store

_ROUNDS = 50  # controllers settle long before this; more means two of them disagree
_TICK = 0.2  # time-based rules (deadlines) are looked at this often without changes


class Cluster:
    def __init__(
        self,
        root: Path,
        storage_classes: Mapping[str, str] | None = None,
        images: Mapping[str, Mapping[str, str]] | None = None,
        nodes: Sequence[str] = ("node-1",),
    ) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self.store = Store()
        for kind in resources.BUILT_IN:
            self.store.serve(kind)
        self.binder = Binder(self.store, root, list(nodes))
        self.kubelet = Kubelet(self.store, root, {k: dict(v) for k, v in (images or {}).items()})
        self.cdi = Cdi(self.store)
        self.launcher = Launcher(self.store, root)
        self.kubevirt = KubeVirt(self.store, self.launcher)
        self.api = ApiServer(self.store, self.kubelet.logs)
        self._classes = dict(storage_classes or {"standard": "WaitForFirstConsumer"})
        self._loop: asyncio.Task[None] | None = None
        self.url = ""
        self.errors: list[BaseException] = []

    async def __aenter__(self) -> Cluster:
        for name, mode in self._classes.items():
            self.store.create(
                resources.STORAGE_CLASS,
                {
                    "apiVersion": "storage.k8s.io/v1",
                    "kind": "StorageClass",
                    "metadata": {"name": name},
                    "provisioner": PROVISIONER,
                    "volumeBindingMode": mode,
                    "reclaimPolicy": "Delete",
                },
            )
        self.url = await self.api.start()
        self._loop = asyncio.create_task(self._run())
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.kubelet.close()
        await self.launcher.close()
        if self._loop is not None:
            self._loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop
        await self.api.stop()

    def install_crd(self, crd: Mapping[str, Any]) -> None:
        self.store.serve(resources.from_crd(dict(crd)))

    def create(self, kind: resources.Kind, obj: Obj) -> Obj:
        """Create as an administrator would (a Secret, a StorageClass), past the API."""
        return self.store.create(kind, obj)

    def get(self, kind: resources.Kind, namespace: str, name: str) -> Obj | None:
        return self.store.get(kind, namespace, name)

    def reconcile(self) -> None:
        for _ in range(_ROUNDS):
            before = self.store.revision
            for controller in (self.binder, self.cdi, self.kubevirt, self.kubelet):
                controller.reconcile()
            if self.store.revision == before:
                return
        raise RuntimeError("the stand-in's controllers do not settle")

    async def _run(self) -> None:
        changes = self.store.subscribe()
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_TICK):
                    await changes.get()
            while not changes.empty():
                changes.get_nowait()
            try:
                self.reconcile()
            except Exception as error:  # a broken rule must fail the test, not hang it
                self.errors.append(error)
                raise

    async def wait_for(
        self, kind: resources.Kind, namespace: str, name: str, predicate: Any, seconds: float = 10
    ) -> Obj:
        """The object once ``predicate(obj)`` holds; TimeoutError with its last state otherwise."""
        last: Obj | None = None
        async with asyncio.timeout(seconds):
            while True:
                last = self.store.get(kind, namespace, name)
                if last is not None and predicate(last):
                    return last
                if self.errors:
                    raise self.errors[0]
                await asyncio.sleep(0.02)
