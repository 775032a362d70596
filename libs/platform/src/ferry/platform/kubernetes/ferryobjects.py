"""Ferry's kinds in a cluster, over the platform's one client (:class:`KubeClient`).

Each kind of :data:`ferry.proto.objects.KINDS` is a :class:`Resource` of the
``ferry.dev/v1alpha1`` CRDs the chart installs (:mod:`ferry.platform.crdgen`); the
client's :class:`ClusterError` s become the seam's errors
(:mod:`ferry.platform.clusterobjects`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, TypeVar

from kubernetes_asyncio.client import ApiClient  # type: ignore[import-untyped,unused-ignore]

from ferry.platform import clusterobjects as seam
from ferry.platform.kubernetes.client import (
    AlreadyExists,
    ClusterError,
    Gone,
    KubeClient,
    Resource,
)
from ferry.platform.kubernetes.platform import api_client
from ferry.platform.settings import KubernetesSettings
from ferry.proto import objects

GROUP, VERSION = "ferry.dev", "v1alpha1"
T = TypeVar("T")


def resource(kind: str) -> Resource:
    """The API resource of one of Ferry's kinds (``Plan`` → ``plans.ferry.dev``)."""
    cls = objects.KINDS.get(kind)
    if cls is None:
        raise seam.Refused(f"unknown kind {kind!r}; one of {', '.join(objects.KINDS)}", 400)
    return Resource(GROUP, VERSION, cls.PLURAL, cls.KIND)


def _translated(error: ClusterError) -> seam.ClusterObjectsError:
    text = str(error)
    if isinstance(error, Gone):
        return seam.Expired(text, error.status)
    if isinstance(error, AlreadyExists):
        return seam.Conflict(text, error.status)
    if error.permanent:
        return seam.Refused(text, error.status)
    return seam.ClusterObjectsError(text, error.status)


async def _call(work: Callable[[], Awaitable[T]]) -> T:
    try:
        return await work()
    except ClusterError as error:
        raise _translated(error) from None


class KubeFerryObjects:
    """:class:`~ferry.platform.clusterobjects.ClusterObjects` over kubernetes-asyncio."""

    def __init__(self, settings: KubernetesSettings, api: ApiClient | None = None) -> None:
        self.settings = settings
        self._api = api
        self._client: KubeClient | None = None

    async def _ready(self) -> KubeClient:
        if self._client is None:
            if self._api is None:
                self._api = await api_client(self.settings)
            self._client = KubeClient(self._api)
        return self._client

    async def aclose(self) -> None:
        if self._api is not None:
            await self._api.close()
        self._api = self._client = None

    async def list(self, kind: str, namespace: str) -> tuple[list[dict[str, Any]], str]:
        client = await self._ready()
        return await _call(lambda: client.list_all(resource(kind), namespace))

    async def watch(
        self, kind: str, namespace: str, since: str, seconds: float
    ) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        client = await self._ready()
        try:
            async for event in client.changes(resource(kind), namespace, since, seconds):
                yield event
        except ClusterError as error:
            raise _translated(error) from None

    async def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        client = await self._ready()
        return await _call(lambda: client.get(resource(kind), namespace, name))

    async def create(self, doc: Mapping[str, Any]) -> dict[str, Any]:
        client = await self._ready()
        return await _call(lambda: client.create(resource(str(doc["kind"])), doc))

    async def replace(self, doc: Mapping[str, Any]) -> dict[str, Any]:
        client = await self._ready()
        return await _call(lambda: client.replace(resource(str(doc["kind"])), doc))

    async def write_status(self, doc: Mapping[str, Any]) -> dict[str, Any]:
        client = await self._ready()
        return await _call(lambda: client.replace(resource(str(doc["kind"])), doc, "status"))

    async def delete(self, kind: str, namespace: str, name: str) -> bool:
        client = await self._ready()
        return await _call(lambda: client.delete(resource(kind), namespace, name))
