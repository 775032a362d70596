"""A small, dict-in dict-out client over kubernetes-asyncio's ``ApiClient``.

Ferry creates a handful of kinds (DataVolume, PVC, Pod, VirtualMachine, its
own populator CR) and reads a few more (VMI). The generated typed APIs would
turn each into a model class and back; here every object stays the plain
dict that :func:`ferry.platform.schemas.validate` checked, and every call
goes through ``ApiClient.call_api`` so that auth, TLS and the kubeconfig are
kubernetes-asyncio's, not ours.

Patches are always JSON merge patches (``application/merge-patch+json``):
custom resources do not accept strategic merge, which is what the generated
clients pick for a dict body.

API errors become :class:`ClusterError` with ``permanent`` set the way a
retry policy needs it: 401/403/404/409/422 will not change by retrying,
429 and 5xx and a dropped connection may.
"""

from __future__ import annotations

import builtins
import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, cast

import aiohttp
from kubernetes_asyncio.client import ApiClient  # type: ignore[import-untyped,unused-ignore]
from kubernetes_asyncio.client.exceptions import (  # type: ignore[import-untyped,unused-ignore]
    ApiException,
)

from ferry.platform.volumes import VolumeError

MERGE_PATCH = "application/merge-patch+json"
_OBJECT = {200: "object", 201: "object", 202: "object"}


@dataclass(frozen=True)
class Resource:
    """One API resource: where its collection lives."""

    group: str  # "" for the core group
    version: str
    plural: str
    kind: str
    namespaced: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(self, namespace: str, name: str = "", subresource: str = "") -> str:
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        # A cluster-scoped kind (PersistentVolume, StorageClass) ignores the namespace.
        # … and a namespaced kind without one is its list across every namespace.
        scope = f"/namespaces/{namespace}" if self.namespaced and namespace else ""
        path = f"{base}{scope}/{self.plural}"
        if name:
            path += f"/{name}"
        if subresource:
            path += f"/{subresource}"
        return path


PVC = Resource("", "v1", "persistentvolumeclaims", "PersistentVolumeClaim")
POD = Resource("", "v1", "pods", "Pod")
DATA_VOLUME = Resource("cdi.kubevirt.io", "v1beta1", "datavolumes", "DataVolume")
VIRTUAL_MACHINE = Resource("kubevirt.io", "v1", "virtualmachines", "VirtualMachine")
SECRET = Resource("", "v1", "secrets", "Secret")
PV = Resource("", "v1", "persistentvolumes", "PersistentVolume", namespaced=False)
STORAGE_CLASS = Resource("storage.k8s.io", "v1", "storageclasses", "StorageClass", namespaced=False)
VMI = Resource("kubevirt.io", "v1", "virtualmachineinstances", "VirtualMachineInstance")


class ClusterError(VolumeError):
    """The API server refused or failed a request; ``status`` is its HTTP code (0: no answer)."""

    def __init__(self, reason: str, status: int = 0, permanent: bool = False) -> None:
        super().__init__(reason)
        self.status = status
        self.permanent = permanent


class Forbidden(ClusterError):
    """401/403: Ferry's service account may not do this; retrying will not help."""


class NotFound(ClusterError, LookupError):
    pass


class AlreadyExists(ClusterError):
    """409 on create: someone (maybe our own earlier attempt) made it first; on an update
    with a resourceVersion, the object changed since it was read."""


class Gone(ClusterError):
    """410: a watch's resourceVersion is older than the server keeps; list again."""


_PERMANENT = {400, 401, 403, 404, 405, 409, 410, 422}


def _message(error: ApiException) -> str:
    try:
        body = json.loads(error.body or "{}")
    except (TypeError, ValueError):
        body = {}
    text = body.get("message") if isinstance(body, dict) else None
    return str(text or error.reason or "no message")


