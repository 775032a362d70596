"""Ferry's own objects (``ferry.dev/v1alpha1``) in a cluster's API, for whoever reads or
writes them there: the controller's operator mode and ``ferry --context``.

The seam is a Protocol over plain documents, as they travel; the implementation
(:mod:`ferry.platform.kubernetes.ferryobjects`) is picked by
:func:`ferry.platform.factory.cluster_objects`, so a service never imports the
kubernetes client. Its errors are the ones here, each named for what a caller does
about it: :class:`Expired` (list again), :class:`Conflict` (read again, then retry),
:class:`Refused` (the server will not take it, retrying does not help).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any, Protocol

Document = dict[str, Any]


class ClusterObjectsError(Exception):
    """The API server refused or failed a request; ``status`` its HTTP code (0: no answer)."""

    def __init__(self, reason: str, status: int = 0) -> None:
        super().__init__(reason)
        self.status = status


class Expired(ClusterObjectsError):
    """410 Gone: the resourceVersion a watch resumed from is older than the server keeps."""


class Conflict(ClusterObjectsError):
    """409: the object changed since it was read (or exists already, on create)."""


class Refused(ClusterObjectsError):
    """400/401/403/404/422: not allowed, not there, or invalid; a retry will not help."""


class ClusterObjects(Protocol):
    """list, watch, read and write Ferry's kinds (``Plan``, ``Migration``…) in a cluster."""

    async def list(self, kind: str, namespace: str) -> tuple[list[Document], str]:
        """Every object of ``kind`` in ``namespace`` ("": all) and the list's resourceVersion."""
        ...

    def watch(
        self, kind: str, namespace: str, since: str, seconds: float
    ) -> AsyncIterator[tuple[str, Document]]:
        """(ADDED | MODIFIED | DELETED | BOOKMARK, object) after ``since``; :class:`Expired`."""
        ...

    async def get(self, kind: str, namespace: str, name: str) -> Document | None: ...

    async def create(self, doc: Mapping[str, Any]) -> Document: ...

    async def replace(self, doc: Mapping[str, Any]) -> Document:
        """PUT the object (its ``metadata.resourceVersion`` must be current: else Conflict)."""
        ...

    async def write_status(self, doc: Mapping[str, Any]) -> Document:
        """PUT ``doc`` to the ``status`` subresource (its resourceVersion must be current)."""
        ...

    async def delete(self, kind: str, namespace: str, name: str) -> bool: ...

    async def aclose(self) -> None: ...