def cluster_error(error: ApiException, what: str) -> ClusterError:
    """Turn an ``ApiException`` into the :class:`ClusterError` a retry policy understands."""
    status = int(error.status or 0)
    detail = _message(error)
    if status in (401, 403):
        return Forbidden(
            f"{what}: the cluster refused it ({status}): {detail}; "
            "grant Ferry's service account this permission",
            status,
            permanent=True,
        )
    if status == 404:
        return NotFound(f"{what}: not found: {detail}", status, permanent=True)
    if status == 409:
        return AlreadyExists(f"{what}: conflict: {detail}", status, permanent=True)
    if status == 410:
        return Gone(f"{what}: expired: {detail}", status, permanent=True)
    return ClusterError(f"{what}: HTTP {status}: {detail}", status, status in _PERMANENT)


class KubeClient:
    """CRUD, list-by-labels and watch for plain-dict objects."""

    def __init__(self, api: ApiClient) -> None:
        self.api = api

    async def _call(
        self,
        method: str,
        path: str,
        what: str,
        *,
        body: Any = None,
        query: Mapping[str, str] | None = None,
        content_type: str = "application/json",
    ) -> dict[str, Any]:
        try:
            result = await self.api.call_api(
                path,
                method,
                query_params=list((query or {}).items()),
                header_params={"Content-Type": content_type, "Accept": "application/json"},
                body=body,
                response_types_map=_OBJECT,
                auth_settings=["BearerToken"],
                _return_http_data_only=True,
            )
        except ApiException as error:
            raise cluster_error(error, what) from None
        except (aiohttp.ClientError, TimeoutError, OSError) as error:
            raise ClusterError(f"{what}: the API server did not answer: {error}") from None
        return cast(dict[str, Any], result or {})

    async def stream(
        self,
        path: str,
        what: str,
        query: list[tuple[str, str]],
        *,
        accept: str = "application/json",
        request_seconds: float | None = None,
    ) -> aiohttp.ClientResponse:
        """A GET whose body is read as it comes (a watch, a pod's log); the caller releases it.

        Unlike every other call the client makes, kubernetes-asyncio does not check the
        status of a response it does not read (``_preload_content=False``): an error
        would come back as if it were the stream (a 403 or a 410 ``Status`` read as a
        watch event, a pod's "waiting to start" read as its log). It is checked here.
        """
        try:
            response = await self.api.call_api(
                path,
                "GET",
                query_params=query,
                header_params={"Accept": accept},
                auth_settings=["BearerToken"],
                _preload_content=False,
                _request_timeout=request_seconds,
            )
        except ApiException as error:
            raise cluster_error(error, what) from None
        except (aiohttp.ClientError, TimeoutError, OSError) as error:
            raise ClusterError(f"{what}: the API server did not answer: {error}") from None
        response = cast(aiohttp.ClientResponse, response)
        if 200 <= response.status <= 299:
            return response
        try:
            data = await response.read()
        except (aiohttp.ClientError, OSError):
            data = b""
        finally:
            response.release()
        refused = ApiException(status=response.status, reason=response.reason)
        refused.body = data  # (json.loads reads bytes: the Status's message is found)
        raise cluster_error(refused, what)

    async def create(self, resource: Resource, obj: Mapping[str, Any]) -> dict[str, Any]:
        namespace = str(obj["metadata"].get("namespace", ""))
        what = f"create {resource.kind} {namespace}/{obj['metadata']['name']}"
        return await self._call("POST", resource.path(namespace), what, body=dict(obj))

    async def get(self, resource: Resource, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            path = resource.path(namespace, name)
            return await self._call("GET", path, f"get {resource.kind} {namespace}/{name}")
        except NotFound:
            return None

    async def list(
        self, resource: Resource, namespace: str, labels: Mapping[str, str]
    ) -> list[dict[str, Any]]:
        """Objects carrying all of ``labels``, checked again here (never trust a filter blindly)."""
        selector = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
        what = f"list {resource.kind} in {namespace} ({selector})"
        query = {"labelSelector": selector} if selector else {}
        result = await self._call("GET", resource.path(namespace), what, query=query)
        items = result.get("items") or []
        return [item for item in items if matches(item, labels)]

    async def list_all(
        self, resource: Resource, namespace: str
    ) -> tuple[builtins.list[dict[str, Any]], str]:
        """Every object of ``resource`` in ``namespace`` ("" = all), and the list's
        resourceVersion, from which a :meth:`changes` watch goes on without a gap."""
        what = f"list {resource.kind} in {namespace or 'every namespace'}"
        result = await self._call("GET", resource.path(namespace), what)
        version = str((result.get("metadata") or {}).get("resourceVersion") or "")
        return list(result.get("items") or []), version

    async def replace(
        self, resource: Resource, obj: Mapping[str, Any], subresource: str = ""
    ) -> dict[str, Any]:
        """PUT: the object as given, refused (409) when its resourceVersion is not current."""
        metadata = obj["metadata"]
        namespace, name = str(metadata.get("namespace", "")), str(metadata["name"])
        path = resource.path(namespace, name, subresource)
        what = f"update {resource.kind} {namespace}/{name}" + (
            f"/{subresource}" * bool(subresource)
        )
        return await self._call("PUT", path, what, body=dict(obj))

    async def patch(
        self,
        resource: Resource,
        namespace: str,
        name: str,
        patch: Mapping[str, Any],
        subresource: str = "",
    ) -> dict[str, Any]:
        path = resource.path(namespace, name, subresource)
        what = f"patch {resource.kind} {namespace}/{name}"
        return await self._call("PATCH", path, what, body=dict(patch), content_type=MERGE_PATCH)

    async def delete(
        self, resource: Resource, namespace: str, name: str, grace_seconds: int | None = None
    ) -> bool:
        """Delete (background propagation, so owned objects go too); False if it was not there."""
        options: dict[str, Any] = {"propagationPolicy": "Background"}
        if grace_seconds is not None:
            options["gracePeriodSeconds"] = grace_seconds
        path = resource.path(namespace, name)
        try:
            await self._call(
                "DELETE", path, f"delete {resource.kind} {namespace}/{name}", body=options
            )
        except NotFound:
            return False
        return True

    async def watch(
        self, resource: Resource, namespace: str, name: str, seconds: float
    ) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """(event type, object) of one named object, existing state first, for ``seconds``."""
        query = [
            ("watch", "true"),
            ("fieldSelector", f"metadata.name={name}"),
            ("timeoutSeconds", str(max(1, int(seconds)))),
        ]
        what = f"watch {resource.kind} {namespace}/{name}"
        response = await self.stream(
            resource.path(namespace), what, query, request_seconds=seconds + 5
        )
        try:
            async for line in response.content:
                if not line.strip():
                    continue
                event = json.loads(line)
                obj = event.get("object") or {}
                if event.get("type") == "ERROR":
                    raise ClusterError(f"{what}: {obj.get('message', 'watch error')}")
                if obj.get("metadata", {}).get("name") == name:
                    yield str(event.get("type")), obj
        except (aiohttp.ClientError, OSError) as error:
            raise ClusterError(f"{what}: the watch broke: {error}") from None
        finally:
            response.release()

    async def changes(
        self, resource: Resource, namespace: str, since: str, seconds: float
    ) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """(event type, object) of every change after resourceVersion ``since``, bookmarks
        included, for at most ``seconds``; :class:`Gone` when ``since`` is too old."""
        query = [
            ("watch", "true"),
            ("resourceVersion", since),
            ("allowWatchBookmarks", "true"),
            ("timeoutSeconds", str(max(1, int(seconds)))),
        ]
        what = f"watch {resource.kind} in {namespace or 'every namespace'}"
        response = await self.stream(
            resource.path(namespace), what, query, request_seconds=seconds + 5
        )
        try:
            async for line in response.content:
                if not line.strip():
                    continue
                event = json.loads(line)
                obj = event.get("object") or {}
                if event.get("type") == "ERROR":
                    # A watch whose version expired ends with a Status of code 410.
                    code = int(obj.get("code") or 0)
                    message = f"{what}: {obj.get('message', 'watch error')}"
                    raise Gone(message, 410, True) if code == 410 else ClusterError(message, code)
                yield str(event.get("type")), obj
        except (aiohttp.ClientError, OSError) as error:
            raise ClusterError(f"{what}: the watch broke: {error}") from None
        finally:
            response.release()


def matches(obj: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    have = obj.get("metadata", {}).get("labels") or {}
    return all(have.get(k) == v for k, v in labels.items())
